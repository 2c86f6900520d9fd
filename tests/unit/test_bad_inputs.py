"""Each reader of components/data fed real bad input (small files written here): a DataError naming the file and
the line, row or key; legal oddities (a byte-order mark, numpy 2 pickles) read as if they were not there."""

from __future__ import annotations

import gzip
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest

from components.config import load_params
from components.data import custom, hhar_csv, text_rows, window_sets
from components.data.card import card_markdown
from components.data.errors import DataError
from components.data.hhar_ingest import TimeOrder
from tests.conftest import PROJECT_ROOT

BOM = b"\xef\xbb\xbf"
HHAR_HEADER = ",".join(hhar_csv.COLUMNS)


def hhar_rows(n: int, start_ns: int = 1_424_696_633_908_000_000) -> list[str]:
    return [f"{i},{1424696633908 + 5 * i},{start_ns + 5_000_000 * i},0.1,9.8,0.2,a,nexus4,nexus4_1,stand"
            for i in range(n)]


def write(path: Path, text: str, bom: bool = False) -> Path:
    data = (BOM if bom else b"") + text.encode()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


# ---- 1. a UTF-8 byte-order mark is legal -----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["bom.csv", "bom.csv.gz"])
def test_hhar_csv_with_a_byte_order_mark_reads_like_without(tmp_path, name):
    text = "\n".join([HHAR_HEADER, *hhar_rows(50)]) + "\n"
    plain = list(hhar_csv.iter_blocks(write(tmp_path / f"plain{name[3:]}", text), 1 << 16))
    info = hhar_csv.CsvInfo(tmp_path / name)
    marked = list(hhar_csv.iter_blocks(write(tmp_path / name, text, bom=True), 1 << 16, info))
    assert hhar_csv.read_header(tmp_path / name)[1] == list(hhar_csv.COLUMNS)
    assert info.rows == 50 and len(marked) == len(plain) == 1
    assert marked[0].equals(plain[0]) and marked[0].index[0] == 2  # line numbers unchanged


def test_hhar_csv_with_a_byte_order_mark_still_names_the_bad_line(tmp_path):
    rows = hhar_rows(50)
    rows[29] = rows[29].replace(",0.1,", ",abc,")
    path = write(tmp_path / "bom.csv", "\n".join([HHAR_HEADER, *rows]) + "\n", bom=True)
    with pytest.raises(DataError, match=r"bom\.csv, line 31: column x: 'abc' is not a number"):
        list(hhar_csv.iter_blocks(path, 1 << 16))


def test_numeric_text_with_a_byte_order_mark(tmp_path):
    path = write(tmp_path / "acc_exp01_user01.txt", "0.1 0.2 0.3\n0.4 0.5 0.6\n", bom=True)
    np.testing.assert_array_equal(text_rows.read_numeric(path, 3), [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]])
    # before: the mark was taken as part of line 1's first value, and line 1 blamed for line 2's fault
    write(path, "0.1 0.2 0.3\n0.4 0.5\n", bom=True)
    with pytest.raises(DataError, match=r"acc_exp01_user01\.txt, line 2: expected 3 values separated by ' ', got 2"):
        text_rows.read_numeric(path, 3)


def test_arff_with_a_byte_order_mark(tmp_path):
    text = "@attribute cls {A,B}\n@data\n'1,2\\n3,4',A\n"
    values, labels, classes = window_sets.read_uea_arff(write(tmp_path / "x.arff", text, bom=True))
    assert classes == ["A", "B"] and values.shape == (1, 2, 2) and list(labels) == ["A"]


def custom_cfg():
    params = load_params(PROJECT_ROOT / "params.yaml", [
        "ingest.custom.columns={user: who, label: what, session: '', time: t, device: ''}",
        "ingest.custom.sensors={accelerometer: {columns: [ax, ay, az], unit: g}}", "ingest.custom.chunk_rows=1000"])
    return params.ingest.custom


CUSTOM_ROWS = ["who,what,t,ax,ay,az"] + [f"u1,walk,{20 * i},0.1,0.2,0.3" for i in range(40)]


def test_custom_csv_with_a_byte_order_mark_reads_like_without(tmp_path):
    cfg = custom_cfg()
    plain = list(custom._blocks(write(tmp_path / "plain.csv", "\n".join(CUSTOM_ROWS) + "\n"), "csv", cfg,
                                ["ax", "ay", "az"]))
    marked = list(custom._blocks(write(tmp_path / "bom.csv", "\n".join(CUSTOM_ROWS) + "\n", bom=True), "csv", cfg,
                                 ["ax", "ay", "az"]))
    assert len(marked) == len(plain) == 1 and marked[0].equals(plain[0])


# ---- 4. every reader: empty, truncated, wrong column, non-numeric ---------------------------------------------

@pytest.mark.parametrize("text, message", [
    ("", r"acc\.txt: the file is empty"),
    ("0.1 0.2 0.3\n0.4 0.5 0.6\n0.7 0.", r"acc\.txt, line 3: expected 3 values \(x y z\) separated by ' ', got 2"),
    ("0.1 0.2 0.3\n0.4 0.5 0.6 0.7\n", r"acc\.txt, line 2: expected 3 values \(x y z\) separated by ' ', got 4"),
    ("0.1 0.2 0.3\n0.4 abc 0.6\n", r"acc\.txt, line 2: 'abc' is not a number"),
    ("0.1 0.2 0.3\n0.4  0.6\n", r"acc\.txt, line 2: a value is missing"),
])
def test_numeric_text_rows_name_the_file_and_line(tmp_path, text, message):
    with pytest.raises(DataError, match=message):
        text_rows.read_numeric(write(tmp_path / "acc.txt", text), 3, " ", "values (x y z)")


@pytest.mark.parametrize("text, message", [
    ("", r"mine\.csv, line 1: the file is empty \(no header line\)"),
    ("who,what,t,ax,ay\nu1,walk,0,1,2\n", r"mine\.csv: no column 'az' \(ingest\.custom, the value column\)"),
    ("\n".join(CUSTOM_ROWS[:30]) + "\nu1,walk,580,0.1",
     r"mine\.csv, line 31: expected 6 fields as in the header, got 4"),
    ("\n".join(CUSTOM_ROWS[:30]) + "\nu1,walk,580,0.1,zero,0.3\n", r"mine\.csv, line 31: column 'ay': 'zero' is not a"),
])
def test_custom_csv_names_the_file_and_line(tmp_path, text, message):
    with pytest.raises(DataError, match=message):
        list(custom._blocks(write(tmp_path / "mine.csv", text), "csv", custom_cfg(), ["ax", "ay", "az"]))


def test_custom_parquet_truncated_or_empty_is_named(tmp_path):
    import pandas as pd

    path = tmp_path / "mine.parquet"
    frame = pd.DataFrame([row.split(",") for row in CUSTOM_ROWS[1:]], columns=CUSTOM_ROWS[0].split(","))
    frame.astype({c: float for c in ("t", "ax", "ay", "az")}).to_parquet(path)
    blob = path.read_bytes()
    for data in (blob[: len(blob) // 2], b""):
        path.write_bytes(data)
        with pytest.raises(DataError, match=r"mine\.parquet: not a readable Parquet file .*truncated"):
            list(custom._blocks(path, "parquet", custom_cfg(), ["ax", "ay", "az"]))


def test_custom_parquet_column_of_text_is_named(tmp_path):
    import pandas as pd

    path = tmp_path / "mine.parquet"
    pd.DataFrame([row.split(",") for row in CUSTOM_ROWS[1:]], columns=CUSTOM_ROWS[0].split(",")).to_parquet(path)
    with pytest.raises(DataError, match=r"mine\.parquet: column '(t|ax|ay|az)' holds (large_)?string, not numbers"):
        list(custom._blocks(path, "parquet", custom_cfg(), ["ax", "ay", "az"]))


@pytest.mark.parametrize("text, message", [
    ("", r"x\.arff: no data rows after @data"),
    ("@attribute cls {A,B}\n@data\n'1,2\\n3,x',A\n", r"x\.arff, line 3: not a multivariate series"),
    ("@attribute cls {A,B}\n@data\n'1,2\\n3,4',C\n", r"x\.arff, line 3: label 'C' is not one of \['A', 'B'\]"),
])
def test_arff_names_the_file_and_line(tmp_path, text, message):
    with pytest.raises(DataError, match=message):
        window_sets.read_uea_arff(write(tmp_path / "x.arff", text))


# ---- 2. window files: numpy 2 pickles read, nothing outside the allow-list ever runs ---------------------------

NUMERIC = ["?", "f2", "f4", "f8", ">f4", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8"]


def save_pt(path: Path, obj, legacy: bool = True) -> Path:
    import torch

    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "zip"])
@pytest.mark.parametrize("dtype", NUMERIC)
def test_numpy2_arrays_of_every_numeric_type_are_read(tmp_path, dtype, legacy):
    samples = np.arange(2 * 128 * 3).reshape(2, 128, 3).astype(dtype)
    labels = np.array([0, 1], dtype=dtype)
    path = save_pt(tmp_path / "test_0.pt", {"samples": samples, "labels": labels}, legacy)
    got = window_sets.load_legacy_pt(path)
    np.testing.assert_array_equal(got["samples"], samples)
    np.testing.assert_array_equal(got["labels"], labels)


def test_numpy1_pickles_are_read(tmp_path):
    """numpy 1 named the rebuilder numpy.core.multiarray._reconstruct; a file it wrote says so."""
    path = save_pt(tmp_path / "test_0.pt", {"samples": np.ones((2, 128, 3), "f4"), "labels": np.zeros(2, "i8")})
    blob = path.read_bytes()
    assert b"numpy._core.multiarray\n_reconstruct" in blob  # protocol 2: GLOBAL names are plain text
    path.write_bytes(blob.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))
    assert window_sets.load_legacy_pt(path)["samples"].sum() == 2 * 128 * 3


class Runs:
    """A pickle that, if unpickled outside an allow-list, calls `call` with `args`."""

    def __init__(self, call, *args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


def marker_payloads(marker: Path) -> dict:
    inner = pickle.dumps(Runs(os.system, f"touch {marker}"), protocol=2)
    return {
        "os.system": Runs(os.system, f"touch {marker}"),
        "builtins.exec": Runs(exec, f"open({str(marker)!r}, 'w').close()"),
        "builtins.eval": Runs(eval, f"open({str(marker)!r}, 'w')"),
        "pickle.loads": Runs(pickle.loads, inner),
        "numpy.load": Runs(np.load, str(marker)),  # a numpy function, but not the array rebuilder
    }


@pytest.mark.parametrize("name, named", [("os.system", f"{os.name}.system"), ("builtins.exec", "exec"),
                                         ("builtins.eval", "eval"), ("pickle.loads", "pickle.loads"),
                                         ("numpy.load", "numpy.load")])
@pytest.mark.parametrize("where", ["samples", "nested"])
def test_a_pickle_that_asks_to_run_code_never_runs(tmp_path, name, named, where):
    marker = tmp_path / "pwned"
    payload = marker_payloads(marker)[name]
    obj = {"samples": payload, "labels": np.zeros(1)} if where == "samples" else \
        {"samples": np.zeros((1, 128, 3), "f4"), "labels": np.zeros(1), "extra": [np.zeros(2), {"x": payload}]}
    path = save_pt(tmp_path / "test_0.pt", obj)
    with pytest.raises(DataError, match=rf"test_0\.pt: not a readable window file: it asks to run code, not just to "
                                        rf"rebuild numpy arrays \(refused\): .*GLOBAL {re.escape(named)}\b") as refused:
        window_sets.load_legacy_pt(path)
    assert not marker.exists()
    assert "add_safe_globals" not in str(refused.value)  # no advice to allow-list it


def test_a_forged_rebuilder_name_is_refused(tmp_path):
    """A global that only looks like numpy's rebuilder (same module, other function) is not on the list."""
    path = save_pt(tmp_path / "test_0.pt", {"samples": np.zeros((1, 128, 3), "f4"), "labels": np.zeros(1)})
    blob = path.read_bytes()
    path.write_bytes(blob.replace(b"multiarray\n_reconstruct\n", b"multiarray\nfromstring\n", 1))
    with pytest.raises(DataError, match=r"asks to run code.*numpy\._core\.multiarray\.fromstring"):
        window_sets.load_legacy_pt(path)


@pytest.mark.parametrize("make, message", [
    (lambda p, good: p.write_bytes(b""), r"test_0\.pt: the file is empty"),
    (lambda p, good: p.write_bytes(good[: len(good) // 2]), r"test_0\.pt: not a readable window file: .*(EOF|corrupt)"),
    (lambda p, good: p.write_text("samples,labels\n1,0\n"),
     r"test_0\.pt: not a torch \.pt file .* starts with b'samples,'"),
    (lambda p, good: save_pt(p, {"samples": np.zeros((2, 128, 3), "f4"), "label": np.zeros(2)}),
     r"test_0\.pt: expected a dict with 'samples' and 'labels', found \['label', 'samples'\]"),
    (lambda p, good: save_pt(p, {"samples": np.full((2, 128, 3), "x"), "labels": np.zeros(2)}),
     r"test_0\.pt: not a readable window file: it holds numpy\.dtypes\.StrDType objects, not numeric arrays"),
    (lambda p, good: save_pt(p, {"samples": np.zeros((2, 128, 3), "f4"), "labels": ["walk", "sit"]}),
     r"test_0\.pt, labels: 'labels' holds <U4 values, not numbers"),
])
@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "zip"])
def test_damaged_window_files_are_named(tmp_path, make, message, legacy):
    path = tmp_path / "test_0.pt"
    good = save_pt(path, {"samples": np.zeros((2, 128, 3), "f4"), "labels": np.zeros(2)}, legacy).read_bytes()
    make(path, good)
    with pytest.raises(DataError, match=message):
        window_sets.load_legacy_pt(path)


@pytest.mark.parametrize("loader, name, samples, labels, message", [
    (window_sets.load_hhar_sa, "test_0.pt", np.zeros((2, 128, 6), "f4"), np.zeros(2),
     r"test_0\.pt, samples: 'samples' has shape \(2, 128, 6\), expected \[N, 128, 3\]"),
    (window_sets.load_wisdm, "train_3.pt", np.zeros((2, 128, 3), "f4"), np.zeros(3),
     r"train_3\.pt, labels: 'labels' has shape \(3,\), expected \[2\]"),
    (window_sets.load_uci_har, "test_2.pt", np.zeros((3, 9, 128), "f4"), np.array([0, 6, 1]),
     r"test_2\.pt, window 1: label 6 is not one of 0\.\.5"),
    (window_sets.load_uci_har, "train_2.pt", np.zeros((2, 9, 128), "f4"), np.array([0.5, 1]),
     r"train_2\.pt, window 0: label 0\.5 is not one of 0\.\.5"),
])
def test_window_sets_name_the_file_and_window(tmp_path, loader, name, samples, labels, message):
    save_pt(tmp_path / name, {"samples": samples, "labels": labels})
    with pytest.raises(DataError, match=message):
        loader(tmp_path)


# ---- 3. rows re-sorted by time are counted, logged and carded --------------------------------------------------

def test_time_order_counts_rows_blocks_and_the_largest_backstep(caplog, tmp_path):
    order = TimeOrder()
    order.add(np.array([0.0, 5.0, -2.0, 5.0, -0.5]), tolerance_ms=50)
    order.add(np.array([5.0, 5.0, 5.0]), tolerance_ms=50)
    order.add(np.array([5.0, -120.0, 5.0]), tolerance_ms=50)
    assert order.card() == {"rows_re_sorted": 3, "blocks": 2, "blocks_read": 3, "largest_backstep_ms": 120.0,
                            "rows_beyond_tolerance": 1}
    with caplog.at_level("WARNING", logger="components.data.hhar_ingest"):
        order.warn(tmp_path / "Phones_accelerometer.csv", 50)
        TimeOrder().warn(tmp_path / "clean.csv", 50)  # nothing re-sorted: nothing said
    [record] = caplog.records
    assert record.levelname == "WARNING"
    text = record.getMessage()
    assert "Phones_accelerometer.csv: 3 row(s) in 2 of 3 block(s) step back in time" in text
    assert "largest backstep 120.000 ms; 1 beyond the 50 ms tolerance" in text


def test_the_card_markdown_shows_re_sorted_rows():
    card = {"dataset": "hhar_raw", "windows": 1, "data_hash": "0" * 64, "sensors": {}, "rows_per_file": {},
            "counts": {k: {} for k in ("split", "user", "device", "label")}, "sampling_rate_hz": {},
            "split": {"strategy": "leave-users-out", "test_users": []}, "sources": {}, "notes": [],
            "time_order": {"raw/Phones_accelerometer.csv.gz": {"rows_re_sorted": 287, "blocks": 1, "blocks_read": 1,
                                                               "largest_backstep_ms": 15.076,
                                                               "rows_beyond_tolerance": 0}}}
    text = card_markdown(card)
    assert "## Rows re-sorted by time" in text
    assert "| raw/Phones_accelerometer.csv.gz | 287 | 1 of 1 | 15.076 | 0 |" in text
