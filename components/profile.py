"""Stage `profile`: measure layer latency on every device of the pool.

For each device: sample the configurations (seeded), skip those already in
the device's append-only log, convert and time the rest in worker processes
(or compute them, for the microcontroller model), then write
`profile.parquet`, the noise figures and one plot per device, and log them to
MLflow. A device that fails more than `max_failed_share` of its
configurations fails with a clear message after its table is written; other
devices are separate calls (separate Airflow tasks), so they still finish.

A timed device times every configuration beside the reference model (the
baseline DeepSense, `sampler.reference_item`), whose own row is in the table
too: each row's `ratio` to it holds across the machine's speed phases
(devices/timing.py), and fit_latency fits on it.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from components.artifacts.atomic import write_text_atomic
from components.config import ConfigError, Params
from components.devices.base import Backend, get_backend
from components.devices.pool import Device, chosen
from components.profiling.items import Item
from components.profiling.runner import TimedProfiler, computed_rows, fingerprint
from components.profiling.sampler import reference_item, sample_items, sampler_params
from components.profiling.table import ProfileLog

if TYPE_CHECKING:
    from components.stages import Place

STAGE = "profile"
log = logging.getLogger(__name__)


class ProfileFailed(RuntimeError):
    """A device failed more of its configurations than the params allow."""


@dataclass(frozen=True)
class ProfileResult:
    device: str
    table_path: Path
    metrics: dict
    run_id: str


def run(params: Params, device_name: str, *, out: Place, pipeline_key: str | None = None) -> ProfileResult:
    """Profile one device into `out` (the table and its append-only log in `out.data`)."""
    (device,) = chosen(params, [device_name])
    folder, reports = Path(out.data), Path(out.report)
    backend = get_backend(device.runtime)
    backend.check_device(device)
    items = sample_items(sampler_params(params), params.train)
    reference = reference_item(params) if backend.timed else None  # a computed device has no speed phases
    if reference is not None:  # its own row too: it is a whole model
        items = [reference, *(item for item in items if item.key != reference.key)]
    return _profile(params, device, backend, items, folder, reports, pipeline_key, reference)


def _profile(params: Params, device: Device, backend: Backend, items: list[Item], out: Path, reports: Path,
             pipeline_key: str | None, reference: Item | None) -> ProfileResult:
    from components.tracking import runs as tracking

    version = _version(backend)
    profile_log = ProfileLog(out, fingerprint(params, device, version, reference))
    done = profile_log.open()
    todo = [item for item in items if item.key not in done]
    log.info("%s (%s, %s): %d configurations, %d already in the log, %d to profile", device.name,
             device.runtime, "timed" if backend.timed else "computed, not timed", len(items),
             len(items) - len(todo), len(todo))
    with tracking.stage_run(params, STAGE, pipeline_key, device=device.name) as mlrun:
        mlrun.log_params({"profile": params.profile.model_dump(), "device": device.to_dict()})
        start = time.perf_counter()
        _profile_items(params, device, backend, version, todo, out, profile_log, reference)
        wall_s = time.perf_counter() - start
        table_path = profile_log.write_table([item.key for item in items])
        rows = _read_rows(table_path)
        metrics = noise_metrics(rows, {item.key for item in todo}, wall_s) | {
            "device": device.name, "runtime": device.runtime, "method": "timed" if backend.timed else "computed"}
        reports.mkdir(parents=True, exist_ok=True)
        write_text_atomic(reports / "metrics.json", json.dumps(metrics, indent=2))
        from components.profiling.plots import plot_device

        plots = plot_device(rows, device, reports)
        mlrun.set_tags({"method": metrics["method"], "runtime": device.runtime})
        mlrun.log_metrics({k: v for k, v in metrics.items() if isinstance(v, (int, float)) and v == v})
        for path in (table_path, reports / "metrics.json", *plots):
            mlrun.log_artifact(path, f"profile/{device.name}")
        _check_failures(device, metrics, params.profile.max_failed_share, rows)
        return ProfileResult(device.name, table_path, metrics, mlrun.run_id)


def _version(backend: Backend) -> str:
    try:
        return backend.version()
    except ImportError as exc:
        raise ConfigError(f"runtime {backend.runtime}: not installed ({exc})") from exc


def _profile_items(params: Params, device: Device, backend: Backend, version: str, todo: list[Item], out: Path,
                   profile_log: ProfileLog, reference: Item | None) -> None:
    if backend.timed:
        rows = TimedProfiler(device, backend, params.profile, out / "work", version, reference).rows(todo)
    else:
        rows = computed_rows(todo, device, backend)
    pending: list[dict] = []
    last_report = time.perf_counter()
    try:
        for i, row in enumerate(rows, start=1):
            pending.append(row)
            if len(pending) >= params.profile.flush_rows:
                profile_log.append(pending)
                pending = []
            if row["status"] != "ok":
                log.warning("%s: %s %s failed at %s: %s", device.name, row["kind"], row["config_id"],
                            row["failed_step"], row["error"])
            if time.perf_counter() - last_report > 5 or i == len(todo):
                log.info("%s: %d/%d profiled (last: %s, %s)", device.name, i, len(todo), row["kind"], _short(row))
                last_report = time.perf_counter()
    finally:
        profile_log.append(pending)  # an interrupted run keeps every finished row


def _short(row: dict) -> str:
    if row["status"] != "ok":
        return "failed"
    return f"{row['latency_ms']:.4g} ms" + (" computed" if row["method"] == "computed" else "")


def _read_rows(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def noise_metrics(rows: list[dict], measured_now: set[str], wall_s: float) -> dict:
    """Counts, failures, noise (IQR / median) and the profiling overhead of this run."""
    ok = [r for r in rows if r["status"] == "ok"]
    failed = len(rows) - len(ok)
    now = [r for r in ok if r["config_id"] in measured_now]
    timed_s = sum(r["timed_s"] or 0.0 for r in now)
    rel_iqr = sorted(r["iqr_ms"] / r["latency_ms"] for r in ok if r.get("iqr_ms") is not None and r["latency_ms"])
    metrics = {
        "configs": len(rows), "configs_ok": len(ok), "configs_failed": failed,
        "failed_share": failed / len(rows) if rows else 0.0,
        "profiled_this_run": len([r for r in rows if r["config_id"] in measured_now]),
        "wall_s": wall_s, "timed_s": timed_s,
        "overhead_ratio": wall_s / timed_s if timed_s > 0 else float("nan"),
    }
    if rel_iqr:
        metrics |= {"median_relative_iqr": statistics.median(rel_iqr),
                    "p90_relative_iqr": rel_iqr[int(0.9 * (len(rel_iqr) - 1))],
                    "unstable_share": sum(1 for r in ok if r["stable"] is False) / len(ok),
                    "median_repeats": statistics.median(r["repeats"] for r in ok)}
    for kind in sorted({r["kind"] for r in rows}):
        metrics[f"configs_{kind}"] = sum(1 for r in ok if r["kind"] == kind)
    return metrics | ratio_metrics(ok)


def ratio_metrics(ok: list[dict]) -> dict:
    """How many rows carry a ratio to the reference, its noise (IQR / median) and the reference's time."""
    with_ratio = [r for r in ok if r.get("ratio")]
    if not with_ratio:
        return {"rows_with_ratio": 0}
    return {"rows_with_ratio": len(with_ratio),
            "median_relative_ratio_iqr": statistics.median((r["ratio_q3"] - r["ratio_q1"]) / r["ratio"]
                                                           for r in with_ratio),
            "reference_ms": statistics.median(r["reference_ms"] for r in with_ratio)}


def _check_failures(device: Device, metrics: dict, max_share: float, rows: list[dict]) -> None:
    if metrics["configs"] and metrics["failed_share"] > max_share:
        reasons = sorted({r["error"] for r in rows if r["status"] != "ok"})[:3]
        raise ProfileFailed(
            f"device {device.name}: {metrics['configs_failed']} of {metrics['configs']} configurations failed "
            f"({metrics['failed_share']:.0%} > profile.max_failed_share {max_share:.0%}); the table keeps them "
            f"with their reasons; first reasons: {'; '.join(reasons)}")


DEVICE_FAILURES = (ProfileFailed,)


def summary(result: ProfileResult) -> str:
    m = result.metrics
    noise = (f", median IQR/median {m['median_relative_iqr']:.1%}" if "median_relative_iqr" in m
             else ", computed from the graph, not timed")
    return (f"profile {result.device}: {m['configs_ok']}/{m['configs']} configurations ({m['method']}{noise}) "
            f"-> {result.table_path} (MLflow run {result.run_id})")
