"""UCI HAPT's raw recordings: paired row by row, cut inside labelled runs, and every bad input named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.data.errors import DataError
from components.data.expectations import ValidationFailed
from components.stages import execute

RAW = "uci_hapt/RawData"


def outputs(params):
    out = params.path(params.ingest.output_dir)
    return out, pd.read_parquet(out / "windows.parquet"), json.loads((out / "data_card.json").read_text())


def labels(data_root: Path) -> pd.DataFrame:
    return pd.read_csv(data_root / RAW / "labels.txt", sep=" ", header=None,
                       names=["experiment", "user", "activity", "first", "last"])


def test_two_users_pair_both_sensors_and_never_cut_across_runs(make_params, data_root):
    params = make_params("ingest.dataset=uci_hapt", "ingest.uci_hapt.users=[user01, user02]")
    execute("ingest", params)
    out, meta, card = outputs(params)
    x, signal = np.load(out / "x.npy", mmap_mode="r"), np.load(out / "signal.npy", mmap_mode="r")
    assert x.shape == (len(meta), 8, 2, 3, 2, 16) and signal.shape == (len(meta), 2, 3, 128)
    assert card["sensors"] == {"accelerometer": "g", "gyroscope": "rad/s"}
    assert set(meta.user) == {"user01", "user02"} and set(meta.experiment) == {1, 2, 3, 4}
    assert card["labels"] == ["walking", "walking_upstairs", "walking_downstairs", "sitting", "standing", "laying"]
    # each sample lies inside one labelled run of its own experiment, with that run's activity
    runs = labels(data_root)
    for row in meta.itertuples():
        first = round(row.start_s * 50)
        inside = runs[(runs.experiment == row.experiment) & (runs["first"] <= first) & (runs["last"] >= first + 127)]
        assert len(inside) == 1 and inside.activity.iloc[0] - 1 == row.label
    # the first sample is the raw rows themselves: accelerometer then gyroscope, x y z
    first = meta.iloc[0]
    acc = np.loadtxt(data_root / RAW / "acc_exp01_user01.txt", max_rows=2000)
    gyro = np.loadtxt(data_root / RAW / "gyro_exp01_user01.txt", max_rows=2000)
    start = round(first.start_s * 50)
    np.testing.assert_allclose(signal[0, 0], acc[start:start + 128].T, atol=1e-6)
    np.testing.assert_allclose(signal[0, 1], gyro[start:start + 128].T, atol=1e-6)
    np.testing.assert_allclose(x[0, 2, 1, 0, 0], np.fft.fft(signal[0, 1, 0, 32:48]).real, atol=1e-4)
    # at rest the accelerometer reads gravity: about 1 g
    laying = meta.index[meta.label_name == "laying"][:20]
    assert np.linalg.norm(signal[laying, 0], axis=1).mean() == pytest.approx(1.0, abs=0.1)
    notes = " ".join(card["notes"])
    assert "in g with gravity" in notes and "postural transitions are left out" in notes


def test_transitions_are_a_param(make_params):
    params = make_params("ingest.dataset=uci_hapt", "ingest.uci_hapt.users=[user01]", "ingest.uci_hapt.activities=all",
                         "ingest.expectations.min_windows_per_class=0")
    execute("ingest", params)
    _, meta, card = outputs(params)
    assert len(card["labels"]) == 12 and meta.label.max() >= 6  # some transition is long enough for a sample


# ---- bad input: a copy of two real experiments, then broken ----------------------------------------------------

@pytest.fixture
def raw_copy(data_root, tmp_path):
    folder = tmp_path / "hapt" / "RawData"
    folder.mkdir(parents=True)
    for name in ("acc_exp01_user01.txt", "gyro_exp01_user01.txt", "acc_exp03_user02.txt", "gyro_exp03_user02.txt"):
        shutil.copy(data_root / RAW / name, folder / name)
    runs = (data_root / RAW / "labels.txt").read_text().splitlines()
    (folder / "labels.txt").write_text("\n".join(r for r in runs if r.split()[0] in ("1", "3")) + "\n")
    return folder


def run_on(make_params, folder: Path):
    params = make_params("ingest.dataset=uci_hapt", f"ingest.data_root={folder.parent.parent}",
                         f"ingest.uci_hapt.dir={folder.parent.name}/{folder.name}",
                         "ingest.expectations.min_windows_per_class=0")
    return params, lambda: execute("ingest", params)


def assert_no_output(params):
    out = params.path(params.ingest.output_dir)
    assert not out.exists() and not list(out.parent.glob(f".{out.name}.tmp-*"))


def test_the_copy_ingests(make_params, raw_copy):
    params, run = run_on(make_params, raw_copy)
    assert run().windows > 100


def test_a_missing_partner_file_is_named(make_params, raw_copy):
    (raw_copy / "gyro_exp03_user02.txt").unlink()
    params, run = run_on(make_params, raw_copy)
    with pytest.raises(DataError, match=r"acc_exp03_user02\.txt: its partner gyro_exp03_user02\.txt is missing"):
        run()
    assert_no_output(params)


def test_a_label_run_past_the_end_of_its_file_names_the_line(make_params, raw_copy):
    lines = (raw_copy / "labels.txt").read_text().splitlines()
    e, u, a, first, last = lines[-1].split()
    lines[-1] = f"{e} {u} {a} {first} 99999"
    (raw_copy / "labels.txt").write_text("\n".join(lines) + "\n")
    params, run = run_on(make_params, raw_copy)
    with pytest.raises(DataError, match=rf"labels\.txt, line {len(lines)}: experiment 3's run {first}\.\.99999 ends "
                                        r"past the end of acc_exp03_user02\.txt \(18026 rows"):
        run()
    assert_no_output(params)


@pytest.mark.parametrize("name, line, text, message", [
    ("acc_exp01_user01.txt", 1234, "0.91 abc 0.5", r"acc_exp01_user01\.txt, line 1234: 'abc' is not a number"),
    ("gyro_exp01_user01.txt", 11, "0.1 0.2", r"gyro_exp01_user01\.txt, line 11: expected 3 values"),
])
def test_a_malformed_row_names_the_file_and_line(make_params, raw_copy, name, line, text, message):
    path = raw_copy / name
    lines = path.read_text().splitlines()
    lines[line - 1] = text
    path.write_text("\n".join(lines) + "\n")
    params, run = run_on(make_params, raw_copy)
    with pytest.raises(DataError, match=message):
        run()
    assert_no_output(params)


def test_an_absurd_value_fails_validation_with_its_row(make_params, raw_copy):
    path = raw_copy / "gyro_exp03_user02.txt"
    lines = path.read_text().splitlines()
    lines[499] = "0.0 950.0 0.0"  # 950 rad/s: no phone gyroscope turns that fast
    path.write_text("\n".join(lines) + "\n")
    params, run = run_on(make_params, raw_copy)
    with pytest.raises(ValidationFailed, match=r"gyroscope_y.*acc_exp03_user02\.txt \+ gyro_exp03_user02\.txt: 1 of "
                                               r"18026 failed, e\.g\. line 500: 950\.0"):
        run()
    report = json.loads((params.path(params.ingest.report_dir) / "validation_failed.json").read_text())
    assert report["success"] is False
    assert_no_output(params)


def test_an_experiment_of_an_unknown_user_is_refused(make_params, raw_copy):
    lines = (raw_copy / "labels.txt").read_text().splitlines()
    fields = lines[4].split()
    lines[4] = " ".join([fields[0], "7", *fields[2:]])  # experiment 1 belongs to user 1
    (raw_copy / "labels.txt").write_text("\n".join(lines) + "\n")
    params, run = run_on(make_params, raw_copy)
    with pytest.raises(DataError, match=r"labels\.txt, line 5: experiment 1 is labelled as user 7, but its files "
                                        r"belong to user 1"):
        run()
    lines[4] = " ".join(["12", "6", *fields[2:]])  # no files of experiment 12 here
    (raw_copy / "labels.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"labels\.txt, line 5: experiment 12 of user 6 has no acc/gyro files"):
        run()
    assert_no_output(params)


def test_sensors_of_different_lengths_are_refused(make_params, raw_copy):
    path = raw_copy / "gyro_exp01_user01.txt"
    path.write_text("\n".join(path.read_text().splitlines()[:-5]) + "\n")
    params, run = run_on(make_params, raw_copy)
    with pytest.raises(DataError, match=r"gyro_exp01_user01\.txt, line 20594: 20593 rows, but its partner has 20598"):
        run()


def test_an_interval_that_is_not_a_whole_number_of_samples_is_refused(make_params):
    with pytest.raises(DataError, match=r"interval_s 0\.25 s is 12\.5 samples at 50 Hz"):
        execute("ingest", make_params("ingest.dataset=uci_hapt", "ingest.uci_hapt.interval_s=0.25"))
