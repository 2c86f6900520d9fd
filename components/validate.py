"""Stage `validate`: the baseline and the compressed model, exported, run on the device, and gated.

For one device: export both models to the formats its runtime loads
(`validate.formats`, the first one is what gets deployed), each conversion in
a child process; then, in a worker process pinned to the device's cores (the
same worker `profile` times in, so a runtime that crashes fails that format,
not the stage), check each file's sha256, load it, run it on the held-out
users' test windows one window at a time, and time the two models together
with `profile`'s protocol. From the outputs: accuracy, macro-F1, agreement
with the torch model's own predictions, latency, peak memory and file size,
and the latency model's prediction for comparison. A microcontroller is
computed, not timed: its integer file (16x8) runs in LiteRT on this host for
accuracy, its flash is that file's size, its SRAM peak comes from the file's graph
(activations alive at once), and its latency from the analytic model.

The gates (`validate.gates`) decide on the compressed model in the deployed
format. The accuracy gate asks for "no loss" with evidence: the drop against
the baseline, paired user by user over the held-out users, must be small on
the mean *and* at the upper end of its 95 % interval. A model that misses
only that gate is retried once with compress's fallback (the structure one
step back along the search's path, at a looser aim); if the fallback passes,
it is what the report deploys, and the first try is kept in the report. The
report (JSON, Markdown, HTML) shows every gate with its numbers, pass or
fail, and every format. Failing gates are a result, not an error: the stage
ends normally and `register` leaves the model out, saying why.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from components.artifacts.atomic import write_text_atomic
from components.artifacts.seals import seal
from components.config import ConfigError, Params
from components.devices.base import get_backend
from components.reports.validate import MODELS, failed_gates_text, flat_metrics, write_report

if TYPE_CHECKING:
    from components.stages import Place

STAGE = "validate"
# compress's folder for its fallback model (beside model/; compress.FALLBACK_DIR, no stage imports another),
# and validate's for the fallback's exported files
FALLBACK_DIR = "fallback"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ValidateResult:
    device: str
    report_path: Path
    report: dict
    run_id: str

    @property
    def passed(self) -> bool:
        return self.report["passed"]


@dataclass(frozen=True)
class Gate:
    name: str
    passed: bool | None  # None: does not apply to this device (said in `detail`)
    value: float | None
    limit: float | None
    detail: str

    def to_dict(self) -> dict:
        return asdict(self)


def run(params: Params, device_name: str, *, ingest: Path, train: Path, fit_latency: Path, compress: Path,
        out: Place, pipeline_key: str | None = None) -> ValidateResult:
    """Export train's baseline and compress's model for one device, run both on it and apply the gates.

    Writes the exported files and the report (report.json, report.html: what register reads) into
    `out.data`, the full report and DVC's metrics into `out.report`.
    """
    from components import models
    from components.data.windows import load_windows, make_folds
    from components.devices.pool import chosen
    from components.latency.model import REFITTED_DIR, load_in
    from components.models import training
    from components.tracking import runs as tracking

    cfg = params.validate
    (device,) = chosen(params, [device_name])
    formats = _formats(cfg, device)
    reports, out = Path(out.report), Path(out.data)
    ingest = Path(ingest)
    model_dirs = {"baseline": Path(train) / "model", "compressed": Path(compress) / "model"}
    for name, folder in model_dirs.items():
        if not (folder / models.SPEC_FILE).exists():
            stage = "train" if name == "baseline" else f"compress --device {device.name}"
            raise ConfigError(f"validate {device.name}: no {name} model at {folder}; run `python -m components "
                              f"{stage}` first")
    windows = load_windows(ingest)
    test, calibration = test_and_calibration(params, make_folds(windows.meta, params.train)[0])
    x_test = np.ascontiguousarray(windows.x[test], dtype=np.float32)
    y_test = windows.meta["label"].to_numpy()[test].astype(np.int64)
    users_test = windows.meta["user"].to_numpy().astype(str)[test]
    # the model compress steered by last (refitted where the search went, beside its model), else fit_latency's
    latency_model = load_in(Path(compress) / REFITTED_DIR) or load_in(Path(fit_latency))
    loaded = {name: models.load(folder) for name, folder in model_dirs.items()}
    torch_predictions = {name: training.predict(model, x_test) for name, model in loaded.items()}

    with tracking.stage_run(params, STAGE, pipeline_key, device=device.name) as mlrun:
        mlrun.log_params({"validate": asdict(cfg), "device": device.to_dict(), "test_windows": len(test)})
        mlrun.log_windows_input(windows, "evaluation")
        started = time.perf_counter()
        shutil.rmtree(out / FALLBACK_DIR, ignore_errors=True)  # an earlier run's retry is not this one's
        exports = {}
        for name, folder in model_dirs.items():
            log.info("%s: exporting the %s model to %s", device.name, name, ", ".join(formats))
            exports[name] = _export(folder, formats, out / name, windows.x[calibration], cfg.convert_timeout_s)
        test_set = _TestSet(x_test, y_test, users_test, len(windows.classes))
        with tempfile.TemporaryDirectory(prefix="validate-") as work:  # test windows and outputs, not kept
            np.save(Path(work) / "test_windows.npy", x_test)
            results, gates = _assess(params, device, formats, exports, loaded, torch_predictions, test_set,
                                     latency_model, Path(work), out)
            retry = None
            fallback = Path(compress) / FALLBACK_DIR
            if _only_accuracy_failed(gates) and (fallback / models.SPEC_FILE).exists():
                first = {"model_dir": os.path.relpath(model_dirs["compressed"], out),
                         "exports": _relative_exports(exports["compressed"], out),
                         "models": results, "gates": [g.to_dict() for g in gates],
                         "failed_gates": [g.name for g in gates if g.passed is False]}
                log.warning("%s: the compressed model missed only the accuracy gate (%s); retrying once with "
                            "compress's fallback, one step back along the search's path", device.name,
                            next(g.detail for g in gates if g.name == "accuracy_drop"))
                model_dirs["compressed"] = fallback
                loaded["compressed"] = models.load(fallback)
                torch_predictions["compressed"] = training.predict(loaded["compressed"], x_test)
                exports["compressed"] = _export(fallback, formats, out / FALLBACK_DIR, windows.x[calibration],
                                                cfg.convert_timeout_s)
                results, gates = _assess(params, device, formats, exports, loaded, torch_predictions, test_set,
                                         latency_model, Path(work), out)
                retry = {"reason": "the compressed model missed only the accuracy gate", "first_try": first,
                         "passed": all(g.passed is not False for g in gates)}
        report = _report(params, device, formats, results, gates, exports, model_dirs, ingest, test, windows,
                         mlrun.run_id, pipeline_key, time.perf_counter() - started, out)
        report["retry"] = retry
        report["accuracy_rule"] = accuracy_rule(cfg.gates)
        report["architecture"] = {name: architecture(model.spec) for name, model in loaded.items()}
        paths = write_report(report, reports)
        for path in paths[:1] + [reports / "report.html"]:  # what register reads, beside the files it registers
            write_text_atomic(out / path.name, path.read_text())
        seal(out)  # register checks the report and the files it registers against what was validated here
        _log_metrics(mlrun, flat_metrics(report), model_dirs)
        mlrun.set_tags({"validation_passed": str(report["passed"]).lower(), "deployed_format": formats[0],
                        "validation_id": report["validation_id"],
                        "registration": "eligible" if report["passed"]
                        else f"refused: failed {', '.join(report['failed_gates'])}"})
        for path in paths:
            mlrun.log_artifact(path, f"validate/{device.name}")
        for name in MODELS:
            for path in sorted(exports[name]["dir"].iterdir()):
                if path.is_file():
                    mlrun.log_artifact(path, f"validate/{device.name}/{name}")
        _say(report)
        return ValidateResult(device.name, reports / "report.json", report, mlrun.run_id)


@dataclass(frozen=True)
class _TestSet:
    x: np.ndarray
    y: np.ndarray
    users: np.ndarray  # the held-out user of each window
    classes: int


def _assess(params: Params, device, formats, exports: dict, loaded: dict, torch_predictions: dict, test: _TestSet,
            latency_model, work: Path, out: Path) -> tuple[dict, list[Gate]]:
    """Run both exported models on the device in every format, score them and apply the gates to the deployed one."""
    cfg = params.validate
    results = {name: {} for name in MODELS}
    for fmt in formats:
        log.info("%s: running both models as %s on %d test windows", device.name, fmt, len(test.y))
        ran = _run_on_device(params, device, fmt, exports, work, out / "logs")
        for name in MODELS:
            results[name][fmt] = _score(ran[name], exports[name]["files"].get(fmt), test.y, test.users,
                                        torch_predictions[name], test.classes, params.train.bootstrap, cfg.seed)
        base, comp = results["baseline"][fmt], results["compressed"][fmt]
        if base["ok"] and comp["ok"]:
            comp["accuracy_drop"] = accuracy_drop(base, comp, params.train.bootstrap, cfg.seed)
    for name in MODELS:
        _add_predictions(results[name], loaded[name].spec, device, latency_model)
    _add_ratios(results)
    return results, check_gates(results["baseline"][formats[0]], results["compressed"][formats[0]], device,
                                cfg.gates)


def _only_accuracy_failed(gates: list[Gate]) -> bool:
    return [g.name for g in gates if g.passed is False] == ["accuracy_drop"]


def _relative_exports(export: dict, out: Path) -> dict:
    return {"dir": os.path.relpath(export["dir"], out), "files": {f: x.to_dict() for f, x in export["files"].items()},
            "failed": export["failed"]}


def test_and_calibration(params: Params, fold) -> tuple[np.ndarray, np.ndarray]:
    """The windows validate runs (the held-out users', at most `max_test_windows`) and the training windows
    that calibrate integer quantization, drawn with `validate.seed`: the same ones every time."""
    cfg = params.validate
    rng = np.random.default_rng(cfg.seed)
    test = fold.test if not cfg.max_test_windows or len(fold.test) <= cfg.max_test_windows else \
        np.sort(rng.choice(fold.test, cfg.max_test_windows, replace=False))
    calibration = np.sort(rng.choice(fold.train, min(cfg.calibration_windows, len(fold.train)), replace=False))
    return test, calibration


def _log_metrics(mlrun, metrics: dict, model_dirs: dict[str, Path]) -> None:
    """Each model's figures linked to the LoggedModel logged for it upstream (train's baseline, compress's
    compressed model, found by their weights; then each shows as this run's input model), the gates and the
    verdict to the compressed one; what no logged model holds, and the counts, to the run alone."""
    linked: set[str] = set()
    for name, folder in model_dirs.items():
        model_id = mlrun.find_logged_model(folder)
        if model_id is None:
            log.info("no logged model holds the weights in %s: its metrics are the run's alone", folder)
            continue
        mine = {k: v for k, v in metrics.items()
                if k.startswith(f"{name}.") or (name == "compressed" and (k.startswith("gate.") or k == "passed"))}
        mlrun.log_metrics(mine, model_id=model_id)
        linked |= set(mine)
    mlrun.log_metrics({k: v for k, v in metrics.items() if k not in linked})


def host_runtime(device) -> tuple[str, int]:
    """The runtime and threads that run the device's exported files here (the device's backend says)."""
    return get_backend(device.runtime).host_runtime(device)


def _formats(cfg, device) -> tuple[str, ...]:
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


def _export(model_dir: Path, formats, folder: Path, calibration: np.ndarray, timeout_s: float) -> dict:
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
        ran = _run_on_device(params, device, fmt, exports, Path(work), Path(work) / "logs", timed=False)
        return {name: _score(ran[name], exports[name]["files"].get(fmt), y, users, None, classes,
                             params.train.bootstrap, params.validate.seed) for name in folders}


def _run_on_device(params: Params, device, fmt: str, exports: dict, work: Path, logs: Path,
                   timed: bool = True) -> dict[str, dict]:
    """Each model's answer from the device's worker processes: outputs, peak memory, timing, or what went wrong.

    Each model runs on the test windows in a fresh worker (its peak memory is
    its own), then (`timed`) the models that ran are timed together in one more, round-robin.
    """
    from components.devices.worker import Worker, WorkerFailed

    runtime, threads = host_runtime(device)

    def call(request: dict, log_name: str) -> dict:
        worker = Worker("validate", runtime, threads, device.pinned_cpus(), logs / log_name)
        try:
            return worker.call(request | {"windows": str(work / "test_windows.npy"),
                                          "timing": asdict(params.profile.timing)}, params.validate.run_timeout_s)
        except WorkerFailed as exc:
            return {"ok": False, "error": f"the {runtime} runtime process failed: {exc}"}
        finally:
            worker.close()

    answers: dict[str, dict] = {}
    ran = []
    for name in exports:
        exported = exports[name]["files"].get(fmt)
        if exported is None:
            answers[name] = {"ok": False, "error": f"not exported: {exports[name]['failed'].get(fmt, 'unknown')}"}
            continue
        entry = {"path": str(exports[name]["dir"] / exported.file), "format": fmt, "sha256": exported.sha256,
                 "outputs": str(work / f"{name}.{fmt}.outputs.npy")}
        reply = call({"models": [entry], "time": False}, f"{fmt}.{name}.log")
        answer = reply["results"][0] if reply.get("ok") else {"ok": False, "error": reply["error"]}
        if answer["ok"]:
            answer["outputs"] = np.load(entry["outputs"])
            ran.append((name, entry))
        answers[name] = answer
    if ran and timed:
        reply = call({"models": [entry for _, entry in ran], "predict": False}, f"{fmt}.timing.log")
        for i, (name, _) in enumerate(ran):
            timed = reply["results"][i] if reply.get("ok") else {"ok": False, "error": reply["error"]}
            if timed.get("ok"):
                answers[name]["timing"] = timed["timing"]
            else:
                answers[name] = {"ok": False, "error": f"ran, but timing failed: {timed['error']}"}
    return answers


def _score(answer: dict, exported, y_test: np.ndarray, users: np.ndarray, torch_predicted: np.ndarray | None,
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
        **({"graph": answer["graph"]} if "graph" in answer else {}),
    }


def _add_predictions(by_format: dict, spec, device, latency_model) -> None:
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


def _add_ratios(results: dict) -> None:
    """The compressed model's predicted and measured latency as ratios to the baseline's, same format.

    Both models are timed together, round-robin, so the measured ratio
    cancels the machine's phase; the prediction is judged on it (the
    milliseconds stay beside it), as compress steers by ratios.
    """
    for fmt, comp in results["compressed"].items():
        base = results["baseline"].get(fmt, {})
        if comp.get("latency_method") == "computed" or not (comp.get("ok") and base.get("ok")):
            continue
        if comp.get("predicted_latency_ms") and base.get("predicted_latency_ms") and base.get("latency_ms"):
            comp["measured_ratio"] = comp["latency_ms"] / base["latency_ms"]
            comp["predicted_ratio"] = comp["predicted_latency_ms"] / base["predicted_latency_ms"]
            comp["latency_error"] = abs(comp["predicted_ratio"] - comp["measured_ratio"]) / comp["measured_ratio"]


def check_gates(base: dict, comp: dict, device, g) -> list[Gate]:
    """Every gate on the compressed model (`comp`) against the baseline (`base`), same device and format."""
    if not comp.get("ok"):
        return [Gate("runs", False, None, None, f"the compressed model did not run: {comp.get('error')}")]
    gates = [Gate("runs", True, None, None, "checksum verified, loaded and ran on every test window")]
    if not base.get("ok"):
        gates.append(Gate("baseline_runs", False, None, None,
                          f"the baseline did not run, so nothing can be compared: {base.get('error')}"))
        return gates
    gates.append(accuracy_gate(base, comp, g))
    gates.append(Gate("agreement", comp["agreement"] >= g.min_agreement, comp["agreement"], g.min_agreement,
                      "share of test windows predicted as the torch model predicts them"))
    ratio = comp["latency_ms"] / base["latency_ms"]
    gates.append(Gate("latency", ratio <= g.latency_budget, ratio, g.latency_budget,
                      f"{comp['latency_method']} {comp['latency_ms']:.4g} ms vs the baseline's "
                      f"{base['latency_ms']:.4g} ms"))
    size = comp["bytes"] / base["bytes"]
    gates.append(Gate("size", size <= g.size_budget, size, g.size_budget,
                      f"{comp['bytes']} bytes vs the baseline's {base['bytes']}"))
    limits = get_backend(device.runtime).limits(device)
    if limits:
        fits = all(comp[key] <= limit for key, limit in limits.items())
        gates.append(Gate("fits_device", fits, None, None,
                          "; ".join(f"{key.replace('_', ' ')} {comp[key]} of {limit}" for key, limit in limits.items())))
    error = comp.get("latency_error")
    if comp["latency_method"] == "computed":
        gates.append(Gate("latency_prediction", None, None, g.max_latency_error,
                          "not applicable: the latency is computed by the same model that predicts it"))
    elif error is None:
        gates.append(Gate("latency_prediction", False, None, g.max_latency_error,
                          "no latency model for this device (run fit_latency)"))
    else:
        ratios = (f"measured {comp['measured_ratio']:.3f}, predicted {comp['predicted_ratio']:.3f} of the baseline's "
                  "latency (timed together); " if "measured_ratio" in comp else "")
        gates.append(Gate("latency_prediction", error <= g.max_latency_error, error, g.max_latency_error,
                          f"{ratios}measured {comp['latency_ms']:.4g} ms, predicted "
                          f"{comp['predicted_latency_ms']:.4g} ms"))
    return gates


def accuracy_drop(base: dict, comp: dict, resamples: int = 10000, seed: int = 0) -> dict:
    """Baseline minus compressed accuracy, user by user over the held-out users, with its 95 % interval.

    Records without per-user accuracies (one pooled figure) give the plain difference and no interval.
    """
    from components.stats import intervals as evaluation

    if base.get("per_user_accuracy") and comp.get("per_user_accuracy"):
        return evaluation.paired_ci(base["per_user_accuracy"], comp["per_user_accuracy"], resamples, seed)
    drop = base["accuracy"] - comp["accuracy"]
    return {"mean": drop, "low": drop, "high": drop, "users": 1, "std": 0.0, "paired_users": []}


def accuracy_gate(base: dict, comp: dict, g) -> Gate:
    """"No loss", with evidence: the mean paired per-user drop at most `max_accuracy_drop` and the upper end of
    its 95 % interval at most `max_accuracy_drop_upper`. The gate's value is the mean drop."""
    from components.stats.intervals import interval_text

    drop = comp.get("accuracy_drop") or accuracy_drop(base, comp)
    mean_ok = drop["mean"] <= g.max_accuracy_drop + 1e-12
    upper_ok = drop["high"] <= g.max_accuracy_drop_upper + 1e-12
    missed = [] if mean_ok else [f"mean drop {100 * drop['mean']:.2f} points > {100 * g.max_accuracy_drop:g}"]
    if not upper_ok:
        missed.append(f"upper end {100 * drop['high']:.2f} points > {100 * g.max_accuracy_drop_upper:g}")
    return Gate("accuracy_drop", mean_ok and upper_ok, drop["mean"], g.max_accuracy_drop,
                f"on-device accuracy {comp['accuracy']:.4f} vs the baseline's {base['accuracy']:.4f} (means over "
                f"held-out users); drop per user {interval_text(drop, 4)}; {accuracy_rule(g)}"
                + (f": missed ({'; '.join(missed)})" if missed else ""))


def accuracy_rule(g) -> str:
    """The accuracy gate's rule in words (the report and the model card say it)."""
    rule = f"passes when the mean drop is at most {100 * g.max_accuracy_drop:g} point(s)"
    if g.max_accuracy_drop_upper < 1:
        rule += f" and the upper end of its 95 % interval at most {100 * g.max_accuracy_drop_upper:g}"
    return rule


def _report(params, device, formats, results, gates, exports, model_dirs, ingest: Path, test, windows,
            run_id: str, pipeline_key: str | None, wall_s: float, out: Path) -> dict:
    """The validation report; folders in it are relative to `out` (validate's data folder, where it is kept)."""
    deployed = formats[0]
    failed = [g.name for g in gates if g.passed is False]
    card = json.loads((ingest / "data_card.json").read_text())
    comp = results["compressed"][deployed]
    identity = json.dumps({"device": device.name, "file": comp.get("sha256"), "data": card.get("data_hash")})
    users = windows.meta["user"].to_numpy().astype(str)
    return {
        "device": device.name, "runtime": device.runtime, "threads": device.threads,
        "load_runtime": host_runtime(device)[0],
        "deployed_format": deployed, "formats": list(formats),
        "passed": not failed, "failed_gates": failed, "gates": [g.to_dict() for g in gates],
        "models": results,
        "exports": {name: _relative_exports(e, out) for name, e in exports.items()},
        "model_dirs": {name: os.path.relpath(folder, out) for name, folder in model_dirs.items()},
        "test_windows": int(len(test)), "test_users": sorted(set(users[test].tolist())),
        "classes": list(windows.classes), "input_shape": list(windows.x.shape[1:]),
        "dataset": params.ingest.dataset, "data_hash": card.get("data_hash", ""),
        "validation_id": hashlib.sha256(identity.encode()).hexdigest()[:16],
        "validate_run_id": run_id, "pipeline_run": pipeline_key or "", "wall_s": round(wall_s, 1),
    }


def architecture(spec) -> dict:
    """What a model is, for people (register's model card): its architecture, size and each layer's width."""
    return {"arch": spec.arch, "params": spec.params, "macs": spec.macs,
            "widths": {layer.name: layer.out_features for layer in spec.layers}}


def _say(report: dict) -> None:
    comp = report["models"]["compressed"][report["deployed_format"]]
    if report["passed"]:
        log.info("%s: every gate passed%s (%s: accuracy %.3f, %.4g ms)", report["device"], _retried(report),
                 report["deployed_format"], comp["accuracy"], comp["latency_ms"])
    else:
        log.warning("%s: VALIDATION FAILED, the model will not be registered: %s", report["device"],
                    failed_gates_text(report))


def summary(result: ValidateResult) -> str:
    """Failing gates are a result (said in the line, and `register` leaves the model out), not an error."""
    r = result.report
    comp = r["models"]["compressed"][r["deployed_format"]]
    figures = (f"accuracy {comp['accuracy']:.3f}, {comp['latency_ms']:.4g} ms, {comp['bytes']} bytes"
               if comp["ok"] else f"did not run: {comp['error']}")
    verdict = "every gate passed" if r["passed"] else f"FAILED {', '.join(r['failed_gates'])}"
    verdict += _retried(r)
    return (f"validate {result.device}: {verdict} ({r['deployed_format']}: {figures}) -> {result.report_path} "
            f"(MLflow run {result.run_id})")


def _retried(report: dict) -> str:
    return " after a retry with compress's fallback" if report.get("retry") else ""
