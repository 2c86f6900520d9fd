"""Real HHAR files made bad: each must fail with the file, the line and the problem, and leave no output."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from components.data import hhar_csv
from components.data.errors import DataError
from components.stages import execute
from components.validation import ValidationFailed
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
    params = make_params(f"ingest.data_root={tmp_path}", "ingest.hhar_sa.dir=hhar_sa")
    with pytest.raises(DataError, match=r"test_0\.pt: not a readable window file: .*posix\.system|system"):
        execute("ingest", params)
    assert not marker.exists()
    assert_no_output(params, tmp_path)
