"""The `train` stage: the baseline model on ingest's windows, evaluated on held-out users.

Reads `x.npy`, `signal.npy` and `windows.parquet` from the ingest output,
trains the configured architecture (DeepSense by default) on the training
users and scores it on the held-out users, next to a classical reference (per
axis statistics + random forest) on the same users. With
`train.evaluation: leave_one_user_out` it also trains one fold per user and
reports the cross-user mean. Writes, all or nothing, into `train.output_dir`:

    model/model.json, model/model.safetensors   description + weights (no pickle)
    metrics.json        test accuracy / macro-F1, per user, confusion matrix, classical reference, folds
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

import numpy as np
import pandas as pd

from components import classical, models, plots, tracking, training
from components.config import Params, TrainParams
from components.data.errors import DataError
from components.data.outputs import atomic_directory, write_text_atomic

log = logging.getLogger(__name__)
STAGE = "train"


@dataclass(frozen=True)
class Windows:
    x: np.ndarray  # [N, T, sensors, axes, 2, F] (memory-mapped)
    signal: np.ndarray  # [N, sensors, axes, time]
    meta: pd.DataFrame
    classes: tuple[str, ...]


@dataclass(frozen=True)
class Fold:
    name: str
    train: np.ndarray  # window indices
    test: np.ndarray


@dataclass(frozen=True)
class TrainResult:
    output_dir: Path
    accuracy: float
    macro_f1: float
    run_id: str


def load_windows(directory: Path) -> Windows:
    """Open ingest's output and check that it is consistent, naming the file at fault."""
    paths = {name: directory / name for name in ("x.npy", "signal.npy", "windows.parquet", "data_card.json")}
    for path in paths.values():
        if not path.exists():
            raise DataError(path, "not found; run the ingest stage first")
    x = np.load(paths["x.npy"], mmap_mode="r")
    signal = np.load(paths["signal.npy"], mmap_mode="r")
    meta = pd.read_parquet(paths["windows.parquet"])
    classes = tuple(json.loads(paths["data_card.json"].read_text())["labels"])
    if x.ndim != 6 or x.shape[4] != 2:
        raise DataError(paths["x.npy"], f"shape {x.shape} is not [windows, intervals, sensors, axes, 2, frequencies]")
    for name, arr in (("x.npy", x), ("signal.npy", signal)):
        if len(arr) != len(meta):
            raise DataError(paths[name], f"has {len(arr)} windows but windows.parquet has {len(meta)}")
    missing = {"label", "user", "split"} - set(meta.columns)
    if missing:
        raise DataError(paths["windows.parquet"], f"missing column(s) {sorted(missing)}")
    bad = np.flatnonzero((meta["label"].to_numpy() < 0) | (meta["label"].to_numpy() >= len(classes)))
    if len(bad):
        raise DataError(paths["windows.parquet"], f"label {meta['label'].iloc[bad[0]]} is outside the model's "
                        f"{len(classes)} classes {list(classes)}", f"window {bad[0]}")
    return Windows(x, signal, meta, classes)


def make_folds(meta: pd.DataFrame, cfg: TrainParams) -> list[Fold]:
    """The nightly split (ingest's held-out users, or train.test_users) first, then one fold per user if asked."""
    users = meta["user"].to_numpy().astype(str)
    known = sorted(set(users.tolist()))
    if cfg.test_users:
        empty = [u for u in cfg.test_users if u not in known]
        if empty:
            raise DataError("params.yaml", f"held-out user(s) {empty} have no windows; users with windows: {known}",
                            "train.test_users")
        test_mask = np.isin(users, cfg.test_users)
    else:
        test_mask = meta["split"].to_numpy() == "test"
    folds = [Fold("split", np.flatnonzero(~test_mask), np.flatnonzero(test_mask))]
    if cfg.evaluation == "leave_one_user_out":
        folds += [Fold(f"user_{u}", np.flatnonzero(users != u), np.flatnonzero(users == u)) for u in known]
    for fold in folds:
        if len(fold.test) == 0:
            raise DataError("windows.parquet", f"fold {fold.name}: no held-out windows (ingest held out no user; "
                            "set ingest.split or train.test_users)")
        if len(fold.train) == 0:
            raise DataError("windows.parquet", f"fold {fold.name}: no training windows left")
    return folds


def run(params: Params, output_dir: Path | None = None, input_dir: Path | None = None,
        pipeline_key: str | None = None) -> TrainResult:
    cfg = params.train
    input_dir = Path(input_dir) if input_dir else params.path(params.ingest.output_dir)
    output_dir = Path(output_dir) if output_dir else params.path(cfg.output_dir)
    windows = load_windows(input_dir)
    folds = make_folds(windows.meta, cfg)
    spec = models.spec_from_params(cfg.arch, cfg, tuple(windows.x.shape[1:]), windows.classes)  # fails on bad widths
    with tracking.stage_run(params, STAGE, pipeline_key) as mlrun:
        mlrun.log_params(params.to_dict()["train"] | {"input_dir": str(input_dir), "model.params": spec.params,
                                                      "model.macs": spec.macs})
        started = time.perf_counter()
        results = {fold.name: _run_fold(fold, spec, windows, cfg, mlrun if fold.name == "split" else None)
                   for fold in folds}
        split = results["split"]
        report = _report(spec, results, windows.classes)
        timings = {"wall_time_s": round(time.perf_counter() - started, 3), "fit_s.split": round(split["seconds"], 3)}
        with atomic_directory(output_dir) as staging:
            _write_outputs(staging, split, report, windows.classes)
        write_text_atomic(params.path(cfg.report_dir) / "metrics.json", json.dumps(_dvc_metrics(report), indent=2))
        write_text_atomic(params.path(cfg.report_dir) / "timings.json", json.dumps(timings, indent=2))
        _log_run(mlrun, output_dir, report, timings, split["model"], windows)
        log.info("train: %s accuracy %.3f, macro-F1 %.3f on users %s (classical %.3f)", spec.arch,
                 report["test"]["accuracy"], report["test"]["macro_f1"], report["test_users"],
                 report["classical"]["accuracy"])
        return TrainResult(output_dir, report["test"]["accuracy"], report["test"]["macro_f1"], mlrun.run_id)


def _run_fold(fold: Fold, spec, windows: Windows, cfg: TrainParams, mlrun) -> dict:
    y = windows.meta["label"].to_numpy().astype(np.int64)
    users = windows.meta["user"].to_numpy().astype(str)
    log.info("fold %s: %d training windows, %d held-out windows (users %s)", fold.name, len(fold.train),
             len(fold.test), sorted(set(users[fold.test].tolist())))
    model, history = training.fit(spec, windows.x[fold.train], y[fold.train], cfg, label=f"[{fold.name}] ",
                                  users=users[fold.train])
    if mlrun is not None:
        for row in history.epochs:
            mlrun.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])
    predicted = training.predict(model, windows.x[fold.test])
    deep = training.scores(y[fold.test], predicted, users[fold.test], len(windows.classes))
    forest = classical.fit_predict(windows.signal[fold.train], y[fold.train], windows.signal[fold.test],
                                   cfg.classical, cfg.seed, cfg.threads)
    reference = training.scores(y[fold.test], forest, users[fold.test], len(windows.classes))
    return {"model": model, "history": history, "deep": deep, "classical": reference, "seconds": history.seconds,
            "test_users": sorted(set(users[fold.test].tolist()))}


def _report(spec, results: dict, classes) -> dict:
    split = results["split"]
    report = {
        "arch": spec.arch, "params": spec.params, "macs_per_window": spec.macs, "classes": list(classes),
        "test_users": split["test_users"], "test": split["deep"], "classical": split["classical"],
        "best_epoch": split["history"].best_epoch, "epochs_run": len(split["history"].epochs),
    }
    folds = {k: v for k, v in results.items() if k != "split"}
    if folds:
        report["leave_one_user_out"] = {
            "folds": {k: {"deep": {m: v["deep"][m] for m in ("accuracy", "macro_f1")},
                          "classical": {m: v["classical"][m] for m in ("accuracy", "macro_f1")},
                          "fit_s": round(v["seconds"], 2)} for k, v in folds.items()},
            **{f"mean_{kind}_{m}": float(np.mean([v[kind][m] for v in folds.values()]))
               for kind in ("deep", "classical") for m in ("accuracy", "macro_f1")},
        }
    return report


def _write_outputs(staging: Path, split: dict, report: dict, classes) -> None:
    models.save(split["model"], staging / "model")
    (staging / "metrics.json").write_text(json.dumps(report, indent=2))
    history = split["history"]
    (staging / "history.json").write_text(json.dumps({"best_epoch": history.best_epoch, "epochs": history.epochs},
                                                     indent=2))
    title = f"{report['arch']} on held-out users {', '.join(report['test_users'])}"
    plots.confusion_matrix_png(report["test"]["confusion_matrix"], tuple(classes), staging / "confusion_matrix.png",
                               f"{title}: accuracy {report['test']['accuracy']:.3f}")
    plots.learning_curve_png(history.epochs, history.best_epoch, staging / "learning_curve.png", title)


def _dvc_metrics(report: dict) -> dict:
    m = {"accuracy": report["test"]["accuracy"], "macro_f1": report["test"]["macro_f1"],
         "classical_accuracy": report["classical"]["accuracy"], "params": report["params"]}
    if "leave_one_user_out" in report:
        m.update({k: v for k, v in report["leave_one_user_out"].items() if k.startswith("mean_")})
    return m


def _log_run(mlrun, output_dir: Path, report: dict, timings: dict, model, windows: Windows) -> None:
    metrics = {f"test.{k}": report["test"][k] for k in ("accuracy", "macro_f1")}
    metrics |= {f"classical.{k}": report["classical"][k] for k in ("accuracy", "macro_f1")}
    for user, s in report["test"]["per_user"].items():
        metrics |= {f"test.user.{user}.accuracy": s["accuracy"], f"test.user.{user}.macro_f1": s["macro_f1"]}
    metrics |= {k: v for k, v in report.get("leave_one_user_out", {}).items() if k.startswith("mean_")}
    mlrun.log_metrics(metrics | timings | {"params": report["params"], "macs_per_window": report["macs_per_window"]})
    for name in ("metrics.json", "history.json", "confusion_matrix.png", "learning_curve.png"):
        mlrun.log_artifact(output_dir / name, "train")
    mlrun.log_artifact(output_dir / "model" / models.SPEC_FILE, "train/model")
    mlrun.log_artifact(output_dir / "model" / models.WEIGHTS_FILE, "train/model")
    mlrun.log_torch_model(model, np.ascontiguousarray(windows.x[:2], dtype=np.float32))
