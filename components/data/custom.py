"""`ingest` for a user's own recordings: one CSV or Parquet file of raw sensor rows, mapped by params.

The format (documented in the README, "Your own data"): one row per sample,
rows in time order within a recording, at a fixed rate (`sample_rate_hz`).
Columns, named in `ingest.custom`:

- `columns.user`: who was recorded (the pipeline holds out whole users);
- `columns.label`: the activity; an empty label marks rows outside any
  activity (not used);
- `columns.session` (optional): a recording's id, so samples never cross two;
- `columns.time` (optional, in `time_unit_s` units): a gap of more than two
  sample periods also ends a run; time going backwards is an error;
- `columns.device` (optional): the device that recorded the row;
- one column per axis of each sensor (`sensors.<name>.columns`) with its unit.

The file is read in blocks of `chunk_rows` rows (memory bounded by one block,
whatever its size); every block is validated (Great Expectations); samples of
`intervals` x `interval_s` are cut inside runs of one user, session and label,
never across two; the run still open at the end of a block is carried into
the next one.
"""

from __future__ import annotations

import difflib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from components.artifacts.atomic import WindowWriter
from components.artifacts.seals import sha256_of
from components.config import Params
from components.data.errors import DataError
from components.data.expectations import ValidationFailed, Validator
from components.data.runs import run_bounds, sample_starts, take_samples
from components.settings.ingest import CustomParams

log = logging.getLogger(__name__)
UNIT_LIMITS = {"m/s^2": "accel", "g": "accel_g", "rad/s": "gyro", "deg/s": "gyro_deg", "standardised": None,
               "unknown": None}


@dataclass(frozen=True)
class CustomIngest:
    label_names: tuple[str, ...]
    sensors: tuple[str, ...]
    units: tuple[str, ...]
    sources: dict[str, str]
    notes: list[str]
    card_stats: dict
    stream_s: float


@dataclass
class _Carry:
    """The run still open at the end of the last block: its key, and its rows from its next sample's first row."""

    frame: pd.DataFrame | None = None
    key: str | None = None
    skip: int = 0  # rows of the open run still to pass before its next sample (when that starts past the block)
    last_time: float | None = None
    last_session: str | None = None


@dataclass
class _Counts:
    rows: int = 0
    unlabelled: int = 0
    label_ids: dict[str, int] = field(default_factory=dict)


def source_path(params: Params) -> Path:
    cfg = params.ingest.custom
    if not cfg.path:
        raise DataError("params.yaml", "ingest.custom.path is empty: set it to your CSV or Parquet file of sensor "
                        "rows (relative to ingest.data_root, or absolute)", "ingest.custom.path")
    path = Path(cfg.path).expanduser()
    path = path if path.is_absolute() else params.data_root() / path
    if not path.exists():
        raise DataError(path, "file not found (ingest.custom.path)")
    return path


def file_format(path: Path, declared: str) -> str:
    if declared != "auto":
        return declared
    suffixes = [s.lower() for s in path.suffixes]
    if ".parquet" in suffixes or ".pq" in suffixes:
        return "parquet"
    if ".csv" in suffixes or ".txt" in suffixes:
        return "csv"
    raise DataError(path, "cannot tell CSV from Parquet by its name; set ingest.custom.format")


def points_per_interval(cfg: CustomParams) -> int:
    points = cfg.interval_s * cfg.sample_rate_hz
    if points < 1 or abs(points - round(points)) > 1e-6:
        raise DataError("params.yaml", f"ingest.custom.interval_s {cfg.interval_s} s is {points:g} rows at "
                        f"{cfg.sample_rate_hz:g} Hz; choose a whole number of rows", "ingest.custom.interval_s")
    return int(round(points))


def ingest_custom(params: Params, writer: WindowWriter, validator: Validator) -> CustomIngest:
    cfg = params.ingest.custom
    path = source_path(params)
    fmt = file_format(path, cfg.format)
    sensors, units = _sensors(cfg)
    points = points_per_interval(cfg)
    length, stride = cfg.intervals * points, cfg.window_stride_intervals * points
    axes = len(cfg.sensors[sensors[0]].columns)
    value_columns = [c for s in sensors for c in cfg.sensors[s].columns]
    carry, counts = _Carry(), _Counts(label_ids={name: i for i, name in enumerate(cfg.labels)})
    started = time.perf_counter()
    for block in _blocks(path, fmt, cfg, value_columns):
        _validate_block(validator, path, block, cfg, params.ingest.expectations)
        signal, meta = _cut_block(block, cfg, value_columns, length, stride, carry, counts)
        if len(signal):
            writer.add(signal.reshape(len(signal), len(sensors), axes, length), meta)
        counts.rows += len(block)
        log.info("custom: %s, %d rows so far", path.name, counts.rows)
    if counts.rows == 0:
        raise DataError(path, "the file holds no data rows" + (" (only a header)" if fmt == "csv" else ""))
    if not validator.report.success:
        raise ValidationFailed(validator.report)
    labels = tuple(sorted(counts.label_ids, key=counts.label_ids.get))
    notes = [f"your own recordings: {path.name} ({fmt}), {counts.rows} rows taken as evenly spaced at "
             f"{cfg.sample_rate_hz:g} Hz; a change of user, session, device or label, or a time gap, ends a run",
             f"samples of {cfg.intervals} intervals x {cfg.interval_s} s ({length} rows), one every "
             f"{cfg.window_stride_intervals} intervals, cut inside one run",
             f"{counts.unlabelled} rows without a label" + (" or with a label outside ingest.custom.labels"
                                                            if cfg.labels else "") + " are not used",
             f"units as declared: {', '.join(f'{s} {u}' for s, u in zip(sensors, units))}"]
    stats = {"rows_per_file": {path.name: counts.rows},
             "sampling_rate_hz": {"custom": {"declared": cfg.sample_rate_hz}}}
    return CustomIngest(labels, sensors, units, {path.name: sha256_of(path)}, notes, stats,
                        round(time.perf_counter() - started, 3))


def _sensors(cfg: CustomParams) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if not cfg.sensors:
        raise DataError("params.yaml", "ingest.custom.sensors is empty: map at least one sensor to its axis columns",
                        "ingest.custom.sensors")
    names = tuple(cfg.sensors)
    axes = {len(cfg.sensors[s].columns) for s in names}
    if len(axes) != 1 or 0 in axes:
        raise DataError("params.yaml", "every sensor in ingest.custom.sensors needs the same number of axis columns "
                        f"(DeepSense stacks them): {({s: len(cfg.sensors[s].columns) for s in names})}",
                        "ingest.custom.sensors")
    return names, tuple(cfg.sensors[s].unit for s in names)


def _needed(cfg: CustomParams, value_columns: list[str]) -> dict[str, str]:
    """column -> its role, for every column the mapping names."""
    roles = {getattr(cfg.columns, role): role for role in ("user", "label", "session", "time", "device")
             if getattr(cfg.columns, role)}
    return roles | {c: "value" for c in value_columns}


def _check_columns(path: Path, present: list[str], needed: dict[str, str]) -> None:
    for column, role in needed.items():
        if column not in present:
            same_letters = [p for p in present if p.lower() == column.lower()]
            close = same_letters or difflib.get_close_matches(column, present, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; the file has {present[:20]}"
            raise DataError(path, f"no column {column!r} (ingest.custom, the {role} column){hint}")


def _blocks(path: Path, fmt: str, cfg: CustomParams, value_columns: list[str]) -> Iterator[pd.DataFrame]:
    """Blocks of the mapped columns only, values as float64, indexed by file line (CSV) or row (Parquet)."""
    needed = _needed(cfg, value_columns)
    numeric = {c for c, role in needed.items() if role in ("value", "time")}
    blocks = _parquet_blocks if fmt == "parquet" else _csv_blocks
    yield from blocks(path, cfg, needed, numeric)


def _parquet_blocks(path: Path, cfg: CustomParams, needed: dict[str, str], numeric: set[str]
                    ) -> Iterator[pd.DataFrame]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:  # empty, truncated (no footer) or not Parquet at all
        raise DataError(path, f"not a readable Parquet file ({exc}); is it truncated?") from None
    _check_columns(path, parquet.schema_arrow.names, needed)
    for name in numeric:
        kind = parquet.schema_arrow.field(name).type
        if not (str(kind).startswith(("int", "uint", "float", "double", "decimal"))):
            raise DataError(path, f"column {name!r} holds {kind}, not numbers")
    line = 1
    try:
        for batch in parquet.iter_batches(batch_size=cfg.chunk_rows, columns=list(needed)):
            frame = _typed(batch.to_pandas(), numeric)
            frame.index = pd.RangeIndex(line, line + len(frame), name="row")
            yield frame
            line += len(frame)
    except (pa.ArrowException, OSError) as exc:  # a damaged page behind an intact footer
        raise DataError(path, f"cannot read past this point ({exc}); is the file damaged?",
                        f"from row {line}") from None


def _csv_blocks(path: Path, cfg: CustomParams, needed: dict[str, str], numeric: set[str]
                ) -> Iterator[pd.DataFrame]:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    with open(path, encoding="utf-8-sig", errors="replace") as f:  # a leading byte-order mark is legal: skip it
        first = f.readline()
    if not first.strip():
        raise DataError(path, "the file is empty (no header line)", "line 1")
    header = [c.strip().strip('"') for c in first.rstrip("\r\n").split(",")]
    _check_columns(path, header, needed)
    types = {c: pa.float64() if c in numeric else pa.string() for c in needed}
    line = 2
    try:  # opening reads the first block already, so it can fail on a bad value too
        reader = pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=max(1 << 16, cfg.chunk_rows * 60)),
                                convert_options=pacsv.ConvertOptions(include_columns=list(needed), column_types=types))
        for batch in reader:
            frame = _typed(batch.to_pandas(), numeric)
            frame.index = pd.RangeIndex(line, line + len(frame), name="line")
            yield frame
            line += len(frame)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise _locate_csv_error(path, header, numeric, line) or DataError(path, f"unreadable: {exc}") from None


def _locate_csv_error(path: Path, header: list[str], numeric: set[str], from_line: int) -> DataError | None:
    """The first line at or after `from_line` with a wrong field count or a non-number in a numeric column."""
    import csv

    index = {c: header.index(c) for c in numeric}
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
        for number, fields in enumerate(csv.reader(f), start=1):
            if number < max(from_line, 2):
                continue
            if len(fields) != len(header):
                return DataError(path, f"expected {len(header)} fields as in the header, got {len(fields)}",
                                 f"line {number}")
            for column, i in index.items():
                value = fields[i].strip()
                if value == "":
                    continue  # missing: the not-null expectation reports it with its line
                try:
                    float(value)
                except ValueError:
                    return DataError(path, f"column {column!r}: {value[:40]!r} is not a number", f"line {number}")
    return None


def _typed(frame: pd.DataFrame, numeric: set[str]) -> pd.DataFrame:
    for column in frame.columns:
        if column in numeric:
            frame[column] = frame[column].astype(np.float64)
        else:  # ids and labels: text, whatever the file stored them as (an int user id, a categorical)
            text = frame[column].astype("string").str.strip()
            frame[column] = text.mask(text == "")  # an empty cell is a missing value
    return frame


def _validate_block(validator: Validator, path: Path, block: pd.DataFrame, cfg: CustomParams, ex) -> None:
    """Every row of the block: a user, every axis present and, in physical units, physically possible."""
    E = validator.expectations
    suite = [E.ExpectColumnValuesToNotBeNull(column=cfg.columns.user)]
    for sensor in cfg.sensors.values():
        limit = _limit(sensor.unit, ex)
        for column in sensor.columns:
            suite.append(E.ExpectColumnValuesToNotBeNull(column=column))
            if limit is not None:
                suite.append(E.ExpectColumnValuesToBeBetween(column=column, min_value=-limit, max_value=limit))
    if cfg.columns.time:
        suite.append(E.ExpectColumnValuesToNotBeNull(column=cfg.columns.time))
    validator.validate("raw_rows", str(path), block, suite)


def _limit(unit: str, ex) -> float | None:
    kind = UNIT_LIMITS[unit]
    if kind is None:
        return None  # standardised or unknown units: only presence can be checked
    return {"accel": ex.accel_abs_max, "accel_g": ex.accel_abs_max / 9.80665, "gyro": ex.gyro_abs_max,
            "gyro_deg": ex.gyro_abs_max * 180 / np.pi}[kind]


def _cut_block(block: pd.DataFrame, cfg: CustomParams, value_columns: list[str], length: int, stride: int,
               carry: _Carry, counts: _Counts) -> tuple[np.ndarray, dict]:
    """Samples of every run in this block (with the carried rows of the run left open by the last one).

    A run is a stretch of rows of one user, session, device and label without a time gap. The run still
    open at the block's end is carried: its rows from its next sample's first row go in front of the next
    block if that block goes on with the same run.
    """
    c = cfg.columns
    label = block[c.label].fillna("")
    unlabelled = (label == "").to_numpy()
    if cfg.labels:
        unlabelled |= ~label.isin(list(cfg.labels)).to_numpy()
    counts.unlabelled += int(unlabelled.sum())
    for name in pd.unique(label[~unlabelled]):
        counts.label_ids.setdefault(str(name), len(counts.label_ids))
    key = block[c.user].fillna("")
    for role in ("session", "device"):
        if getattr(c, role):
            key = key.str.cat(block[getattr(c, role)].fillna(""), sep="\x1f")
    key = key.str.cat(label, sep="\x1f").to_numpy(dtype=object)
    key[unlabelled] = ""
    breaks = _time_breaks(block, cfg, carry)
    frame = block
    continues = carry.key is not None and len(key) and key[0] == carry.key and not breaks[0]
    skip = carry.skip if continues else 0
    if continues and carry.frame is not None and len(carry.frame):
        frame = pd.concat([carry.frame, block])
        key = np.concatenate([np.full(len(carry.frame), carry.key, dtype=object), key])
        breaks = np.concatenate([np.zeros(len(carry.frame), dtype=bool), breaks])
    starts, stops = run_bounds(key, breaks)
    offsets = np.zeros(len(starts), dtype=np.int64)
    offsets[:1] = skip
    labelled = key[starts] != ""
    starts, stops, offsets = starts[labelled], stops[labelled], offsets[labelled]
    first = sample_starts(starts + offsets, stops, length, stride)
    _carry_open_run(carry, frame, key, starts, stops, offsets, first, stride)
    if len(first) == 0:
        return np.empty((0, len(value_columns), length), np.float32), {}
    values = frame[value_columns].to_numpy(np.float64)
    rows = frame.iloc[first]
    meta = {"label": np.array([counts.label_ids[t] for t in rows[c.label]], dtype=np.int16),
            "user": rows[c.user].to_numpy(dtype=str),
            "model": np.full(len(first), "custom"),
            "device": rows[c.device].to_numpy(dtype=str) if c.device else np.full(len(first), "custom"),
            "source": np.full(len(first), "custom"),
            "first_line": rows.index.to_numpy(np.int64)}
    return take_samples(values, first, length), meta


def _carry_open_run(carry: _Carry, frame: pd.DataFrame, key: np.ndarray, starts, stops, offsets, first,
                    stride: int) -> None:
    n = len(frame)
    carry.frame, carry.key, carry.skip = None, None, 0
    if not len(starts) or stops[-1] != n:
        return  # the block ends outside a labelled run: nothing goes on
    mine = first[first >= starts[-1]]
    resume = int(mine[-1] + stride) if len(mine) else int(starts[-1] + offsets[-1])
    carry.key = key[-1]
    if resume <= n:
        carry.frame = frame.iloc[resume:]
    else:
        carry.skip = resume - n


def _time_breaks(block: pd.DataFrame, cfg: CustomParams, carry: _Carry) -> np.ndarray:
    """True where a row starts a new run because of its time: a gap of more than two sample periods."""
    breaks = np.zeros(len(block), dtype=bool)
    if not cfg.columns.time or len(block) == 0:
        return breaks
    t = block[cfg.columns.time].to_numpy(np.float64) * cfg.time_unit_s
    previous = np.concatenate(([carry.last_time if carry.last_time is not None else t[0]], t[:-1]))
    step = t - previous
    same = np.ones(len(block), dtype=bool)
    if cfg.columns.session:  # a new recording may start at any time
        session = block[cfg.columns.session].fillna("").to_numpy(dtype=object)
        same[0] = carry.last_session is None or session[0] == carry.last_session
        same[1:] = session[1:] == session[:-1]
        carry.last_session = session[-1]
    back = np.flatnonzero((step < 0) & same)
    if len(back):
        i = int(back[0])
        raise DataError(cfg.path, f"{cfg.columns.time!r} goes back by {-step[i]:.6g} s within a recording (rows "
                        "must be in time order; give each recording its own session id)",
                        f"{block.index.name} {block.index[i]}")
    breaks |= step > 2.0 / cfg.sample_rate_hz
    carry.last_time = float(t[-1])
    return breaks
