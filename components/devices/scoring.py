"""Exported models run on a device and scored: what validate measures, and what benchmarks score users with.

Each model runs in a fresh worker process pinned to the device's cores (the
same worker `profile` times in, so a runtime that crashes fails that format,
not the caller), after its file's sha256 is checked; the models that ran are
then timed together, round-robin, with `profile`'s protocol. Accuracy and
macro-F1 are means over users with their intervals; a microcontroller's
latency, flash and SRAM are computed by its backend.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from components.config import ConfigError, Params
from components.devices.base import get_backend
from components.devices.energy import energy_per_inference, energy_ratio, metered

log = logging.getLogger(__name__)
MODELS = ("baseline", "compressed")


@dataclass(frozen=True)
class TestSet:
    x: np.ndarray
    y: np.ndarray
    users: np.ndarray  # the held-out user of each window
    classes: int


def host_runtime(device) -> tuple[str, int]:
    """The runtime and threads that run the device's exported files here (the device's backend says)."""
    return get_backend(device.runtime).host_runtime(device)


def formats_for(cfg, device) -> tuple[str, ...]:
    from components.devices.export import FORMATS

    key = device.runtime
    formats = tuple(cfg.formats.get(key, ()))
    if not formats:
        raise ConfigError(f"validate.formats has no entry for runtime {key!r} (device {device.name}); "
                          f"add one, e.g. `{key}: [onnx]` (known formats: {', '.join(FORMATS)})")
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ConfigError(f"validate.formats.{key}: unknown format(s) {unknown}; known: {', '.join(FORMATS)}")
    loadable = set(get_backend(host_runtime(device)[0]).formats)
    refused = [f for f in formats if f not in loadable]
    if refused:
        raise ConfigError(f"device {device.name}: runtime {key} cannot load {', '.join(refused)} "
                          f"(it loads: {', '.join(sorted(loadable)) or 'no exported file'}); "
                          f"change validate.formats.{key}")
    return formats


def export_models(model_dir: Path, formats, folder: Path, calibration: np.ndarray, timeout_s: float) -> dict:
    from components.devices.export import export

    files, failures = export(model_dir, formats, folder, calibration, timeout_s)
    for fmt, why in failures.items():
        log.warning("export failed: %s", why)
    return {"dir": folder, "files": files, "failed": failures}


def score_exported(params: Params, device, fmt: str, folders: dict[str, Path], x: np.ndarray, y: np.ndarray,
                   users: np.ndarray, classes: int) -> dict[str, dict]:
    """Run exported files on other windows, scored per user as validate scores them (no timing).

    `folders`: {name: an export folder} whose manifest names the `fmt` file,
    checked against its sha256 before the device's worker loads it. For
    scoring what a night validated on users it never saw
    (benchmarks/gate_errors.py).
    """
    from components.devices.export import read_manifest

    exports = {name: {"dir": Path(folder), "files": read_manifest(Path(folder)), "failed": {}}
               for name, folder in folders.items()}
    with tempfile.TemporaryDirectory(prefix="score-") as work:
        np.save(Path(work) / "test_windows.npy", np.ascontiguousarray(x, dtype=np.float32))
        ran = run_on_device(params, device, fmt, exports, Path(work), Path(work) / "logs", timed=False)
        return {name: score(ran[name], exports[name]["files"].get(fmt), y, users, None, classes,
                             params.train.bootstrap, params.validate.seed) for name in folders}


def run_on_device(params: Params, device, fmt: str, exports: dict, work: Path, logs: Path,
                   timed: bool = True) -> dict[str, dict]:
    """Each model's answer in format `fmt` from the device's worker processes (see `run_models`)."""
    return run_models(params, device, {name: (export, fmt) for name, export in exports.items()}, work, logs, timed)


def run_models(params: Params, device, models: dict[str, tuple[dict, str]], work: Path, logs: Path,
               timed: bool = True, predict: bool = True) -> dict[str, dict]:
    """Each model's answer from the device's worker processes: outputs, peak memory, timing, or what went wrong.

    `models`: {name: (an export (`export_models`), the format of it to run)},
    so one call may time different formats of different models together.
    Each model runs on the test windows (`work/test_windows.npy`) in a fresh
    worker (its peak memory is its own), then (`timed`) the models that ran
    are timed together in one more, round-robin, with the device's power
    meter where it has one. Without `predict`, only that timing.
    """
    from components.devices.worker import Worker, WorkerFailed

    runtime, threads = host_runtime(device)

    def call(request: dict, log_name: str) -> dict:
        worker = Worker("validate", runtime, threads, device.pinned_cpus(), logs / log_name)
        try:
            return worker.call(request | {"windows": str(work / "test_windows.npy"),
                                          "timing": params.profile.timing.model_dump()}, params.validate.run_timeout_s)
        except WorkerFailed as exc:
            return {"ok": False, "error": f"the {runtime} runtime process failed: {exc}"}
        finally:
            worker.close()

    answers: dict[str, dict] = {}
    ran = []
    for name, (export, fmt) in models.items():
        exported = export["files"].get(fmt)
        if exported is None:
            answers[name] = {"ok": False, "error": f"not exported: {export['failed'].get(fmt, 'unknown')}"}
            continue
        entry = {"path": str(export["dir"] / exported.file), "format": fmt, "sha256": exported.sha256,
                 "outputs": str(work / f"{name}.{fmt}.outputs.npy")}
        if not predict:
            answers[name] = {"ok": True}
            ran.append((name, entry))
            continue
        reply = call({"models": [entry], "time": False}, f"{fmt}.{name}.log")
        answer = reply["results"][0] if reply.get("ok") else {"ok": False, "error": reply["error"]}
        if answer["ok"]:
            answer["outputs"] = np.load(entry["outputs"])
            ran.append((name, entry))
        answers[name] = answer
    if ran and timed:
        meter = device.power.meter_spec() if device.power is not None else None
        formats = "+".join(sorted({entry["format"] for _, entry in ran}))
        reply = call({"models": [entry for _, entry in ran], "predict": False, "meter": meter},
                     f"{formats}.timing.log")
        if reply.get("meter_error"):
            log.info("%s: energy not measured (%s)", device.name, reply["meter_error"])
        for i, (name, _) in enumerate(ran):
            timed = reply["results"][i] if reply.get("ok") else {"ok": False, "error": reply["error"]}
            if timed.get("ok"):
                answers[name]["timing"] = timed["timing"]
                answers[name]["meter_error"] = reply.get("meter_error")
            else:
                answers[name] = {"ok": False, "error": f"ran, but timing failed: {timed['error']}"}
    return answers


def score(answer: dict, exported, y_test: np.ndarray, users: np.ndarray, torch_predicted: np.ndarray | None,
           classes: int, resamples: int, seed: int) -> dict:
    """Accuracy and macro-F1 as means over the held-out users (with 95 % intervals), per user, and pooled;
    agreement with the torch model's predictions where they are given."""
    from components.models.training import scores
    from components.stats.intervals import summary

    record = {"ok": bool(answer.get("ok")), "error": answer.get("error", "")}
    if exported is not None:
        record |= {"file": exported.file, "sha256": exported.sha256, "bytes": exported.bytes}
    if not record["ok"]:
        return record
    predicted = answer["outputs"].argmax(axis=1)
    s = scores(y_test, predicted, users, classes)
    over_users = summary(s["per_user"], resamples, seed)
    timing = answer.get("timing") or {}
    return record | {
        "accuracy": over_users["accuracy"]["mean"], "accuracy_ci": over_users["accuracy"],
        "macro_f1": over_users["macro_f1"]["mean"], "macro_f1_ci": over_users["macro_f1"],
        "accuracy_pooled": s["accuracy"], "macro_f1_pooled": s["macro_f1"],
        "per_user_accuracy": {u: v["accuracy"] for u, v in s["per_user"].items()},
        "per_user_macro_f1": {u: v["macro_f1"] for u, v in s["per_user"].items()},
        "agreement": float(np.mean(predicted == torch_predicted)) if torch_predicted is not None else None,
        "latency_ms": timing.get("latency_ms"), "latency_iqr_ms": timing.get("iqr_ms"),
        "latency_stable": timing.get("stable"), "latency_method": "timed",
        "peak_memory_bytes": answer.get("peak_memory_bytes"), "load_s": answer.get("load_s"),
        "metered": metered(answer),
        **({"graph": answer["graph"]} if "graph" in answer else {}),
    }


def add_predictions(by_format: dict, spec, device, latency_model) -> None:
    """The latency model's prediction beside each measurement; a microcontroller's figures are computed."""
    predicted = latency_model.predict_model(spec) if latency_model is not None else None
    backend = get_backend(device.runtime)
    for record in by_format.values():
        record["predicted_latency_ms"] = predicted
        if not backend.timed:  # computed from the graph by the device's backend
            from components.profiling.items import Item

            figures = backend.compute(Item(model=spec), device)
            record["host_latency_ms"] = record.get("latency_ms")
            record |= {"latency_ms": figures["latency_ms"], "latency_method": "computed",
                       "flash_bytes": record.get("bytes"), "macs": figures["macs"],
                       "peak_sram_bytes": (record.get("graph") or {}).get("peak_activation_bytes",
                                                                           figures["peak_sram_bytes"])}
        measured = record.get("latency_ms")
        record["latency_error"] = (abs(measured - predicted) / measured
                                   if measured and predicted is not None and record.get("ok") else None)
        if record.get("ok"):
            record |= energy_per_inference(device, measured, record.pop("metered", None) if backend.timed else None)


def add_ratios(results: dict) -> None:
    """The compressed model's predicted and measured latency (and its energy) as ratios to the baseline's, same
    format.

    Both models are timed together, round-robin, so the measured ratio
    cancels the machine's phase; the prediction is judged on it (the
    milliseconds stay beside it), as compress steers by ratios.
    """
    for fmt, comp in results["compressed"].items():
        base = results["baseline"].get(fmt, {})
        if comp.get("ok") and base.get("ok"):
            comp["energy_ratio"] = energy_ratio(comp, base)
        if comp.get("latency_method") == "computed" or not (comp.get("ok") and base.get("ok")):
            continue
        if comp.get("predicted_latency_ms") and base.get("predicted_latency_ms") and base.get("latency_ms"):
            comp["measured_ratio"] = comp["latency_ms"] / base["latency_ms"]
            comp["predicted_ratio"] = comp["predicted_latency_ms"] / base["predicted_latency_ms"]
            comp["latency_error"] = abs(comp["predicted_ratio"] - comp["measured_ratio"]) / comp["measured_ratio"]


