"""The `ingest` stage: a published sensing data set -> validated, user-split DeepSense windows.

Reads one data set in its original format (params `ingest.dataset`): raw
rows (UCI HAPT, HHAR, a user's own CSV or Parquet) streamed and cut into
DeepSense samples, or published windows (UCI HAR, WISDM, HHAR_SA, UEA). It
checks the raw rows and the windows with Great Expectations, deals the users
into folds (leave-users-out), and writes into `ingest.output_dir`, all or
nothing:

    signal.npy       float32 [N, sensors, axes, time]      resampled time domain
    x.npy            float32 [N, T, sensors, axes, 2, F]   DeepSense interval spectra
    windows.parquet  one row per window: label, label_name, user, model, device, split, fold, ...
    split.json       the folds of users, which users are held out, and why
    data_card.json   counts per user/device/label, sampling rates, sources, notes (+ data_card.md)
    validation.json  every expectation checked and its outcome

A failed validation writes no output; its report goes to
`<report_dir>/validation_failed.json` and to MLflow.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from components.artifacts.atomic import WindowWriter, atomic_directory, write_text_atomic
from components.config import Params
from components.data import custom, hhar_ingest, uci_hapt, window_sets
from components.data.card import build_card, card_markdown, split_by_user
from components.data.deepsense import FEATURE_LAYOUT, SIGNAL_LAYOUT
from components.data.errors import DataError
from components.data.expectations import ValidationFailed, Validator
from components.data.window_sets import WindowSet
from components.data.windows import load_windows
from components.settings.ingest import IngestParams
from components.tracking import runs as tracking

if TYPE_CHECKING:
    from components.stages import Place

log = logging.getLogger(__name__)
STAGE = "ingest"


@dataclass(frozen=True)
class IngestResult:
    output_dir: Path
    windows: int
    data_hash: str  # sha256 over the input files' sha256s
    run_id: str


def run(params: Params, *, out: Place, pipeline_key: str | None = None) -> IngestResult:
    """Ingest the configured data set into `out`; return where the windows were written."""
    cfg = params.ingest
    output_dir, report_dir = Path(out.data), Path(out.report)
    with tracking.stage_run(params, STAGE, pipeline_key) as mlrun:
        mlrun.log_params(params.to_dict() | {"output_dir": str(output_dir)})
        started = time.perf_counter()
        validator = Validator(cfg.expectations.example_rows)
        try:
            with atomic_directory(output_dir, sealed=True) as staging:
                card, timings = _ingest_into(params, staging, validator)
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
        metrics = _metrics(card)  # deterministic: DVC's metrics file stays the same when the data does
        timings = _timings(card, timings, seconds)
        write_text_atomic(report_dir / "metrics.json", json.dumps(metrics, indent=2, sort_keys=True))
        write_text_atomic(report_dir / "timings.json", json.dumps(timings, indent=2, sort_keys=True))
        (report_dir / "validation_failed.json").unlink(missing_ok=True)
        mlrun.log_metrics(metrics | timings)
        for name in ("data_card.json", "data_card.md", "validation.json", "split.json"):
            mlrun.log_artifact(output_dir / name, "ingest")
        # the windows it wrote, as the dataset the later stages' runs declare as their input
        mlrun.log_windows_input(load_windows(output_dir, verify=False), "produced", ingest_run_id=mlrun.run_id)
        log.info("ingest: %d windows (%s) in %.1f s -> %s", card["windows"], cfg.dataset, seconds, output_dir)
        return IngestResult(output_dir, card["windows"], data_hash, mlrun.run_id)


def _ingest_into(params: Params, staging: Path, validator: Validator) -> tuple[dict, dict]:
    """Write every output into `staging`; return the data card and the timings of the work."""
    cfg = params.ingest
    if cfg.dataset in RAW_LOADERS:
        sensors, units, rate, intervals = raw_layout(params)
        writer = WindowWriter(staging, intervals, sensors)
        try:
            raw = RAW_LOADERS[cfg.dataset](params, writer, validator)
        finally:
            meta = writer.close()
        label_names, sources, notes, stats = raw.label_names, raw.sources, raw.notes, raw.card_stats
        timings = {"stream_s": raw.stream_s}
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
        label_names, sources, units, rate, notes = ws.label_names, ws.sources, ws.units, ws.sample_rate_hz, ws.notes
        stats, timings = {}, {}
    if meta.empty:
        raise DataError(params.data_root(), f"{cfg.dataset}: no complete window could be cut from the input")
    meta["label_name"] = np.asarray(label_names)[meta["label"].to_numpy()]
    _validate_windows(meta, label_names, sensors, units, cfg, validator)
    split, fold, split_info = split_by_user(meta, cfg.split)
    meta["split"], meta["fold"] = split, fold
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
    return card, timings


RAW_LOADERS = {"hhar_raw": hhar_ingest.ingest_hhar_raw, "uci_hapt": uci_hapt.ingest_uci_hapt,
               "custom": custom.ingest_custom}


def raw_layout(params: Params) -> tuple[tuple[str, ...], tuple[str, ...], float | None, int]:
    """(sensors, units, nominal sample rate, intervals per window) of a raw-row data set, from params alone."""
    cfg = params.ingest
    if cfg.dataset == "hhar_raw":
        return hhar_ingest.SENSORS, ("m/s^2", "rad/s"), None, cfg.hhar_raw.intervals
    if cfg.dataset == "uci_hapt":
        return uci_hapt.SENSORS, uci_hapt.UNITS, uci_hapt.SAMPLE_RATE_HZ, cfg.uci_hapt.intervals
    c = cfg.custom
    return tuple(c.sensors), tuple(s.unit for s in c.sensors.values()), c.sample_rate_hz, c.intervals


def _window_intervals(cfg: IngestParams) -> int:
    return {"hhar_sa": cfg.hhar_sa, "uci_har": cfg.uci_har, "wisdm": cfg.wisdm,
            "basic_motions": cfg.basic_motions}[cfg.dataset].intervals


def _load_window_set(params: Params) -> WindowSet:
    cfg, root = params.ingest, params.data_root()
    if cfg.dataset == "hhar_sa":
        return window_sets.load_hhar_sa(root / cfg.hhar_sa.dir)
    if cfg.dataset == "uci_har":
        return window_sets.load_uci_har(root / cfg.uci_har.dir, cfg.uci_har.sensors)
    if cfg.dataset == "wisdm":
        return window_sets.load_wisdm(root / cfg.wisdm.dir)
    return window_sets.load_basic_motions(cfg.basic_motions.package)


def _meta_columns(ws: WindowSet, sl: slice) -> dict[str, np.ndarray]:
    cols = {"label": ws.label[sl], "user": ws.user[sl], "model": ws.model[sl], "device": ws.device[sl],
            "source": ws.source[sl]}
    if ws.published_split is not None:
        cols["published_split"] = ws.published_split[sl]
    return cols


# --- expectations ---------------------------------------------------------------------------

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
    if unit == "deg/s":
        return ex.gyro_abs_max * 180 / np.pi
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


def _metrics(card: dict) -> dict[str, float]:
    m = {"windows": card["windows"], "users": len(card["counts"]["user"])}
    m.update({f"rows_read.{Path(k).name}": v for k, v in card.get("rows_per_file", {}).items()})
    for kind in ("user", "device", "label", "split"):
        m.update({f"windows.{kind}.{k}": v for k, v in card["counts"][kind].items()})
    return m


def _timings(card: dict, timings: dict, seconds: float) -> dict[str, float]:
    """Wall time; for raw rows also the streaming part alone (read, validate, resample, window, write)."""
    out = {"wall_time_s": round(seconds, 3)}
    if timings.get("stream_s"):
        out["stream_s"] = timings["stream_s"]
        out["rows_per_s"] = round(sum(card["rows_per_file"].values()) / max(timings["stream_s"], 1e-9))
    return out


def summary(result: IngestResult) -> str:
    return f"ingest: {result.windows} windows -> {result.output_dir} (MLflow run {result.run_id})"
