"""`ingest` for the HHAR raw CSVs: download if asked, stream, validate every block, resample, window.

Pass 1 reads each sensor's files block by block; every block is validated
(Great Expectations) before its rows are resampled onto the interval grid and
spilled to disk. Pass 2 pairs the sensors per device and cuts DeepSense
samples into the WindowWriter. Memory is bounded by one block, whatever the
file size.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from components.artifacts.atomic import WindowWriter
from components.config import Params
from components.data import hhar_csv, hhar_raw
from components.data.download import download, extract_zip
from components.data.expectations import ValidationFailed, Validator
from components.data.window_sets import HHAR_LABELS
from components.settings.ingest import IngestParams

log = logging.getLogger(__name__)
SENSORS = ("accelerometer", "gyroscope")
_VALUE_COLUMNS = ("Creation_Time", "x", "y", "z", "User", "Device", "gt", "time_step_ms")


def _raw_root(params: Params) -> Path:
    cfg = params.ingest
    if not cfg.download_url:
        return params.data_root()
    directory = params.path(cfg.download_dir)
    archive = download(cfg.download_url, cfg.download_sha256, directory)
    target = directory / f"{archive.stem}-{cfg.download_sha256[:12]}"
    return target if target.exists() else extract_zip(archive, target)


@dataclass
class TimeOrder:
    """Rows of a file that step back in time from the previous row of their device.

    The resampler sorts every block by time, so such rows are put back in order (or, if their interval
    was already emitted, dropped and counted as late): a repair the log and the data card must show.
    """

    rows: int = 0
    blocks: int = 0  # blocks holding at least one such row
    blocks_read: int = 0
    largest_backstep_ms: float = 0.0
    rows_beyond_tolerance: int = 0  # stepping back by more than max_time_backstep_ms (the expectation counts them)

    def add(self, steps_ms: np.ndarray, tolerance_ms: float) -> None:
        back = steps_ms[steps_ms < 0]
        self.blocks_read += 1
        if len(back):
            self.rows += len(back)
            self.blocks += 1
            self.largest_backstep_ms = max(self.largest_backstep_ms, float(-back.min()))
            self.rows_beyond_tolerance += int((back < -tolerance_ms).sum())

    def card(self) -> dict:
        return {"rows_re_sorted": self.rows, "blocks": self.blocks, "blocks_read": self.blocks_read,
                "largest_backstep_ms": round(self.largest_backstep_ms, 3),
                "rows_beyond_tolerance": self.rows_beyond_tolerance}

    def warn(self, path: Path, tolerance_ms: float) -> None:
        if self.rows:
            log.warning("%s: %d row(s) in %d of %d block(s) step back in time from the previous row of their device "
                        "(largest backstep %.3f ms; %d beyond the %g ms tolerance); re-sorted by Creation_Time "
                        "before resampling: see time_order (and resampling.rows_late) in the data card",
                        path, self.rows, self.blocks, self.blocks_read, self.largest_backstep_ms,
                        self.rows_beyond_tolerance, tolerance_ms)


@dataclass(frozen=True)
class RawIngest:
    label_names: tuple[str, ...]
    sources: dict[str, str]  # file (as the data card shows it) -> sha256
    notes: list[str]
    card_stats: dict  # rows per file, sampling rates seen, resampling counts
    stream_s: float  # read + validate + resample + window + write


def ingest_hhar_raw(params: Params, writer: WindowWriter, validator: Validator) -> RawIngest:
    cfg, raw = params.ingest, params.ingest.hhar_raw
    root = _raw_root(params)
    label_names = HHAR_LABELS + (("null",) if raw.null_label == "keep" else ())
    label_ids = {name: i for i, name in enumerate(label_names)}
    groups = hhar_raw.GroupIndex()
    sources: dict[str, str] = {}
    notes: list[str] = []
    rows_per_file: dict[str, int] = {}
    time_order: dict[str, dict] = {}
    tolerance_ms = cfg.expectations.max_time_backstep_ms
    block_bytes = max(1 << 16, raw.chunk_rows * 100)  # ~80-110 bytes of text per row
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ingest-spill-", dir=writer.directory.parent) as spill_root:
        spills, resamplers = [], []
        for sensor, files in (("accelerometer", raw.accelerometer_files), ("gyroscope", raw.gyroscope_files)):
            spill = hhar_raw.IntervalSpill(Path(spill_root) / sensor, raw.points_per_interval)
            resampler = hhar_raw.SensorResampler(spill, groups, label_ids, raw.interval_s,
                                                 raw.points_per_interval, raw.min_rows_per_interval)
            suite, schema_suite = _raw_row_suite(validator, sensor, cfg)
            for rel in files:
                path = root / rel
                info = hhar_csv.CsvInfo(path)
                last_time: dict[str, float] = {}
                class_rows: dict[str, int] = {}
                order = TimeOrder()
                for i, frame in enumerate(_progress(hhar_csv.iter_blocks(path, block_bytes, info), path)):
                    frame["time_step_ms"] = _time_steps(frame, last_time)
                    order.add(frame["time_step_ms"].to_numpy(), tolerance_ms)
                    # The reader fixes the columns and their types for the whole file: check them on its
                    # first block; later blocks only carry the columns the value expectations read.
                    checked = frame if i == 0 else frame[list(_VALUE_COLUMNS)]
                    validator.validate(f"raw_rows_{sensor}", str(path), checked, suite + (schema_suite if i == 0 else []))
                    for name, n in frame["gt"].value_counts().items():
                        class_rows[str(name)] = class_rows.get(str(name), 0) + int(n)
                    resampler.add(frame)
                _validate_class_rows(validator, sensor, path, class_rows, cfg)
                sources[_shown(path, root)] = info.sha256
                rows_per_file[_shown(path, root)] = info.rows
                order.warn(path, tolerance_ms)
                if order.rows:
                    time_order[_shown(path, root)] = order.card()
                notes += [f"{path.name}: {n}" for n in info.notes]
            resampler.finish()
            spills.append(spill)
            resamplers.append(resampler)
        if not validator.report.success:
            raise ValidationFailed(validator.report)
        for block in hhar_raw.iter_windows(spills, raw.intervals, raw.window_stride_intervals, raw.interval_s):
            user, model, device = groups.keys[block.group]
            n = len(block.label)
            writer.add(block.signal, {"label": block.label, "user": np.full(n, user), "model": np.full(n, model),
                                      "device": np.full(n, device), "source": np.full(n, "hhar_raw"),
                                      "start_s": block.start_s})
    card_stats = {
        "rows_per_file": rows_per_file,
        "sampling_rate_hz": _rates(groups, resamplers, raw.interval_s),
        "resampling": {s: {k: v for k, v in vars(r.stats).items() if k != "rows_per_interval"}
                       for s, r in zip(SENSORS, resamplers)},
        "time_order": time_order,
    }
    return RawIngest(label_names, sources, notes, card_stats, round(time.perf_counter() - started, 3))


def _shown(path: Path, root: Path) -> str:
    """A path as the data card shows it: relative to the data root when it is inside it."""
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def _progress(blocks, path: Path):
    """Log a line per block: rows so far and rows per second (the long part of a full-size run)."""
    started, rows = time.perf_counter(), 0
    for i, frame in enumerate(blocks, start=1):
        rows += len(frame)
        yield frame
        rate = rows / max(time.perf_counter() - started, 1e-9)
        log.info("%s: block %d, %d rows, %.0f rows/s", path.name, i, rows, rate)


def _time_steps(frame: pd.DataFrame, last_time: dict[str, float]) -> np.ndarray:
    """Creation_Time step (ms) from the previous row of the same device, in file order."""
    t = frame["Creation_Time"].to_numpy(np.float64)
    device = frame["Device"].cat
    codes = device.codes.to_numpy()
    steps = np.zeros(len(t))
    for code, name in enumerate(device.categories):
        idx = np.flatnonzero(codes == code)
        if len(idx) == 0:
            continue
        prev = np.concatenate(([last_time.get(name, t[idx[0]])], t[idx[:-1]]))
        steps[idx] = (t[idx] - prev) / 1e6
        last_time[name] = t[idx[-1]]
    return steps


def _rates(groups: hhar_raw.GroupIndex, resamplers, interval_s: float) -> dict[str, dict[str, float]]:
    """Median rows per second within recorded intervals, per device and sensor."""
    rates: dict[str, dict[str, float]] = {}
    for sensor, r in zip(SENSORS, resamplers):
        for g, counts in r.stats.rows_per_interval.items():
            if counts:
                device = "/".join(groups.keys[g][1:])
                rates.setdefault(device, {})[sensor] = round(float(np.median(counts)) / interval_s, 1)
    return rates


def _raw_row_suite(validator: Validator, sensor: str, cfg: IngestParams) -> tuple[list, list]:
    """(expectations for every block, schema expectations for a file's first block)."""
    E, ex = validator.expectations, cfg.expectations
    limit = ex.accel_abs_max if sensor == "accelerometer" else ex.gyro_abs_max
    schema = [E.ExpectTableColumnsToMatchSet(column_set=list(hhar_csv.COLUMNS) + ["time_step_ms"], exact_match=True)]
    schema += [E.ExpectColumnValuesToBeInTypeList(column=c, type_list=["float64", "float"])
               for c in ("x", "y", "z", "Creation_Time")]
    suite = [E.ExpectColumnValuesToNotBeNull(column=c) for c in ("x", "y", "z", "Creation_Time")]
    suite += [E.ExpectColumnValuesToBeBetween(column=c, min_value=-limit, max_value=limit) for c in ("x", "y", "z")]
    suite += [
        E.ExpectColumnValuesToBeInSet(column="gt", value_set=list(HHAR_LABELS) + ["null"]),
        E.ExpectColumnValuesToNotBeNull(column="User"),
        E.ExpectColumnValuesToNotBeNull(column="Device"),
        # Real HHAR files have rare clock steps backwards and watch rows logged in reversed
        # bursts; the resampler sorts by time (TimeOrder logs and cards it), so only a file that is mostly
        # out of order fails.
        E.ExpectColumnValuesToBeBetween(column="time_step_ms", min_value=-ex.max_time_backstep_ms,
                                        mostly=ex.time_monotonic_mostly),
    ]
    return suite, schema


def _validate_class_rows(validator: Validator, sensor: str, path: Path, class_rows: dict, cfg: IngestParams) -> None:
    frame = pd.DataFrame({"rows": pd.Series(class_rows, dtype="int64")})
    frame.index.name = "label"
    E = validator.expectations
    validator.validate(f"raw_rows_{sensor}", str(path), frame, [
        E.ExpectColumnValuesToBeBetween(column="rows", min_value=cfg.expectations.min_rows_per_class),
    ])
