"""The `ingest` stage: a published sensing data set -> validated, user-split DeepSense windows.

Reads one data set in its original format (params `ingest.dataset`), checks
the raw rows and the windows with Great Expectations, splits by user
(leave-users-out), and writes into `ingest.output_dir`, all or nothing:

    signal.npy       float32 [N, sensors, axes, time]      resampled time domain
    x.npy            float32 [N, T, sensors, axes, 2, F]   DeepSense interval spectra
    windows.parquet  one row per window: label, label_name, user, model, device, split, ...
    split.json       which users are held out, and why
    data_card.json   counts per user/device/label, sampling rates, sources, notes (+ data_card.md)
    validation.json  every expectation checked and its outcome

A failed validation writes no output; its report goes to
`<report_dir>/validation_failed.json` and to MLflow.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from components import tracking
from components.config import IngestParams, Params
from components.data import hhar_csv, hhar_raw, window_sets
from components.data.card import build_card, card_markdown, split_by_user
from components.data.deepsense import FEATURE_LAYOUT, SIGNAL_LAYOUT
from components.data.download import download, extract_zip
from components.data.errors import DataError
from components.data.outputs import WindowWriter, atomic_directory, write_text_atomic
from components.validation import ValidationFailed, Validator
from components.data.window_sets import HHAR_LABELS, WindowSet

log = logging.getLogger(__name__)
STAGE = "ingest"
RAW_SENSORS = ("accelerometer", "gyroscope")
_VALUE_COLUMNS = ("Creation_Time", "x", "y", "z", "User", "Device", "gt", "time_step_ms")


@dataclass(frozen=True)
class IngestResult:
    output_dir: Path
    windows: int
    data_hash: str  # sha256 over the input files' sha256s
    run_id: str


def run(params: Params, output_dir: Path | None = None, pipeline_key: str | None = None) -> IngestResult:
    """Ingest the configured data set; return where the windows were written."""
    cfg = params.ingest
    output_dir = Path(output_dir) if output_dir else params.path(cfg.output_dir)
    report_dir = params.path(cfg.report_dir)
    with tracking.stage_run(params, STAGE, pipeline_key) as mlrun:
        mlrun.log_params({"ingest": params.to_dict()["ingest"], "output_dir": str(output_dir)})
        started = time.perf_counter()
        validator = Validator(cfg.expectations.example_rows)
        try:
            with atomic_directory(output_dir) as staging:
                card = _ingest_into(params, staging, validator)
                data_hash = card["data_hash"]
                mlrun.set_tags({"data_hash": data_hash, "dataset": cfg.dataset})
        except ValidationFailed as exc:
            path = report_dir / "validation_failed.json"
            write_text_atomic(path, exc.report.to_json())
            exc.report_path = str(path)
            mlrun.log_artifact(path)
            mlrun.log_metrics({"failed_expectations": len(exc.report.failures())})
            raise ValidationFailed(exc.report, str(path)) from None
        seconds = time.perf_counter() - started
        metrics = _metrics(card, seconds)
        write_text_atomic(report_dir / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True))
        (report_dir / "validation_failed.json").unlink(missing_ok=True)
        mlrun.log_metrics(metrics)
        for name in ("data_card.json", "data_card.md", "validation.json", "split.json"):
            mlrun.log_artifact(output_dir / name, "ingest")
        log.info("ingest: %d windows (%s) in %.1f s -> %s", card["windows"], cfg.dataset, seconds, output_dir)
        return IngestResult(output_dir, card["windows"], data_hash, mlrun.run_id)


def _ingest_into(params: Params, staging: Path, validator: Validator) -> dict:
    cfg = params.ingest
    if cfg.dataset == "hhar_raw":
        sensors, intervals = RAW_SENSORS, cfg.hhar_raw.intervals
        writer = WindowWriter(staging, intervals, sensors)
        try:
            label_names, sources, stats = _ingest_hhar_raw(params, writer, validator)
        finally:
            meta = writer.close()
        units, rate, notes = ("m/s^2", "rad/s"), None, stats.pop("notes")
    else:
        ws = _load_window_set(params)
        sensors, intervals = ws.sensors, _window_intervals(cfg)
        _validate_window_rows(ws, cfg, validator)
        writer = WindowWriter(staging, intervals, sensors)
        try:
            for lo in range(0, len(ws.label), 4096):
                sl = slice(lo, lo + 4096)
                writer.add(ws.signal[sl], _meta_columns(ws, sl))
        finally:
            meta = writer.close()
        label_names, sources, units, rate, notes, stats = ws.label_names, ws.sources, ws.units, ws.sample_rate_hz, ws.notes, {}
    if meta.empty:
        raise DataError(params.data_root(), f"{cfg.dataset}: no complete window could be cut from the input")
    meta["label_name"] = np.asarray(label_names)[meta["label"].to_numpy()]
    _validate_windows(meta, label_names, sensors, units, cfg, validator)
    split, split_info = split_by_user(meta, cfg.split)
    meta["split"] = split
    data_hash = hashlib.sha256("".join(sorted(sources.values())).encode()).hexdigest()
    card = build_card(
        dataset=cfg.dataset, meta=meta, label_names=label_names, sensors=sensors, units=units,
        sources=sources, notes=notes, stats=stats, split_info=split_info, data_hash=data_hash,
        sample_rate_hz=rate, layouts={"x": FEATURE_LAYOUT, "signal": SIGNAL_LAYOUT}, intervals=intervals,
    )
    meta.to_parquet(staging / "windows.parquet")
    for name, payload in (("split.json", split_info), ("data_card.json", card)):
        (staging / name).write_text(json.dumps(payload, indent=2, default=str))
    (staging / "data_card.md").write_text(card_markdown(card))
    (staging / "validation.json").write_text(validator.report.to_json())
    return card


def _window_intervals(cfg: IngestParams) -> int:
    return {"hhar_sa": cfg.hhar_sa, "uci_har": cfg.uci_har, "basic_motions": cfg.basic_motions}[cfg.dataset].intervals


def _load_window_set(params: Params) -> WindowSet:
    cfg, root = params.ingest, params.data_root()
    if cfg.dataset == "hhar_sa":
        return window_sets.load_hhar_sa(root / cfg.hhar_sa.dir)
    if cfg.dataset == "uci_har":
        return window_sets.load_uci_har(root / cfg.uci_har.dir)
    return window_sets.load_basic_motions(cfg.basic_motions.package)


def _meta_columns(ws: WindowSet, sl: slice) -> dict[str, np.ndarray]:
    cols = {"label": ws.label[sl], "user": ws.user[sl], "model": ws.model[sl], "device": ws.device[sl],
            "source": ws.source[sl]}
    if ws.published_split is not None:
        cols["published_split"] = ws.published_split[sl]
    return cols


# --- HHAR raw CSVs ---------------------------------------------------------------------------

def _raw_root(params: Params) -> Path:
    cfg = params.ingest
    if not cfg.download_url:
        return params.data_root()
    directory = params.path(cfg.download_dir)
    archive = download(cfg.download_url, cfg.download_sha256, directory)
    target = directory / f"{archive.stem}-{cfg.download_sha256[:12]}"
    return target if target.exists() else extract_zip(archive, target)


def _ingest_hhar_raw(params: Params, writer: WindowWriter, validator: Validator):
    cfg, raw = params.ingest, params.ingest.hhar_raw
    root = _raw_root(params)
    label_names = HHAR_LABELS + (("null",) if raw.null_label == "keep" else ())
    label_ids = {name: i for i, name in enumerate(label_names)}
    groups = hhar_raw.GroupIndex()
    sources: dict[str, str] = {}
    notes: list[str] = []
    rows_per_file: dict[str, int] = {}
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
                for i, frame in enumerate(_progress(hhar_csv.iter_blocks(path, block_bytes, info), path)):
                    frame["time_step_ms"] = _time_steps(frame, last_time)
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
    stats = {"rows_per_file": rows_per_file, "notes": notes, "stream_s": round(time.perf_counter() - started, 3), "sampling_rate_hz": _rates(groups, resamplers, raw.interval_s),
             "resampling": {s: {k: v for k, v in vars(r.stats).items() if k != "rows_per_interval"}
                            for s, r in zip(RAW_SENSORS, resamplers)}}
    return label_names, sources, stats


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
    for sensor, r in zip(RAW_SENSORS, resamplers):
        for g, counts in r.stats.rows_per_interval.items():
            if counts:
                device = "/".join(groups.keys[g][1:])
                rates.setdefault(device, {})[sensor] = round(float(np.median(counts)) / interval_s, 1)
    return rates


# --- expectations ---------------------------------------------------------------------------

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
        # bursts; the resampler sorts by time, so only a file that is mostly out of order fails.
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


def _validate_window_rows(ws: WindowSet, cfg: IngestParams, validator: Validator) -> None:
    """The samples of published windows, one row per time step, per source file."""
    E = validator.expectations
    n, s, a, length = ws.signal.shape
    for source in np.unique(ws.source):
        sel = np.flatnonzero(ws.source == source)
        cols, suite = {}, []
        for i, sensor in enumerate(ws.sensors):
            limit = _physical_limit(sensor, ws.units[i], cfg)
            for j, axis in enumerate("xyz"[:a]):
                name = f"{sensor}_{axis}"
                cols[name] = ws.signal[sel, i, j, :].ravel()
                suite += [E.ExpectColumnValuesToNotBeNull(column=name),
                          E.ExpectColumnValuesToBeBetween(column=name, min_value=-limit, max_value=limit)]
        frame = pd.DataFrame(cols, index=pd.Index(np.repeat(sel, length), name="window"))
        validator.validate("raw_rows", str(source), frame, suite)
    if not validator.report.success:
        raise ValidationFailed(validator.report)


def _physical_limit(sensor: str, unit: str, cfg: IngestParams) -> float:
    ex = cfg.expectations
    if unit == "m/s^2":
        return ex.accel_abs_max
    if unit == "g":
        return ex.accel_abs_max / 9.80665
    if unit == "rad/s":
        return ex.gyro_abs_max
    return 1e6  # standardised or unknown units: only finiteness can be checked


def _validate_windows(meta: pd.DataFrame, label_names, sensors, units, cfg: IngestParams, validator: Validator) -> None:
    E, ex = validator.expectations, cfg.expectations
    suite = [
        E.ExpectColumnValuesToBeInSet(column="label", value_set=list(range(len(label_names)))),
        E.ExpectColumnValuesToNotBeNull(column="user"),
        E.ExpectColumnValuesToBeInSet(column="finite", value_set=[True]),
    ]
    for sensor, unit in zip(sensors, units):
        suite.append(E.ExpectColumnValuesToBeBetween(column=f"abs_max_{sensor}", min_value=0,
                                                     max_value=_physical_limit(sensor, unit, cfg)))
    validator.validate("windows", "windows", meta, suite)
    per_class = meta["label_name"].value_counts().reindex(label_names, fill_value=0).rename("windows").to_frame()
    per_class.index.name = "label"
    validator.validate("windows", "windows per class", per_class, [
        E.ExpectColumnValuesToBeBetween(column="windows", min_value=ex.min_windows_per_class),
    ])
    if not validator.report.success:
        raise ValidationFailed(validator.report)


def _metrics(card: dict, seconds: float) -> dict[str, float]:
    m = {"windows": card["windows"], "users": len(card["counts"]["user"]), "wall_time_s": round(seconds, 3)}
    m.update({f"rows_read.{Path(k).name}": v for k, v in card.get("rows_per_file", {}).items()})
    if card.get("stream_s"):  # raw rows: the streaming part alone (read, validate, resample, window, write)
        m["stream_s"] = card["stream_s"]
        m["rows_per_s"] = round(sum(card["rows_per_file"].values()) / max(card["stream_s"], 1e-9))
    for kind in ("user", "device", "label", "split"):
        m.update({f"windows.{kind}.{k}": v for k, v in card["counts"][kind].items()})
    return m
