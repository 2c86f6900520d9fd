"""Stage `fit_latency`: one latency model per device, from its profile table.

For a timed device: check the table, evaluate the fitting procedure on
held-out configurations and held-out whole models against the baselines
(linear on FLOPs, gradient boosting, random forest), fit the saved model on
every row, and write `latency_model.json` + `rules.txt` (the output) and the
evaluation table, metrics and figures (the report). For the microcontroller
target the analytic model is passed through unchanged, and its agreement
with the computed table is reported as a check. Everything goes to MLflow
run `fit_latency/<device>`.

`fit_latency.target` says what is fitted: each row's ratio to the reference
model timed beside it, in milliseconds of one normalised phase (`ratio`), or
the raw milliseconds (`ms`); see latency/fit.py. The metrics also give the
tree's held-out whole-model scores under both targets, side by side.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from components.artifacts.atomic import atomic_directory, write_text_atomic
from components.config import ConfigError, Params
from components.latency import fit as fitting
from components.latency.features import check_names
from components.latency.fit import LatencyDataError, Rows
from components.latency.model import MODEL_FILE, RULES_FILE, AnalyticLatencyModel, LatencyModel, save_in
from components.models.spec import LayerSpec
from components.profiling.items import LAYER_KINDS
from components.profiling.table import OPTIONAL_COLUMNS, SCHEMA, TABLE_FILE, with_optional_columns
from components.settings.fit_latency import FitLatencyParams

if TYPE_CHECKING:
    from components.stages import Place

STAGE = "fit_latency"
log = logging.getLogger(__name__)

__all__ = ["DEVICE_FAILURES", "LatencyDataError", "FitResult", "run", "summary"]
DEVICE_FAILURES = (LatencyDataError,)


@dataclass(frozen=True)
class FitResult:
    device: str
    model_path: Path
    metrics: dict
    run_id: str


def check_params(cfg: FitLatencyParams) -> None:
    try:
        check_names(cfg.split_variables, "fit_latency.split_variables")
        if not set(cfg.modular_variables) <= set(cfg.split_variables):
            raise ValueError("fit_latency.modular_variables must be among fit_latency.split_variables")
        if set(cfg.leaf_variables) != set(LAYER_KINDS):
            raise ValueError(f"fit_latency.leaf_variables: needs exactly the layer kinds {', '.join(LAYER_KINDS)} "
                             f"(has {', '.join(cfg.leaf_variables) or 'none'}): every kind a model can hold "
                             "needs a latency model")
        for kind, names in cfg.leaf_variables.items():
            check_names(names, f"fit_latency.leaf_variables.{kind}")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if cfg.folds < 2 or not 0 <= cfg.prune_share < 1:
        raise ConfigError("fit_latency.folds must be at least 2 and prune_share in [0, 1)")
    if cfg.min_rows < 2 or cfg.tree.min_leaf < 1 or any(k < 2 for k in cfg.tree.multiples):
        raise ConfigError("fit_latency: min_rows >= 2, tree.min_leaf >= 1 and tree.multiples >= 2 are required")


def run(params: Params, device_name: str, *, profile: Path, out: Place, pipeline_key: str | None = None
        ) -> FitResult:
    """Fit and evaluate device `device_name`'s latency model from its profile folder `profile`; write into `out`."""
    from components.devices.base import get_backend
    from components.devices.pool import chosen
    from components.tracking import runs as tracking

    cfg = params.fit_latency
    check_params(cfg)
    (device,) = chosen(params, [device_name])
    table = Path(profile) / TABLE_FILE
    reports, out = Path(out.report), Path(out.data)
    raw = _read_table(table, device.name)
    rows = fitting.usable_rows(raw, device.name, str(table), params.profile.max_failed_share, cfg.target)
    with tracking.stage_run(params, STAGE, pipeline_key, device=device.name) as mlrun:
        mlrun.log_params({"fit_latency": cfg.model_dump(), "device": device.to_dict(), "profile_table": str(table)})
        started = time.perf_counter()
        if not get_backend(device.runtime).timed:  # computed, not timed: nothing to fit
            model, evaluation = AnalyticLatencyModel(device), None
            metrics = _analytic_check(model, rows)
        else:
            fitting.check_fittable(rows, device.name, cfg)
            log.info("%s: evaluating on held-out configurations and whole models", device.name)
            evaluation = fitting.evaluate(rows, cfg)
            log.info("%s: fitting the model on every row", device.name)
            model = fitting.fit(rows, cfg, device.name, device.runtime, _info(table, rows))
            metrics = _metrics(model, evaluation, rows) | _target_metrics(rows, cfg, device.name)
        metrics |= {"device": device.name, "runtime": device.runtime, "method": model.method,
                    "rows_invalid": len(rows.invalid), "rows_failed": rows.failed,
                    "fit_s": round(time.perf_counter() - started, 3)}
        with atomic_directory(out, sealed=True) as staging:
            save_in(staging, model)
        artifacts = _write_report(model, evaluation, rows, metrics, cfg, reports)
        _log(mlrun, metrics, [out / MODEL_FILE, out / RULES_FILE, *artifacts], device.name)
        _say(model, metrics)
        return FitResult(device.name, out / MODEL_FILE, metrics, mlrun.run_id)


def _read_table(path: Path, device: str) -> list[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from components.artifacts.seals import verify_sealed

    if not path.exists():
        raise LatencyDataError(f"device {device}: no profile table at {path}; run "
                               f"`python -m components profile --device {device}` first")
    verify_sealed(path.parent, [path.name], f"run `python -m components profile --device {device}` again")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise LatencyDataError(f"device {device}: {path} is not a readable profile table ({exc}); profile the "
                               "device again") from None
    missing = [name for name in SCHEMA.names if name not in table.column_names and name not in OPTIONAL_COLUMNS]
    if missing:
        raise LatencyDataError(f"device {device}: {path} lacks columns {', '.join(missing)} (written by another "
                               "version?); profile the device again")
    return with_optional_columns(table).to_pylist()  # an older table: no ratios, its rows are fitted on ms


def _info(table: Path, rows: Rows) -> dict:
    return {"profile_table_sha256": hashlib.sha256(table.read_bytes()).hexdigest(),
            "rows": {k: len(v) for k, v in rows.layers.items()} | {"model": len(rows.models)}}


def _metrics(model: LatencyModel, evaluation, rows: Rows) -> dict:
    """Nested for DVC (split -> kind -> predictor -> scores) plus the flags a reader must see."""
    metrics: dict = {"fallback_kinds": model.fallback_kinds, "not_evaluated": evaluation.not_evaluated,
                     "overhead": asdict(model.overhead)}
    for row in evaluation.table:
        split = "configurations" if row["split"] == "configurations" else "whole_models"
        metrics.setdefault(split, {}).setdefault(row["kind"], {})[row["predictor"]] = {
            k: row[k] for k in ("rows", "mape_pct", "rmse_ms", "within_pct")}
    for kind, kind_rows in rows.layers.items():
        metrics[f"rows_{kind}"] = len(kind_rows)
    metrics["rows_model"] = len(rows.models)
    for kind in model.kinds:
        metrics[f"fallback_{kind}"] = int(bool(model.kinds[kind].fallback))
        metrics[f"tree_leaves_{kind}"] = model.kinds[kind].tree.leaves
    return metrics


def _target_metrics(rows: Rows, cfg: FitLatencyParams, device: str) -> dict:
    """The target fitted, R, and the tree's held-out whole-model scores under each target (ratio: if rows have one)."""
    metrics: dict = {"target": rows.target_info()["target"], "rows_with_ratio": rows.with_ratio}
    if rows.reference_ms is not None:
        metrics["reference_ms"] = rows.reference_ms
    by_target: dict = {}
    for target in fitting.TARGETS:
        target_rows = rows if target == rows.target else fitting.retargeted(rows, target, device)
        if target == "ratio" and not target_rows.with_ratio:
            continue  # no ratios: the same numbers as ms
        scored = fitting.whole_model_scores(target_rows, cfg)
        if scored is not None:
            by_target[target] = {"whole_model_within_pct": scored["within_pct"],
                                 "whole_model_mape_pct": scored["mape_pct"]}
    if by_target:
        metrics["targets"] = by_target
    return metrics


def _analytic_check(model: AnalyticLatencyModel, rows: Rows) -> dict:
    """The analytic model against the table it computed: a consistency check, zero error expected."""
    points = []
    for kind, kind_rows in rows.layers.items():
        for r in kind_rows:
            layer = LayerSpec("check", kind, r["in_features"], r["out_features"], r["kernel"], r["stride"],
                              r["length"], r["instances"])
            points.append((kind, r["latency_ms"], model.predict(layer)))
    points += [("model", r["latency_ms"], model.predict_model(spec)) for spec, r in rows.models]
    worst = max((abs(p - m) / m for _, m, p in points), default=0.0)
    return {"fallback_kinds": [], "analytic_rows_checked": len(points), "analytic_max_rel_error": worst}


def _write_report(model, evaluation, rows: Rows, metrics: dict, cfg: FitLatencyParams, reports: Path) -> list[Path]:
    from components.latency import plots

    reports.mkdir(parents=True, exist_ok=True)
    paths = [reports / "metrics.json"]
    write_text_atomic(paths[0], json.dumps(metrics, indent=2))
    if evaluation is None:
        return paths
    write_text_atomic(reports / "evaluation.csv", _csv(evaluation.table))
    write_text_atomic(reports / "evaluation.md", evaluation_markdown(model.device, evaluation.table))
    paths += [reports / "evaluation.csv", reports / "evaluation.md"]
    paths.append(plots.tree_png(model, reports / "tree.png"))
    if evaluation.points:
        title = f"{model.device}: held-out predictions (fitted without these rows)"
        paths.append(plots.predicted_png(evaluation.points, title, cfg.within, reports / "predicted_vs_measured.png"))
    if any(r["sweep"] == "width" for rs in rows.layers.values() for r in rs):
        paths.append(plots.sweeps_png(model, {k: v for k, v in rows.layers.items() if v}, reports / "sweeps.png"))
    return paths


def _csv(table: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(table[0]) if table else ["split"])
    writer.writeheader()
    writer.writerows(table)
    return buffer.getvalue()


def evaluation_markdown(device: str, table: list[dict]) -> str:
    """One line per (split, kind): MAPE / within-band share per predictor; the tree first."""
    from components.latency.fit import PREDICTORS

    head = "| device | split | kind | rows | " + " | ".join(f"{p} MAPE % / within %" for p in PREDICTORS) + " |"
    lines = [head, "|" + "---|" * (4 + len(PREDICTORS))]
    groups: dict[tuple, dict] = {}
    for row in table:
        groups.setdefault((row["split"], row["kind"]), {})[row["predictor"]] = row
    for (split, kind), by in groups.items():
        cells = [f"{by[p]['mape_pct']:.1f} / {by[p]['within_pct']:.0f}" if p in by else "-" for p in PREDICTORS]
        n = next(iter(by.values()))["rows"]
        lines.append(f"| {device} | {split} | {kind} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _log(mlrun, metrics: dict, artifacts: list[Path], device: str) -> None:
    from components.tracking.runs import flatten

    flat = {k: v for k, v in flatten(metrics).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)}
    mlrun.log_metrics(flat)
    mlrun.set_tags({"method": metrics["method"], "runtime": metrics["runtime"],
                    "fallback_kinds": ",".join(metrics["fallback_kinds"]) or "none"})
    for path in artifacts:
        mlrun.log_artifact(path, f"fit_latency/{device}")


def _say(model, metrics: dict) -> None:
    if model.method == "analytic":
        log.info("%s: analytic model passed through (max relative difference to the table %.2g)", model.device,
                 metrics["analytic_max_rel_error"])
        return
    for kind, by in metrics.get("configurations", {}).items():
        log.info("%s %s: held-out MAPE tree %.1f %% (boosted %.1f %%, linear on FLOPs %.1f %%)", model.device, kind,
                 by["tree"]["mape_pct"], by["boosted"]["mape_pct"], by["linear_flops"]["mape_pct"])
    whole = metrics.get("whole_models", {}).get("model")
    if whole:
        log.info("%s whole models: MAPE %.1f %%, %.0f %% within the band", model.device, whole["tree"]["mape_pct"],
                 whole["tree"]["within_pct"])
    for target, scored in metrics.get("targets", {}).items():
        log.info("%s whole models fitted on %s (tree, leave one out): %.0f %% within the band, MAPE %.1f %%",
                 model.device, target, scored["whole_model_within_pct"], scored["whole_model_mape_pct"])
    if model.fallback_kinds:
        log.warning("%s: FALLBACK (conservative, not fitted) for %s", model.device, ", ".join(model.fallback_kinds))


def summary(result: FitResult) -> str:
    m = result.metrics
    if m["method"] == "analytic":
        text = "analytic model passed through"
    else:
        mape = ", ".join(f"{kind} {by['tree']['mape_pct']:.1f} %" for kind, by in m.get("configurations", {}).items())
        text = f"held-out MAPE {mape}" if mape else "no held-out rows"
        whole = m.get("whole_models", {}).get("model")
        if whole:
            text += f"; whole models {whole['tree']['mape_pct']:.1f} % ({whole['tree']['within_pct']:.0f} % within band)"
        if m["fallback_kinds"]:
            text += f"; FALLBACK for {', '.join(m['fallback_kinds'])}"
    return f"fit_latency {result.device}: {text} -> {result.model_path} (MLflow run {result.run_id})"
