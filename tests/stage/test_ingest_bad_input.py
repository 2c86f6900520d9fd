"""Bad input to every reader, through a whole ingest run: each must fail with the file, the line (or row, key or
window) and the problem, and leave no output; a repair (rows re-sorted by time) is logged and carded, never silent.

HHAR cases use real HHAR files made bad; the other formats use small synthetic files written in tmp_path."""

from __future__ import annotations

import gzip
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.data import hhar_csv, window_sets
from components.data.errors import DataError
from components.data.expectations import ValidationFailed
from components.stages import execute
from tests.conftest import RAW_SMALL

ACC = "hhar/raw/Phones_accelerometer.csv.gz"
GYRO = "hhar/raw/Phones_gyroscope.csv.gz"


def real_lines(data_root: Path, rel: str = ACC, n: int = 3000) -> list[str]:
    with gzip.open(data_root / rel, "rt") as f:
        return [next(f) for _ in range(n)]


def run_on(make_params, data_root: Path, tmp_path: Path, lines_or_bytes, name: str = "bad.csv"):
    bad = tmp_path / name
    if isinstance(lines_or_bytes, bytes):
        bad.write_bytes(lines_or_bytes)
    else:
        bad.write_text("".join(lines_or_bytes))
    params = make_params(*RAW_SMALL, f"ingest.hhar_raw.accelerometer_files=[{bad}]",
                         f"ingest.hhar_raw.gyroscope_files=[{data_root / GYRO}]")
    return params, bad, lambda: execute("ingest", params)


def assert_no_output(params, tmp_path: Path):
    out = params.path(params.ingest.output_dir)
    assert not out.exists()
    assert not [p for p in out.parent.glob(".*tmp-*")] if out.parent.exists() else True
    assert not list(tmp_path.rglob("*.npy"))


def set_field(line: str, column: str, value: str) -> str:
    fields = line.rstrip("\n").split(",")
    fields[hhar_csv.COLUMNS.index(column)] = value
    return ",".join(fields) + "\n"


def test_truncated_csv_names_the_line(make_params, data_root, tmp_path):
    lines = real_lines(data_root)[:500]
    lines[-1] = lines[-1][:18]  # cut in the middle of the last row, as an interrupted copy would
    params, bad, run = run_on(make_params, data_root, tmp_path, lines)
    with pytest.raises(DataError, match=r"bad\.csv, line 500: expected 10 fields, got 3"):
        run()
    assert_no_output(params, tmp_path)


def test_truncated_gzip_says_so(make_params, data_root, tmp_path):
    blob = (data_root / ACC).read_bytes()
    params, bad, run = run_on(make_params, data_root, tmp_path, blob[: len(blob) // 2], "cut.csv.gz")
    with pytest.raises(DataError, match=r"cut\.csv\.gz.*truncated"):
        run()
    assert_no_output(params, tmp_path)


def test_missing_column_is_named(make_params, data_root, tmp_path):
    lines = [",".join(line.rstrip("\n").split(",")[:-1]) + "\n" for line in real_lines(data_root)]
    params, bad, run = run_on(make_params, data_root, tmp_path, lines)
    with pytest.raises(DataError, match=r"bad\.csv, line 1: missing column\(s\) gt"):
        run()
    assert_no_output(params, tmp_path)


def test_non_numeric_value_names_line_and_column(make_params, data_root, tmp_path):
    lines = real_lines(data_root)
    lines[299] = set_field(lines[299], "x", "abc")
    params, bad, run = run_on(make_params, data_root, tmp_path, lines)
    with pytest.raises(DataError, match=r"bad\.csv, line 300: column x: 'abc' is not a number"):
        run()
    assert_no_output(params, tmp_path)


@pytest.mark.parametrize("column, value, expectation", [
    ("x", "NaN", "expect_column_values_to_not_be_null(column='x')"),
    ("y", "", "expect_column_values_to_not_be_null(column='y')"),
    ("z", "523.5", "expect_column_values_to_be_between(column='z'"),
    ("gt", "jump", "expect_column_values_to_be_in_set(column='gt'"),
])
def test_bad_values_fail_validation_with_line_and_value(make_params, data_root, tmp_path, column, value, expectation):
    lines = real_lines(data_root)
    lines[199] = set_field(lines[199], column, value)
    params, bad, run = run_on(make_params, data_root, tmp_path, lines)
    with pytest.raises(ValidationFailed) as info:
        run()
    [failure] = info.value.report.failures()
    assert failure.expectation.startswith(expectation)
    assert failure.source == str(bad) and failure.unexpected == 1
    assert failure.examples[0]["where"] == "line 200"
    assert expectation in str(info.value) and "line 200" in str(info.value)
    report = Path(info.value.report_path)
    assert report.exists() and "line 200" in report.read_text()  # the report is kept
    assert_no_output(params, tmp_path)


def test_empty_file_and_header_only(make_params, data_root, tmp_path):
    params, bad, run = run_on(make_params, data_root, tmp_path, b"")
    with pytest.raises(DataError, match=r"bad\.csv: the file is empty"):
        run()
    header = real_lines(data_root, n=1)
    params, bad, run = run_on(make_params, data_root, tmp_path, header, "header.csv")
    with pytest.raises(DataError, match=r"header\.csv: the file has a header but no data rows"):
        run()
    assert_no_output(params, tmp_path)


def test_failed_run_leaves_the_previous_output_untouched(make_params, data_root, tmp_path):
    good = make_params(*RAW_SMALL)
    execute("ingest", good)
    out = good.path(good.ingest.output_dir)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    lines = real_lines(data_root)
    lines[10] = set_field(lines[10], "gt", "jump")
    params, bad, run = run_on(make_params, data_root, tmp_path, lines)
    with pytest.raises(ValidationFailed):
        run()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not list(out.parent.glob(".*tmp-*"))


def test_tab_separated_file_under_a_csv_name_is_read(data_root, tmp_path):
    renamed = tmp_path / "Phones_gyroscope.csv"
    renamed.write_bytes(gzip.decompress((data_root / "hhar/raw_excel_resaved/Phones_gyroscope.tsv.gz").read_bytes()))
    info = hhar_csv.CsvInfo(renamed)
    frames = list(hhar_csv.iter_blocks(renamed, 1 << 20, info))
    assert info.delimiter == "\t" and info.rows == 7008
    assert any("tab-separated" in n for n in info.notes)
    assert set(frames[0]["gt"].unique()) == {"stand", "sit", "null", "walk", "stairsup", "stairsdown", "bike"}


def test_e_notation_timestamps_parse_to_the_original_times(data_root, tmp_path):
    precise = next(hhar_csv.iter_blocks(data_root / ACC, 1 << 20)).loc[2:1003]
    info = hhar_csv.CsvInfo(data_root / "hhar/raw_excel_resaved/Phones_accelerometer.csv.gz")
    spreadsheet = next(hhar_csv.iter_blocks(info.path, 1 << 20, info)).loc[2:1003]
    np.testing.assert_array_equal(precise["Index"], spreadsheet["Index"])
    diff_ns = np.abs(precise["Creation_Time"].to_numpy() - spreadsheet["Creation_Time"].to_numpy())
    assert diff_ns.max() <= 10_000  # the spreadsheet kept 15 digits: within +-5 us, plus float rounding
    assert any("E-notation" in n for n in info.notes)


def test_window_file_that_asks_to_run_code_is_refused(make_params, tmp_path):
    import torch

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os
            return (os.system, (f"touch {marker}",))

    folder = tmp_path / "hhar_sa"
    folder.mkdir()
    torch.save({"samples": Evil(), "labels": np.zeros(1)}, folder / "test_0.pt", _use_new_zipfile_serialization=False)
    params = make_params(f"ingest.hhar_sa.dir={folder}")  # absolute: whatever $IOT_COMPRESS_DATA_ROOT says
    with pytest.raises(DataError, match=r"test_0\.pt: not a readable window file: .*posix\.system|system"):
        execute("ingest", params)
    assert not marker.exists()
    assert_no_output(params, tmp_path)


# ---- a UTF-8 byte-order mark is legal (a spreadsheet's "CSV UTF-8" writes one) ---------------------------------

BOM = b"\xef\xbb\xbf"


def outputs(params) -> dict[str, bytes]:
    out = params.path(params.ingest.output_dir)
    return {name: (out / name).read_bytes() for name in ("x.npy", "signal.npy")}


def test_hhar_csv_with_a_byte_order_mark_ingests_like_without(make_params, data_root, tmp_path):
    text = "".join(real_lines(data_root)).encode()
    plain, _, run_plain = run_on(make_params, data_root, tmp_path, text, "plain.csv")
    run_plain()
    (tmp_path / "bom.csv").write_bytes(BOM + text)
    marked = make_params(*RAW_SMALL, f"ingest.hhar_raw.accelerometer_files=[{tmp_path / 'bom.csv'}]",
                         f"ingest.hhar_raw.gyroscope_files=[{data_root / GYRO}]",
                         f"ingest.output_dir={tmp_path / 'out' / 'bom'}")
    execute("ingest", marked)  # before: "missing column(s) Index; the header has \ufeffIndex, ..."
    assert outputs(marked) == outputs(plain)
    card = json.loads((marked.path(marked.ingest.output_dir) / "data_card.json").read_text())
    assert card["rows_per_file"][str(tmp_path / "bom.csv")] == 2999


# ---- rows out of time order: re-sorted with a warning and a card entry, or refused beyond the tolerance ---------

def backsteps(lines: list[str]) -> tuple[int, float]:
    """(rows stepping back from the previous row of their device, largest backstep in ms), counted here."""
    frame = pd.DataFrame([line.rstrip("\n").split(",") for line in lines[1:]], columns=hhar_csv.COLUMNS)
    step_ms = frame["Creation_Time"].astype("int64").groupby(frame["Device"]).diff().dropna() / 1e6
    back = step_ms[step_ms < 0]
    return len(back), float(-back.min())


def test_rows_re_sorted_by_time_are_logged_and_carded(make_params, data_root, tmp_path, caplog):
    lines = real_lines(data_root)
    rows, largest_ms = backsteps(lines)
    assert rows > 10 and largest_ms < 50  # the real file: a few swapped rows, all within the tolerance
    params, bad, run = run_on(make_params, data_root, tmp_path, lines)
    with caplog.at_level(logging.WARNING, logger="components.data.hhar_ingest"):
        run()
    [warning] = [r.getMessage() for r in caplog.records if str(bad) in r.getMessage()]
    assert f"{bad}: {rows} row(s) in 1 of 1 block(s) step back in time" in warning
    assert f"largest backstep {largest_ms:.3f} ms; 0 beyond the 50 ms tolerance" in warning
    out = params.path(params.ingest.output_dir)
    card = json.loads((out / "data_card.json").read_text())
    assert card["time_order"][str(bad)] == {"rows_re_sorted": rows, "blocks": 1, "blocks_read": 1,
                                            "largest_backstep_ms": round(largest_ms, 3), "rows_beyond_tolerance": 0}
    assert "## Rows re-sorted by time" in (out / "data_card.md").read_text()


def test_rows_stepping_back_beyond_the_tolerance_stay_refused(make_params, data_root, tmp_path):
    lines = real_lines(data_root)
    for i in range(100, 2900, 28):  # 100 rows (3 %, over the 1 % tolerated) put 10 s back (the file has a 5 s gap)
        t = int(lines[i].split(",")[2])
        lines[i] = set_field(lines[i], "Creation_Time", str(t - 10_000_000_000))
    params, bad, run = run_on(make_params, data_root, tmp_path, lines)
    with pytest.raises(ValidationFailed, match=r"time_step_ms") as info:
        run()
    [failure] = info.value.report.failures()
    assert failure.source == str(bad) and failure.unexpected == 100
    assert failure.examples[0]["where"] == "line 101"
    assert_no_output(params, tmp_path)


# ---- window sets (HHAR_SA, UCI HAR, WISDM): synthetic .pt files ------------------------------------------------

def save_pt(path: Path, obj) -> None:
    import torch

    torch.save(obj, path, _use_new_zipfile_serialization=False)


def good_windows(dataset: str, n: int = 4) -> dict[str, np.ndarray]:
    shape = (n, 9, 128) if dataset == "uci_har" else (n, 128, 3)
    return {"samples": np.random.default_rng(0).standard_normal(shape).astype(np.float32),
            "labels": np.arange(n) % 6}


def damaged(dataset: str, kind: str, path: Path) -> None:
    good = good_windows(dataset)
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        save_pt(path, good)
        path.write_bytes(path.read_bytes()[:-700])
    elif kind == "wrong key":
        save_pt(path, {"samples": good["samples"], "y": good["labels"]})
    elif kind == "text labels":
        save_pt(path, {"samples": good["samples"], "labels": np.array(["walk"] * 4)})
    elif kind == "wrong shape":
        save_pt(path, {"samples": good["samples"][:, :, :2], "labels": good["labels"]})


@pytest.mark.parametrize("dataset, kind, message", [
    ("hhar_sa", "truncated", r"test_1\.pt: not a readable window file: .*(EOF|corrupt)"),
    ("hhar_sa", "wrong shape", r"test_1\.pt, samples: 'samples' has shape \(4, 128, 2\), expected \[N, 128, 3\]"),
    ("uci_har", "text labels", r"test_1\.pt: not a readable window file: it holds numpy\.dtypes\.StrDType objects"),
    ("uci_har", "wrong key", r"test_1\.pt: expected a dict with 'samples' and 'labels', found \['samples', 'y'\]"),
    ("wisdm", "empty", r"test_1\.pt: the file is empty"),
    ("wisdm", "wrong shape", r"test_1\.pt, samples: 'samples' has shape \(4, 128, 2\), expected \[N, 128, 3\]"),
])
def test_damaged_window_file_is_named(make_params, tmp_path, dataset, kind, message):
    folder = tmp_path / dataset
    folder.mkdir()
    save_pt(folder / "test_0.pt", good_windows(dataset))  # numpy 2 arrays: read, the bad file is the one named
    damaged(dataset, kind, folder / "test_1.pt")
    params = make_params(f"ingest.dataset={dataset}", f"ingest.{dataset}.dir={folder}")
    with pytest.raises(DataError, match=message):
        execute("ingest", params)
    assert_no_output(params, tmp_path)


def test_window_files_saved_by_numpy2_ingest_like_the_originals(make_params, data_root, tmp_path):
    """The shared HHAR_SA files re-saved as numpy 2 arrays (before: refused as "asks to run code")."""
    original = make_params()
    execute("ingest", original)
    folder = tmp_path / "hhar_sa"
    folder.mkdir()
    for path in sorted((data_root / original.ingest.hhar_sa.dir).glob("*.pt")):
        save_pt(folder / path.name, window_sets.load_legacy_pt(path))
        assert b"numpy._core.multiarray\n_reconstruct" in (folder / path.name).read_bytes()
    resaved = make_params(f"ingest.hhar_sa.dir={folder}", f"ingest.output_dir={tmp_path / 'out' / 'numpy2'}")
    execute("ingest", resaved)
    assert outputs(resaved) == outputs(original)


# ---- UCI HAPT raw sessions: a synthetic RawData folder ----------------------------------------------------------

def hapt_folder(root: Path, rows: int = 300) -> Path:
    folder = root / "hapt" / "RawData"
    folder.mkdir(parents=True)
    values = np.random.default_rng(0).uniform(-1, 1, (rows, 3))
    for name in ("acc_exp01_user01.txt", "gyro_exp01_user01.txt"):
        (folder / name).write_text("\n".join(" ".join(f"{v:.6f}" for v in row) for row in values) + "\n")
    (folder / "labels.txt").write_text(f"1 1 1 0 {rows - 1}\n")
    return folder


@pytest.mark.parametrize("name, text, message", [
    ("acc_exp01_user01.txt", "", r"acc_exp01_user01\.txt: the file is empty"),
    ("gyro_exp01_user01.txt", "0.1 0.2 0.3\n" * 299 + "0.1 0.", r"gyro_exp01_user01\.txt, line 300: expected 3 values"),
    ("acc_exp01_user01.txt", "0.1 0.2 0.3\n" * 120 + "0.1 0.2 0.3 0.4\n", r"acc_exp01_user01\.txt, line 121: "
                                                                           r"expected 3 values \(x y z\) .* got 4"),
    ("labels.txt", "1 1 one 0 299\n", r"labels\.txt, line 1: 'one' is not a number"),
    ("labels.txt", "", r"labels\.txt: the file is empty"),
])
def test_hapt_bad_file_names_file_and_line(make_params, tmp_path, name, text, message):
    folder = hapt_folder(tmp_path)
    (folder / name).write_text(text)
    params = make_params("ingest.dataset=uci_hapt", f"ingest.uci_hapt.dir={folder}")
    with pytest.raises(DataError, match=message):
        execute("ingest", params)
    assert_no_output(params, tmp_path)


# ---- a user's own CSV or Parquet -----------------------------------------------------------------------------------

CUSTOM = ("ingest.dataset=custom",
          "ingest.custom.columns={user: who, label: what, session: '', time: t_ms, device: ''}",
          "ingest.custom.time_unit_s=0.001", "ingest.custom.sensors={accelerometer: {columns: [ax, ay, az], unit: g}}",
          "ingest.expectations.min_windows_per_class=0")


def custom_rows() -> pd.DataFrame:
    """Five users, two activities each, 400 rows at 50 Hz per run: a few samples per run."""
    rng = np.random.default_rng(0)
    parts = [pd.DataFrame({"who": f"u{u}", "what": label, **{a: rng.uniform(-1, 1, 400) for a in ("ax", "ay", "az")}})
             for u in range(5) for label in ("walk", "sit")]
    rows = pd.concat(parts, ignore_index=True)
    rows.insert(2, "t_ms", rows.index * 20.0)  # no session column: time runs on across users
    return rows


def test_custom_csv_with_a_byte_order_mark_ingests_like_without(make_params, tmp_path):
    text = custom_rows().to_csv(index=False).encode()
    (tmp_path / "plain.csv").write_bytes(text)
    (tmp_path / "bom.csv").write_bytes(BOM + text)
    plain = make_params(*CUSTOM, f"ingest.custom.path={tmp_path / 'plain.csv'}")
    marked = make_params(*CUSTOM, f"ingest.custom.path={tmp_path / 'bom.csv'}",
                         f"ingest.output_dir={tmp_path / 'out' / 'bom'}")
    execute("ingest", plain)
    execute("ingest", marked)  # before: "no column 'who' ...; did you mean '\ufeffwho'?"
    assert outputs(marked) == outputs(plain)


@pytest.mark.parametrize("name, make, message", [
    ("mine.csv", lambda text: b"", r"mine\.csv, line 1: the file is empty \(no header line\)"),
    ("mine.csv", lambda text: text.split(b"\n")[0] + b"\n", r"mine\.csv: the file holds no data rows \(only a header"),
    ("mine.csv", lambda text: text[: text.index(b"\n", 2000) + 12], r"mine\.csv, line \d+: expected 6 fields as in the "
                                                                     r"header, got [2-5]"),
    ("mine.csv", lambda text: text.replace(b"\n", b"\nu9,walk,0,0.1,nul,0.2\n", 1),
     r"mine\.csv, line 2: column 'ay': 'nul' is not a number"),
    ("mine.csv", lambda text: text.replace(b"who,", b"who_,", 1), r"mine\.csv: no column 'who' .*did you mean 'who_'"),
    ("mine.parquet", lambda data: data[: len(data) // 2], r"mine\.parquet: not a readable Parquet file .*truncated"),
])
def test_custom_bad_file_is_named(make_params, tmp_path, name, make, message):
    path = tmp_path / name
    rows = custom_rows()
    if name.endswith(".csv"):
        path.write_bytes(make(rows.to_csv(index=False).encode()))
    else:
        rows.to_parquet(path)
        path.write_bytes(make(path.read_bytes()))
    params = make_params(*CUSTOM, f"ingest.custom.path={path}")
    with pytest.raises(DataError, match=message):
        execute("ingest", params)
    assert_no_output(params, tmp_path)
