"""The `train` stage: the baseline model on ingest's windows, evaluated on held-out users.

Reads `x.npy`, `signal.npy` and `windows.parquet` from the ingest output,
trains the configured architecture (DeepSense by default) on the training
users, early-stopped on a validation group of whole training users that it
never trains on (`train.validation: users`; compress judges its accuracy
floor on the same users), and scores it on the held-out users, next to a
classical reference (per axis statistics + random forest) on the same users. Accuracy and macro-F1 are
means over the held-out users, each with its 95 % bootstrap interval over
those users (components/stats/intervals.py), and the deep model's paired
difference to the forest. With `train.evaluation: kfold` every fold of users
that ingest dealt is held out once (k models; the nightly one is the held-out
fold's), so every user is scored exactly once. Writes, all or nothing, into
`train.output_dir`:

    model/model.json, model/model.safetensors   description + weights (no pickle)
    metrics.json        means and intervals over held-out users, per user, confusion matrix, forest, k folds
    history.json        per-epoch losses and accuracies
    confusion_matrix.png, learning_curve.png

Every input problem is found before the first epoch.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from components import models
from components.artifacts.atomic import atomic_directory, write_text_atomic
from components.config import Params
from components.data.windows import Fold, Windows, load_windows, make_folds
from components.models import classical, training
from components.reports import figures as plots
from components.reports.tables import interval_text
from components.settings.train import TrainParams
from components.stats import intervals as evaluation
from components.tracking import runs as tracking

if TYPE_CHECKING:
    from components.stages import Place

log = logging.getLogger(__name__)
STAGE = "train"


@dataclass(frozen=True)
class TrainResult:
    output_dir: Path
    accuracy: float  # mean over the held-out users
    macro_f1: float
    run_id: str
    accuracy_ci: dict  # evaluation.mean_ci of the per-user accuracies


def run(params: Params, *, ingest: Path, out: Place, pipeline_key: str | None = None) -> TrainResult:
    """Train on the windows in `ingest` (ingest's folder); write the model and its scores into `out`."""
    cfg = params.train
    input_dir, output_dir, report_dir = Path(ingest), Path(out.data), Path(out.report)
    windows = load_windows(input_dir)
    folds = make_folds(windows.meta, cfg)
    spec = models.spec_from_params(cfg.arch, cfg, tuple(windows.x.shape[1:]), windows.classes)  # fails on bad widths
    with tracking.stage_run(params, STAGE, pipeline_key) as mlrun:
        mlrun.log_params(params.to_dict()["train"] | {"input_dir": str(input_dir), "model.params": spec.params,
                                                      "model.macs": spec.macs})
        mlrun.log_windows_input(windows, "training")
        started = time.perf_counter()
        results = {fold.name: _run_fold(fold, spec, windows, cfg, mlrun if fold.name == "split" else None)
                   for fold in folds}
        split = results["split"]
        report = _report(spec, results, windows.classes, cfg)
        timings = {"wall_time_s": round(time.perf_counter() - started, 3), "fit_s.split": round(split["seconds"], 3)}
        timings |= {f"fit_s.{name}": round(r["seconds"], 3) for name, r in results.items() if name != "split"}
        with atomic_directory(output_dir, sealed=True) as staging:
            _write_outputs(staging, split, report, windows.classes)
        write_text_atomic(report_dir / "metrics.json", json.dumps(_dvc_metrics(report), indent=2))
        write_text_atomic(report_dir / "timings.json", json.dumps(timings, indent=2))
        _log_run(mlrun, output_dir, report, timings, windows)
        users = report["test"]["users"]
        log.info("train: %s accuracy %s, macro-F1 %s over held-out users %s; random forest %s", spec.arch,
                 interval_text(users["accuracy"]), interval_text(users["macro_f1"]), ", ".join(report["test_users"]),
                 interval_text(report["classical"]["users"]["accuracy"]))
        if "kfold" in report:
            log.info("train: %d folds, every user held out once: accuracy %s, random forest %s", len(folds),
                     interval_text(report["kfold"]["deep"]["accuracy"]),
                     interval_text(report["kfold"]["classical"]["accuracy"]))
        return TrainResult(output_dir, users["accuracy"]["mean"], users["macro_f1"]["mean"], mlrun.run_id,
                           users["accuracy"])


def _run_fold(fold: Fold, spec, windows: Windows, cfg: TrainParams, mlrun) -> dict:
    y = windows.meta["label"].to_numpy().astype(np.int64)
    users = windows.meta["user"].to_numpy().astype(str)
    log.info("fold %s: %d training windows, %d held-out windows (users %s)", fold.name, len(fold.train),
             len(fold.test), sorted(set(users[fold.test].tolist())))
    model, history = training.fit(spec, windows.x[fold.train], y[fold.train], cfg, label=f"[{fold.name}] ",
                                  users=users[fold.train])
    log.info("fold %s: early stopping judged on %s", fold.name, history.validation.describe())
    if mlrun is not None:
        for row in history.epochs:
            mlrun.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])
    predicted = training.predict(model, windows.x[fold.test])
    deep = training.scores(y[fold.test], predicted, users[fold.test], len(windows.classes), tuple(windows.classes))
    forest = classical.fit_predict(windows.signal[fold.train], y[fold.train], windows.signal[fold.test],
                                   cfg.classical, cfg.seed, cfg.threads)
    reference = training.scores(y[fold.test], forest, users[fold.test], len(windows.classes), tuple(windows.classes))
    return {"model": model, "history": history, "deep": deep, "classical": reference, "seconds": history.seconds,
            "test_users": sorted(set(users[fold.test].tolist())), "kfold_id": fold.kfold_id}


def _report(spec, results: dict, classes, cfg: TrainParams) -> dict:
    split = results["split"]
    report = {
        "arch": spec.arch, "params": spec.params, "macs_per_window": spec.macs, "classes": list(classes),
        "input_shape": list(spec.input_shape), "evaluation": cfg.evaluation, "test_users": split["test_users"],
        "test": split["deep"] | {"users": _users(split["deep"]["per_user"], cfg)},
        "classical": split["classical"] | {"users": _users(split["classical"]["per_user"], cfg)},
        "deep_minus_classical": _paired(split["deep"]["per_user"], split["classical"]["per_user"], cfg),
        "best_epoch": split["history"].best_epoch, "epochs_run": len(split["history"].epochs),
        "validation": validation_record(split["history"].validation, split["history"].refit_epochs),
    }
    kfolds = {name: r for name, r in results.items() if r["kfold_id"] is not None}
    if cfg.evaluation == "kfold":
        deep = {u: s for r in kfolds.values() for u, s in r["deep"]["per_user"].items()}
        forest = {u: s for r in kfolds.values() for u, s in r["classical"]["per_user"].items()}
        fold_of = {u: r["kfold_id"] for r in kfolds.values() for u in r["test_users"]}
        report["kfold"] = {
            "folds": {f"fold{r['kfold_id']}": {
                "users": r["test_users"], "fit_s": round(r["seconds"], 2), "epochs_run": len(r["history"].epochs),
                "deep": {m: r["deep"][m] for m in ("accuracy", "macro_f1")},
                "classical": {m: r["classical"][m] for m in ("accuracy", "macro_f1")}}
                for r in sorted(kfolds.values(), key=lambda r: r["kfold_id"])},
            "per_user": {u: {"fold": fold_of[u], "windows": deep[u]["windows"],
                             "deep_accuracy": deep[u]["accuracy"], "deep_macro_f1": deep[u]["macro_f1"],
                             "deep_errors": deep[u]["errors"],
                             "classical_accuracy": forest[u]["accuracy"], "classical_macro_f1": forest[u]["macro_f1"]}
                         for u in sorted(deep)},
            "deep": _users(deep, cfg), "classical": _users(forest, cfg),
            "deep_minus_classical": _paired(deep, forest, cfg),
        }
    return report


def validation_record(validation, refit_epochs: int = 0) -> dict:
    """What early stopping judged on: whole training users never trained on, or a share of the windows; and
    whether the model was then trained again on every training user (refit_epochs > 0: it has seen them)."""
    said = validation.describe() + (f"; then trained again on every training user for {refit_epochs} epochs"
                                    if refit_epochs else "")
    return {"by": "users" if validation.by_users else "windows", "users": list(validation.users),
            "windows": int(len(validation.val)), "refit_epochs": refit_epochs, "said": said}


def _users(per_user_scores: dict, cfg: TrainParams) -> dict:
    return evaluation.summary(per_user_scores, cfg.bootstrap, cfg.seed)


def _paired(deep: dict, forest: dict, cfg: TrainParams) -> dict:
    return {m: evaluation.paired_ci(evaluation.per_user(deep, m), evaluation.per_user(forest, m), cfg.bootstrap,
                                    cfg.seed) for m in ("accuracy", "macro_f1")}


def _write_outputs(staging: Path, split: dict, report: dict, classes) -> None:
    models.save(split["model"], staging / "model")
    (staging / "metrics.json").write_text(json.dumps(report, indent=2))
    (staging / "users.md").write_text(users_markdown(report))
    history = split["history"]
    (staging / "history.json").write_text(json.dumps({"best_epoch": history.best_epoch, "epochs": history.epochs},
                                                     indent=2))
    title = f"{report['arch']} on held-out users {', '.join(report['test_users'])}"
    plots.confusion_matrix_png(report["test"]["confusion_matrix"], tuple(classes), staging / "confusion_matrix.png",
                               f"{title}: accuracy {report['test']['users']['accuracy']['mean']:.3f} "
                               "(mean over users)")
    plots.learning_curve_png(history.epochs, history.best_epoch, staging / "learning_curve.png", title)


def users_markdown(report: dict) -> str:
    """The per-user table: each held-out user's accuracy and macro-F1, deep model and forest, with the means."""
    def table(rows: dict, deep: dict, forest: dict, diff: dict, what: str) -> list[str]:
        lines = [f"| {what} | windows | {report['arch']} accuracy | {report['arch']} macro-F1 | forest accuracy | "
                 f"forest macro-F1 | {report['arch']}'s commonest errors (windows) |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {u} | {r['windows']} | {r['deep_accuracy']:.4f} | {r['deep_macro_f1']:.4f} | "
                  f"{r['classical_accuracy']:.4f} | {r['classical_macro_f1']:.4f} | "
                  f"{', '.join(f'{k} ({n})' for k, n in r.get('deep_errors', {}).items()) or '-'} |"
                  for u, r in rows.items()]
        lines += ["", f"- {report['arch']}: accuracy {interval_text(deep['accuracy'])}, macro-F1 "
                  f"{interval_text(deep['macro_f1'])}",
                  f"- forest: accuracy {interval_text(forest['accuracy'])}, macro-F1 {interval_text(forest['macro_f1'])}",
                  f"- {report['arch']} minus forest, user by user: accuracy {interval_text(diff['accuracy'])}", ""]
        return lines

    test, forest = report["test"]["per_user"], report["classical"]["per_user"]
    rows = {u: {"windows": s["windows"], "deep_accuracy": s["accuracy"], "deep_macro_f1": s["macro_f1"],
                "deep_errors": s.get("errors", {}),
                "classical_accuracy": forest[u]["accuracy"], "classical_macro_f1": forest[u]["macro_f1"]}
            for u, s in test.items()}
    lines = ["# Held-out users", "", "Means over users (each user counts once) with 95 % percentile-bootstrap "
             "intervals over the users.", "", "## Tonight's held-out users (the deployed model)", ""]
    lines += table(rows, report["test"]["users"], report["classical"]["users"], report["deep_minus_classical"], "user")
    if "kfold" in report:
        k = report["kfold"]
        lines += [f"## Every user, held out once ({len(k['folds'])} folds of users)", ""]
        lines += table(k["per_user"], k["deep"], k["classical"], k["deep_minus_classical"], "user")
    return "\n".join(lines)


def _dvc_metrics(report: dict) -> dict:
    """Means over held-out users with their interval, the pooled figures, the forest, and k-fold means."""
    m = {"params": report["params"], "held_out_users": len(report["test_users"])}
    for prefix, block in (("", report["test"]), ("classical_", report["classical"])):
        for metric in ("accuracy", "macro_f1"):
            ci = block["users"][metric]
            m |= {f"{prefix}{metric}": ci["mean"], f"{prefix}{metric}_ci_low": ci["low"],
                  f"{prefix}{metric}_ci_high": ci["high"], f"{prefix}{metric}_pooled": block[metric]}
    if "kfold" in report:
        for kind in ("deep", "classical"):
            for metric in ("accuracy", "macro_f1"):
                ci = report["kfold"][kind][metric]
                m |= {f"kfold_{kind}_{metric}": ci["mean"], f"kfold_{kind}_{metric}_ci_low": ci["low"],
                      f"kfold_{kind}_{metric}_ci_high": ci["high"]}
    return m


def _log_run(mlrun, output_dir: Path, report: dict, timings: dict, windows: Windows) -> None:
    flat = _dvc_metrics(report)
    metrics = {"held_out_users": flat.pop("held_out_users")}
    flat.pop("params")  # logged below with the MACs
    for key, value in flat.items():  # test.accuracy, classical.accuracy_ci_low, kfold.deep_accuracy, ...
        group = "kfold" if key.startswith("kfold_") else "classical" if key.startswith("classical_") else "test"
        metrics[f"{group}.{key.removeprefix(group + '_')}"] = value
    for user, s in report["test"]["per_user"].items():
        metrics |= {f"test.user.{user}.accuracy": s["accuracy"], f"test.user.{user}.macro_f1": s["macro_f1"]}
    diff = report["deep_minus_classical"]["accuracy"]
    metrics |= {"deep_minus_classical.accuracy": diff["mean"], "deep_minus_classical.accuracy_ci_low": diff["low"],
                "deep_minus_classical.accuracy_ci_high": diff["high"]}
    # the baseline as a LoggedModel (the run's Models column; `runs:/<run>/baseline` loads it, nothing pickled):
    # its held-out scores are linked to it, as validate links the baseline's on-device figures
    model_id = mlrun.log_model_folder(output_dir / "model", "baseline", {
        "role": "baseline", "data_hash": windows.card.get("data_hash", "")})
    linked = {k: v for k, v in metrics.items() if k.startswith("test.") and ".user." not in k}
    mlrun.log_metrics(linked, model_id=model_id)
    mlrun.log_metrics({k: v for k, v in metrics.items() if k not in linked} | timings
                      | {"params": report["params"], "macs_per_window": report["macs_per_window"]})
    for name in ("metrics.json", "users.md", "history.json", "confusion_matrix.png", "learning_curve.png"):
        mlrun.log_artifact(output_dir / name, "train")
    mlrun.log_artifact(output_dir / "model" / models.SPEC_FILE, "train/model")
    mlrun.log_artifact(output_dir / "model" / models.WEIGHTS_FILE, "train/model")


def summary(result: TrainResult) -> str:
    return (f"train: accuracy {interval_text(result.accuracy_ci)} over held-out users, macro-F1 "
            f"{result.macro_f1:.3f} -> {result.output_dir} (MLflow run {result.run_id})")
