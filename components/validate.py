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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from components.artifacts.atomic import write_text_atomic
from components.artifacts.seals import seal
from components.config import ConfigError, Params
from components.decisions.gates import (
    Gate,
    accuracy_drop,
    accuracy_rule,
    check_gates,
    deployed_pair,
    only_accuracy_failed,
)
from components.devices.scoring import (
    MODELS,
    TestSet,
    add_predictions,
    add_ratios,
    export_models,
    formats_for,
    host_runtime,
    run_models,
    run_on_device,
    score,
)
from components.pruning.quantized import DEPLOY_FILE
from components.reports.validate import failed_gates_text, flat_metrics, write_report
from components.stages import artifact_dir, output

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
    formats, reference = deployed_formats(formats_for(cfg, device), device, Path(compress))
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
        mlrun.log_params({"validate": cfg.model_dump(), "device": device.to_dict(), "test_windows": len(test)})
        mlrun.log_windows_input(windows, "evaluation")
        started = time.perf_counter()
        shutil.rmtree(out / FALLBACK_DIR, ignore_errors=True)  # an earlier run's retry is not this one's
        exports = {}
        for name, folder in model_dirs.items():
            log.info("%s: exporting the %s model to %s", device.name, name, ", ".join(formats))
            exports[name] = export_models(folder, formats, out / name, windows.x[calibration], cfg.convert_timeout_s)
        test_set = TestSet(x_test, y_test, users_test, len(windows.classes))
        with tempfile.TemporaryDirectory(prefix="validate-") as work:  # test windows and outputs, not kept
            np.save(Path(work) / "test_windows.npy", x_test)
            results, gates, pair = _assess(params, device, formats, reference, exports, loaded, torch_predictions,
                                           test_set, latency_model, Path(work), out)
            retry = None
            fallback = Path(compress) / FALLBACK_DIR
            if only_accuracy_failed(gates) and (fallback / models.SPEC_FILE).exists():
                first = {"model_dir": os.path.relpath(model_dirs["compressed"], out),
                         "exports": _relative_exports(exports["compressed"], out),
                         "models": results, "gates": [g.to_dict() for g in gates], "deployed_pair": pair,
                         "failed_gates": [g.name for g in gates if g.passed is False]}
                log.warning("%s: the compressed model missed only the accuracy gate (%s); retrying once with "
                            "compress's fallback, one step back along the search's path", device.name,
                            next(g.detail for g in gates if g.name == "accuracy_drop"))
                model_dirs["compressed"] = fallback
                loaded["compressed"] = models.load(fallback)
                torch_predictions["compressed"] = training.predict(loaded["compressed"], x_test)
                exports["compressed"] = export_models(fallback, formats, out / FALLBACK_DIR, windows.x[calibration],
                                                cfg.convert_timeout_s)
                results, gates, pair = _assess(params, device, formats, reference, exports, loaded,
                                               torch_predictions, test_set, latency_model, Path(work), out)
                retry = {"reason": "the compressed model missed only the accuracy gate", "first_try": first,
                         "passed": all(g.passed is not False for g in gates)}
        report = _report(params, device, formats, results, gates, exports, model_dirs, ingest, test, windows,
                         mlrun.run_id, pipeline_key, time.perf_counter() - started, out)
        report["retry"] = retry
        report["deployed_pair"] = pair
        report["accuracy_rule"] = accuracy_rule(cfg.gates)
        report["architecture"] = {name: architecture(model.spec) for name, model in loaded.items()}
        paths = write_report(report, reports)
        for name in ("report.json", "report.html"):  # what register reads, beside the files it registers
            write_text_atomic(output(out, STAGE, name), (reports / name).read_text())
        seal(out)  # register checks the report and the files it registers against what was validated here
        _log_metrics(mlrun, flat_metrics(report), model_dirs)
        mlrun.set_tags({"validation_passed": str(report["passed"]).lower(), "deployed_format": formats[0],
                        "validation_id": report["validation_id"],
                        "registration": "eligible" if report["passed"]
                        else f"refused: failed {', '.join(report['failed_gates'])}"})
        for path in paths:
            mlrun.log_artifact(path, artifact_dir(STAGE, device.name))
        for name in MODELS:
            for path in sorted(exports[name]["dir"].iterdir()):
                if path.is_file():
                    mlrun.log_artifact(path, f"{artifact_dir(STAGE, device.name)}/{name}")
        _say(report)
        return ValidateResult(device.name, reports / "report.json", report, mlrun.run_id)


def deployed_formats(formats: tuple[str, ...], device, compress_dir: Path) -> tuple[tuple[str, ...], str]:
    """The formats to run, compress's chosen form first (deployed and gated), and the float form the baseline is
    compared in. Without a choice from compress (an earlier run, a computed device): `validate.formats` as they
    are, the first deployed and compared with the baseline in the same format."""
    from components.devices.base import get_backend

    path = Path(compress_dir) / DEPLOY_FILE
    if not path.exists():
        return formats, formats[0]
    choice = json.loads(path.read_text())
    deployed, reference = choice.get("format") or "", choice.get("float_format") or ""
    loadable = get_backend(host_runtime(device)[0]).formats
    if deployed not in loadable or reference not in loadable:
        return formats, formats[0]
    ordered = (deployed, *(f for f in formats if f != deployed))
    return (ordered if reference in ordered else (*ordered, reference)), reference


def _assess(params: Params, device, formats, reference: str, exports: dict, loaded: dict, torch_predictions: dict,
            test: TestSet, latency_model, work: Path, out: Path) -> tuple[dict, list[Gate], dict | None]:
    """Run both exported models on the device in every format, score them and apply the gates to the deployed one.

    Where the deployed form is compress's int8 choice, the gates compare it
    with the baseline in its float form (`reference`), the two timed together
    once more (`pair`: None where both are compared in one format).
    """
    cfg = params.validate
    results = {name: {} for name in MODELS}
    for fmt in formats:
        log.info("%s: running both models as %s on %d test windows", device.name, fmt, len(test.y))
        ran = run_on_device(params, device, fmt, exports, work, out / "logs")
        for name in MODELS:
            results[name][fmt] = score(ran[name], exports[name]["files"].get(fmt), test.y, test.users,
                                        torch_predictions[name], test.classes, params.train.bootstrap, cfg.seed)
        base, comp = results["baseline"][fmt], results["compressed"][fmt]
        if base["ok"] and comp["ok"]:
            comp["accuracy_drop"] = accuracy_drop(base, comp, params.train.bootstrap, cfg.seed)
    for name in MODELS:
        add_predictions(results[name], loaded[name].spec, device, latency_model)
    add_ratios(results)
    base, comp = results["baseline"][reference], results["compressed"][formats[0]]
    pair = None
    if formats[0] != reference and base.get("ok") and comp.get("ok"):
        base, comp = _across_formats(params, device, exports, reference, formats[0], base, comp, work, out)
        pair = {"baseline_format": reference, "baseline": base, "compressed": comp}
    return results, check_gates(base, comp, device, cfg.gates, params.compress.energy_budget_mj.get(device.name)), pair


def _across_formats(params: Params, device, exports: dict, reference: str, deployed: str, base: dict, comp: dict,
                    work: Path, out: Path) -> tuple[dict, dict]:
    """The baseline in `reference` (float) and the compressed model in `deployed` (int8), timed together: their
    latency, energy and accuracy drop against each other. The latency model predicts float structures, so its
    prediction is not judged here (compress chose the int8 form on its measured time)."""
    from components.devices.energy import energy_per_inference, energy_ratio, metered

    log.info("%s: timing the compressed model as %s against the baseline as %s", device.name, deployed, reference)
    timed = run_models(params, device, {"baseline": (exports["baseline"], reference),
                                        "compressed": (exports["compressed"], deployed)}, work, out / "logs",
                       predict=False)
    base, comp = dict(base), dict(comp)
    for name, record in (("baseline", base), ("compressed", comp)):
        answer = timed[name]
        if not answer.get("ok"):
            record |= {"ok": False, "error": answer.get("error", "")}
            continue
        timing = answer.get("timing") or {}
        record |= {"latency_ms": timing.get("latency_ms"), "latency_iqr_ms": timing.get("iqr_ms"),
                   "latency_stable": timing.get("stable"), "format": deployed if name == "compressed" else reference}
        record |= energy_per_inference(device, record["latency_ms"], metered(answer))
    if base.get("ok") and comp.get("ok"):
        comp["accuracy_drop"] = accuracy_drop(base, comp, params.train.bootstrap, params.validate.seed)
        comp["measured_ratio"] = comp["latency_ms"] / base["latency_ms"]
        comp["energy_ratio"] = energy_ratio(comp, base)
        comp |= {"latency_error": None, "predicted_ratio": None,
                 "prediction_note": f"the latency model predicts float structures, not {deployed}"}
    return base, comp


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
            "widths": spec.widths}


def _say(report: dict) -> None:
    comp = deployed_pair(report)[1]
    if report["passed"]:
        log.info("%s: every gate passed%s (%s: accuracy %.3f, %.4g ms)", report["device"], _retried(report),
                 report["deployed_format"], comp["accuracy"], comp["latency_ms"])
    else:
        log.warning("%s: VALIDATION FAILED, the model will not be registered: %s", report["device"],
                    failed_gates_text(report))


def summary(result: ValidateResult) -> str:
    """Failing gates are a result (said in the line, and `register` leaves the model out), not an error."""
    r = result.report
    comp = deployed_pair(r)[1]
    figures = (f"accuracy {comp['accuracy']:.3f}, {comp['latency_ms']:.4g} ms, {comp['bytes']} bytes"
               if comp["ok"] else f"did not run: {comp['error']}")
    verdict = "every gate passed" if r["passed"] else f"FAILED {', '.join(r['failed_gates'])}"
    verdict += _retried(r)
    return (f"validate {result.device}: {verdict} ({r['deployed_format']}: {figures}) -> {result.report_path} "
            f"(MLflow run {result.run_id})")


def _retried(report: dict) -> str:
    return " after a retry with compress's fallback" if report.get("retry") else ""
