"""A user's own recordings (`ingest.dataset: custom`): one CSV or Parquet of raw rows, mapped by params.

The rows used are real: two UCI HAPT users' recordings written out as a user would export them, so the
custom loader must give exactly the samples the UCI HAPT loader cuts from the same rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.data.errors import DataError
from components.data.expectations import ValidationFailed
from components.data.uci_hapt import LABELS
from components.stages import execute

RAW = "uci_hapt/RawData"
USERS = {1: (1, 2), 2: (3, 4)}  # user -> experiments


def hapt_rows(data_root: Path) -> pd.DataFrame:
    """The two users' rows as one table: user, session, label (empty outside a run), time, the six axes."""
    runs = pd.read_csv(data_root / RAW / "labels.txt", sep=" ", header=None,
                       names=["experiment", "user", "activity", "first", "last"])
    parts = []
    for user, experiments in USERS.items():
        for e in experiments:
            acc = np.loadtxt(data_root / RAW / f"acc_exp{e:02d}_user{user:02d}.txt")
            gyro = np.loadtxt(data_root / RAW / f"gyro_exp{e:02d}_user{user:02d}.txt")
            label = np.full(len(acc), "", dtype=object)
            for r in runs[runs.experiment == e].itertuples():
                if r.activity <= 6:
                    label[r.first:r.last + 1] = LABELS[r.activity - 1]
            parts.append(pd.DataFrame({
                "participant": f"user{user:02d}", "recording": f"exp{e:02d}", "activity": label,
                "t_ms": np.arange(len(acc)) * 20.0,
                **{f"acc_{a}": acc[:, i] for i, a in enumerate("xyz")},
                **{f"gyro_{a}": gyro[:, i] for i, a in enumerate("xyz")}}))
    return pd.concat(parts, ignore_index=True)


MAPPING = ("ingest.dataset=custom", "ingest.custom.columns={user: participant, label: activity, session: recording, "
           "time: t_ms, device: ''}", "ingest.custom.time_unit_s=0.001",
           "ingest.custom.sensors={accelerometer: {columns: [acc_x, acc_y, acc_z], unit: g}, "
           "gyroscope: {columns: [gyro_x, gyro_y, gyro_z], unit: rad/s}}",
           f"ingest.custom.labels=[{', '.join(LABELS[:6])}]")


@pytest.fixture(scope="module")
def rows(data_root) -> pd.DataFrame:
    return hapt_rows(data_root)


def custom_params(make_params, path: Path, *extra: str):
    return make_params(*MAPPING, f"ingest.custom.path={path}", *extra)


def arrays(params):
    out = params.path(params.ingest.output_dir)
    return (np.load(out / "x.npy"), pd.read_parquet(out / "windows.parquet"),
            json.loads((out / "data_card.json").read_text()))


@pytest.mark.slow
def test_a_users_csv_gives_the_samples_the_uci_loader_cuts_whatever_the_block_size(make_params, rows, tmp_path):
    csv = tmp_path / "mine.csv"
    rows.to_csv(csv, index=False)
    reference = make_params("ingest.dataset=uci_hapt", "ingest.uci_hapt.users=[user01, user02]",
                            f"ingest.output_dir={tmp_path / 'uci'}")
    execute("ingest", reference)
    x_ref, meta_ref, _ = arrays(reference)
    # blocks of 997 rows: many runs and samples straddle a block boundary and must be carried over
    for chunk in (200000, 997):
        params = custom_params(make_params, csv, f"ingest.custom.chunk_rows={chunk}",
                               f"ingest.output_dir={tmp_path / f'custom{chunk}'}")
        execute("ingest", params)
        x, meta, card = arrays(params)
        assert x.shape == x_ref.shape, chunk
        np.testing.assert_allclose(x, x_ref, atol=2e-5)
        assert (meta.label.to_numpy() == meta_ref.label.to_numpy()).all()
        assert (meta.user.to_numpy() == meta_ref.user.to_numpy()).all()
    assert card["sensors"] == {"accelerometer": "g", "gyroscope": "rad/s"} and card["labels"] == list(LABELS[:6])
    assert any("rows without a label" in note for note in card["notes"])


def test_parquet_and_the_labels_found_in_order_of_appearance(make_params, rows, tmp_path):
    path = tmp_path / "mine.parquet"
    rows.to_parquet(path)
    params = make_params(*MAPPING[:-1], f"ingest.custom.path={path}")
    execute("ingest", params)
    x, meta, card = arrays(params)
    assert card["labels"][0] == rows.activity[rows.activity != ""].iloc[0]  # the first label in the file
    assert sorted(card["labels"]) == sorted(LABELS[:6]) and x.shape[1:] == (8, 2, 3, 2, 16)
    assert meta.first_line.min() >= 1


def test_a_time_gap_ends_a_run(make_params, rows, tmp_path):
    one = rows[rows.recording == "exp01"].copy()
    walking = one.index[one.activity == "walking"]
    one.loc[walking[100]:, "t_ms"] += 5000.0  # five seconds lost in the middle of a walking run
    csv = tmp_path / "gap.csv"
    one.to_csv(csv, index=False)
    params = custom_params(make_params, csv, "ingest.expectations.min_windows_per_class=0")
    execute("ingest", params)
    _, meta, _ = arrays(params)
    gap_line = int(walking[100]) + 2  # + header, 1-based
    assert not ((meta.first_line < gap_line) & (meta.first_line + 128 > gap_line)).any()


def test_a_missing_column_is_named_with_a_suggestion(make_params, rows, tmp_path):
    csv = tmp_path / "mine.csv"
    rows.rename(columns={"acc_y": "acc_Y"}).head(3000).to_csv(csv, index=False)
    with pytest.raises(DataError, match=r"mine\.csv: no column 'acc_y' .*did you mean 'acc_Y'"):
        execute("ingest", custom_params(make_params, csv))


def test_a_non_numeric_value_names_its_line(make_params, rows, tmp_path):
    csv = tmp_path / "mine.csv"
    bad = rows.head(3000).astype({"gyro_z": object})
    bad.loc[1500, "gyro_z"] = "n/a?"
    bad.to_csv(csv, index=False)
    with pytest.raises(DataError, match=r"mine\.csv, line 1502: column 'gyro_z': 'n/a\?' is not a number"):
        execute("ingest", custom_params(make_params, csv))


def test_an_absurd_value_and_a_missing_user_fail_validation_with_their_lines(make_params, rows, tmp_path):
    csv = tmp_path / "mine.csv"
    bad = rows.head(3000).copy()
    bad.loc[42, "acc_x"] = 300.0  # 300 g
    bad.loc[7, "participant"] = None
    bad.to_csv(csv, index=False)
    params = custom_params(make_params, csv, "ingest.expectations.min_windows_per_class=0")
    with pytest.raises(ValidationFailed) as failed:
        execute("ingest", params)
    text = str(failed.value)
    assert "acc_x" in text and "line 44: 300.0" in text and "participant" in text and "line 9" in text
    assert not params.path(params.ingest.output_dir).exists()


def test_time_going_back_within_a_recording_is_refused(make_params, rows, tmp_path):
    csv = tmp_path / "mine.csv"
    bad = rows.head(3000).copy()
    bad.loc[2000, "t_ms"] = 10.0
    bad.to_csv(csv, index=False)
    with pytest.raises(DataError, match=r"line 2002: 't_ms' goes back by 39\.97 s within a recording"):
        execute("ingest", custom_params(make_params, csv))


def test_an_unset_path_and_an_unmapped_sensor_are_explained(make_params, tmp_path):
    with pytest.raises(DataError, match="ingest.custom.path is empty"):
        execute("ingest", make_params("ingest.dataset=custom"))
    csv = tmp_path / "mine.csv"
    csv.write_text("user,label,a,b\nu,walk,1,2\n")
    with pytest.raises(DataError, match="same number of axis columns"):
        execute("ingest", make_params("ingest.dataset=custom", f"ingest.custom.path={csv}",
                               "ingest.custom.sensors={acc: {columns: [a, b], unit: g}, gyro: {columns: [a], "
                               "unit: rad/s}}"))
