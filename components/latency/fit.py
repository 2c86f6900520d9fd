"""Fit a device's latency model from its profile table, and evaluate the procedure on held-out rows.

Reading refuses tables it cannot fit (missing, empty, only failed rows, too
few rows for any kind) with a message saying what to do, and sets aside
rows whose latency is not a positive number, naming them. A layer kind with
fewer than `min_rows` usable rows, or none, gets the conservative fallback
(`fallback_tree`), and the metrics and rules say so.

Evaluation follows the issue's two splits:
- by configuration: per kind, the layer configurations are split into
  `folds` parts and each part is predicted by the tree and every baseline
  fitted on the other parts (every configuration is held out exactly once);
- by whole model: each whole-model row is predicted from the layer models
  (which never see whole-model rows) with the whole-model correction fitted
  on the *other* models (leave one model out).
The model that is saved is then fitted the same way on every row.

What is fitted (`target`): `ms`, each row's measured milliseconds; or
`ratio`, each row's time relative to the reference model timed in the same
rounds (the baseline, see devices/timing.py) times R, the median of the
reference's own milliseconds over the table. Milliseconds measured in a
fast phase of the machine and in a slow one disagree by up to half; their
ratios do not, and one R per device turns them back into milliseconds of one
normalised phase, so the model still predicts milliseconds. Rows without a
ratio (a table from before, a failed reference) are fitted on their
milliseconds. Every usable row carries what is fitted as `fit_ms`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import lsq_linear

from components.latency.baselines import Boosted, Forest, LinearFlops
from components.latency.features import layer_values, matrix
from components.latency.model import KindModel, LatencyModel, Overhead, Residuals, correction, log_widths
from components.latency.tree import LinearTree, nnls_fit
from components.models.spec import ModelSpec
from components.profiling.items import LAYER_KINDS, Item
from components.settings.fit_latency import FitLatencyParams

log = logging.getLogger(__name__)
PREDICTORS = ("tree", "linear_flops", "boosted", "forest")
TARGETS = ("ratio", "ms")
_MIN_OTHER_DEPTH = 3  # whole models off the most common depth needed to fit a fixed cost per layer
_MAJOR_SHARE = 0.05  # a layer kind below this share of a model's time shares the common whole-model scale
FALLBACK_DOC = ("conservative fallback: latency = s * (w * FLOPs + b), where w, b >= 0 are fitted to every usable "
                "layer row of the device (all kinds) and s >= 1 lifts the line above the slowest of them")


class LatencyDataError(ValueError):
    """The profile table cannot be fitted; the message says why and what to do."""


@dataclass
class Rows:
    """A device's usable profile rows."""

    layers: dict[str, list[dict]]  # per kind: ok rows with a positive, finite latency
    models: list[tuple[ModelSpec, dict]]  # whole-model rows and their descriptions
    invalid: list[dict] = field(default_factory=list)  # ok rows whose latency is NaN, infinite or <= 0
    failed: int = 0
    target: str = "ms"  # what `fit_ms` holds: ratio (ratio * reference_ms where a row has one) or ms
    reference_ms: float | None = None  # R: median reference milliseconds over the rows with a ratio
    reference_id: str | None = None  # the reference model's key
    with_ratio: int = 0  # usable rows fitted on their ratio

    def target_info(self) -> dict:
        """What the saved model's `info` says about its target (`target` is ms when no row had a ratio)."""
        return {"target": self.target if self.with_ratio else "ms", "reference_ms": self.reference_ms,
                "reference_id": self.reference_id, "rows_with_ratio": self.with_ratio}


def usable_rows(rows: list[dict], device: str, source: str, max_failed_share: float = 1.0,
                target: str = "ms") -> Rows:
    """Check a profile table's rows and keep the usable ones; raise LatencyDataError if none can be fitted.

    A table with more failed rows than `max_failed_share` (the share that
    fails the device's profile) is refused too: its profile did not succeed.
    `target` (ms | ratio) decides what each row's `fit_ms` holds (module docstring).
    """
    if target not in TARGETS:
        raise ValueError(f"fit_latency.target must be one of {', '.join(TARGETS)} (got {target!r})")
    if not rows:
        raise LatencyDataError(f"device {device}: the profile table {source} has no rows; run "
                               f"`python -m components profile --device {device}` first")
    ok = [r for r in rows if r["status"] == "ok"]
    reasons = "; ".join(sorted({str(r.get("error")) for r in rows if r["status"] != "ok"})[:3])
    if not ok:
        raise LatencyDataError(f"device {device}: all {len(rows)} rows of {source} failed to profile, nothing to "
                               f"fit; first reasons: {reasons}")
    failed_share = 1 - len(ok) / len(rows)
    if failed_share > max_failed_share:
        raise LatencyDataError(
            f"device {device}: {len(rows) - len(ok)} of {len(rows)} configurations in {source} failed to profile "
            f"({failed_share:.0%} > profile.max_failed_share {max_failed_share:.0%}); fix the profile first "
            f"(first reasons: {reasons})")
    valid = [r for r in ok if _positive(r["latency_ms"])]
    invalid = [r for r in ok if not _positive(r["latency_ms"])]
    if invalid:
        log.warning("device %s: %d rows of %s have a latency that is not a positive number and are left out: %s",
                    device, len(invalid), source,
                    ", ".join(f"{r['kind']} {r['config_id']} ({r['latency_ms']})" for r in invalid[:5]))
    valid, reference = with_target(valid, target, device)
    layers = {kind: [r for r in valid if r["kind"] == kind] for kind in LAYER_KINDS}
    models = [(Item.from_json(r["config"]).model, r) for r in valid if r["kind"] == "model"]
    return Rows(layers, models, invalid, len(rows) - len(ok), target, **reference)


def with_target(rows: list[dict], target: str, device: str) -> tuple[list[dict], dict]:
    """Copies of `rows` with `fit_ms`, and what the ratios are relative to (reference_ms, reference_id, with_ratio).

    Ratios relative to different references do not mix: only the rows of the
    reference most rows share keep theirs.
    """
    if target == "ms":
        return [r | {"fit_ms": r["latency_ms"]} for r in rows], {}
    timed = [r for r in rows if _positive(r.get("ratio")) and _positive(r.get("reference_ms"))]
    ids = [r.get("reference_id") for r in timed]
    reference_id = max(set(ids), key=ids.count) if ids else None
    paired = [r for r in timed if r.get("reference_id") == reference_id]
    if len(paired) < len(timed):
        log.warning("device %s: %d rows have ratios to another reference than %s; they are fitted on ms", device,
                    len(timed) - len(paired), reference_id)
    if not paired:
        return [r | {"fit_ms": r["latency_ms"]} for r in rows], {}
    reference_ms = float(np.median([r["reference_ms"] for r in paired]))
    paired_ids = {id(r) for r in paired}
    fitted = [r | {"fit_ms": r["ratio"] * reference_ms if id(r) in paired_ids else r["latency_ms"]} for r in rows]
    return fitted, {"reference_ms": reference_ms, "reference_id": reference_id, "with_ratio": len(paired)}


def retargeted(rows: Rows, target: str, device: str) -> Rows:
    """The same usable rows with `fit_ms` for another target (to compare targets on one table)."""
    layer_rows = [r for rs in rows.layers.values() for r in rs]
    fitted, reference = with_target(layer_rows + [r for _, r in rows.models], target, device)
    layers = {kind: [r for r in fitted[: len(layer_rows)] if r["kind"] == kind] for kind in rows.layers}
    models = [(spec, r) for (spec, _), r in zip(rows.models, fitted[len(layer_rows):])]
    return Rows(layers, models, rows.invalid, rows.failed, target, **reference)


def _y(rows: list[dict]) -> np.ndarray:
    """What is fitted (`fit_ms`; rows built by hand without it: their milliseconds)."""
    return np.array([r.get("fit_ms", r["latency_ms"]) for r in rows])


def _positive(value) -> bool:
    return value is not None and isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def check_fittable(rows: Rows, device: str, cfg: FitLatencyParams) -> None:
    if not any(len(rs) >= cfg.min_rows for rs in rows.layers.values()):
        counts = ", ".join(f"{k} {len(rs)}" for k, rs in rows.layers.items())
        invalid = (f"; {len(rows.invalid)} rows were left out for a latency that is not a positive number"
                   if rows.invalid else "")
        raise LatencyDataError(
            f"device {device}: too few usable layer rows to fit any kind ({counts}; fit_latency.min_rows is "
            f"{cfg.min_rows}{invalid}); profile more configurations (profile.sampler.configs_per_kind)")


# ---- fitting ----------------------------------------------------------------------------------


def fit_tree(rows: list[dict], kind: str, cfg: FitLatencyParams, rng: np.random.Generator) -> LinearTree:
    y = _y(rows)
    split_vars, leaf_vars = list(cfg.split_variables), list(cfg.leaf_variables[kind])
    prune = rng.random(len(rows)) < cfg.prune_share
    return LinearTree.fit(matrix(rows, split_vars), matrix(rows, leaf_vars), y, split_vars, leaf_vars, cfg.tree,
                          prune_mask=prune, modular=set(cfg.modular_variables))


def fallback_tree(pool: list[dict]) -> LinearTree:
    """One leaf over FLOPs that lies above every usable layer row of the device (see FALLBACK_DOC)."""
    y = _y(pool)
    flops = matrix(pool, ["flops"])
    w, b, _ = nnls_fit(flops, y)
    fitted = flops[:, 0] * w[0] + b
    lift = max(1.0, float(np.max(y / np.maximum(fitted, 1e-12))))
    leaf = {"weights": [float(w[0] * lift)], "intercept": float(b * lift), "rows": len(pool)}
    return LinearTree([], ["flops"], [{"leaf": leaf}])


def fit_kinds(rows: Rows, cfg: FitLatencyParams, seed: int) -> dict[str, KindModel]:
    """A tree per kind with enough rows; the fallback for the others."""
    pool = [r for rs in rows.layers.values() for r in rs]
    kinds: dict[str, KindModel] = {}
    for kind in cfg.leaf_variables:
        kind_rows = rows.layers.get(kind, [])
        if len(kind_rows) >= cfg.min_rows:
            kinds[kind] = KindModel(fit_tree(kind_rows, kind, cfg, np.random.default_rng(seed)))
        else:
            reason = f"{len(kind_rows)} usable rows < fit_latency.min_rows {cfg.min_rows}"
            log.warning("layer kind %s: %s; using the %s", kind, reason, FALLBACK_DOC)
            kinds[kind] = KindModel(fallback_tree(pool), fallback=reason)
    return kinds


def fit_overhead(sums: list[dict[str, float]], y: np.ndarray, cfg: FitLatencyParams,
                 form_models: int | None = None, layers: list[int] | None = None) -> Overhead:
    """The whole-model correction from per-kind layer sums, least squares on relative error.

    With `full_overhead_models` rows or more: a scale >= 0 per layer kind that
    makes up at least `_MAJOR_SHARE` of the predicted time on average (a tiny
    kind, like DeepSense's output layer, would only act as a second offset),
    the others at the common scale, and a free offset (usually negative: each
    layer timed alone paid a runtime call that the whole model pays once);
    with fewer rows: one
    scale; with none: the plain sum. `form_models` (default: the rows given)
    decides the form, so a leave-one-out fit has the form of the saved one.
    `layers`: each model's count of layers that run; where at least
    `_MIN_OTHER_DEPTH` models differ from the most common depth, the per-kind
    form also fits a fixed cost per layer (free sign), which one depth alone
    cannot tell from the offset.
    """
    n = len(y)
    if n == 0:
        return Overhead("none")
    totals = np.array([sum(s.values()) for s in sums])
    ratio = totals / y
    common = float(ratio.sum() / (ratio @ ratio))
    if (n if form_models is None else form_models) < cfg.full_overhead_models:
        return Overhead("scale", scale=common, models=n)
    share = {k: np.mean([s.get(k, 0.0) / t for s, t in zip(sums, totals)]) for k in {k for s in sums for k in s}}
    kinds = sorted(k for k, v in share.items() if v >= _MAJOR_SHARE)
    minor = np.array([sum(v for k, v in s.items() if k not in kinds) for s in sums])
    depths = [] if layers is None else list(layers)
    per_layer = bool(depths) and len(depths) - max(depths.count(d) for d in set(depths)) >= _MIN_OTHER_DEPTH
    columns = [[s.get(k, 0.0) for s in sums] for k in kinds] + [np.ones(n)] + ([depths] if per_layer else [])
    design = np.column_stack(columns) / y[:, None]
    target = 1.0 - common * minor / y
    size = np.abs(design).max(axis=0)
    # offset and per-layer cost may be negative: a layer timed alone pays a call overhead a model pays once
    lower = [0.0] * len(kinds) + [-np.inf] * (1 + per_layer)
    result = lsq_linear(design / size, target, bounds=(lower, [np.inf] * len(lower)))
    coef = result.x / size
    return Overhead("per_kind", scale=common, kind_scales={k: float(c) for k, c in zip(kinds, coef)},
                    offset=float(coef[len(kinds)]), models=n, per_layer=float(coef[-1]) if per_layer else 0.0)


def fit(rows: Rows, cfg: FitLatencyParams, device: str, runtime: str, info: dict | None = None) -> LatencyModel:
    """The model that is saved: every usable row."""
    check_fittable(rows, device, cfg)
    kinds = fit_kinds(rows, cfg, cfg.seed)
    model = LatencyModel(device, runtime, kinds, Overhead("none"), (info or {}) | rows.target_info())
    sums = [_sums_by_kind(spec, lambda kind, layers: float(model.predict_layers(layers).sum()))
            for spec, _ in rows.models]
    y = _y([r for _, r in rows.models])
    depths = [len(spec.computing) for spec, _ in rows.models]
    model.overhead = fit_overhead(sums, y, cfg, layers=depths)
    formula = np.array([model.overhead.apply(s, d) for s, d in zip(sums, depths)])
    model.residuals = fit_residuals([spec for spec, _ in rows.models], y, formula)
    return model


BANDWIDTHS = (0.05, 0.1, 0.2, 0.4, 0.8)  # root mean square difference of log widths (0.1: ~10 % wider or narrower)
SHRINKS = (0.1, 0.3, 1.0, 3.0)


def fit_residuals(specs: list[ModelSpec], y: np.ndarray, formula: np.ndarray) -> Residuals:
    """The local correction (`Residuals`) from whole-model rows, bandwidth and shrink by leave-one-out.

    Only the models of the most common architecture (layer names) count; no
    correction at all wins if it predicts the left-out models better.
    """
    names = [tuple(layer.name for layer in spec.computing) for spec in specs]
    if not names:
        return Residuals()
    common = max(set(names), key=names.count)
    index = [i for i, n in enumerate(names) if n == common]
    if len(index) < 3:
        return Residuals()
    points = np.array([log_widths(specs[i]) for i in index])
    values = np.log(y[index] / np.maximum(formula[index], 1e-12))
    best, best_error = None, float(np.mean(np.abs(np.expm1(values))))  # no correction
    for h in BANDWIDTHS:
        for shrink in SHRINKS:
            errors = [abs(np.expm1(values[i] - correction(np.delete(points, i, 0), np.delete(values, i), points[i], h,
                                                          shrink))) for i in range(len(index))]
            if np.mean(errors) < best_error - 1e-9:
                best, best_error = (h, shrink), float(np.mean(errors))
    if best is None:
        return Residuals()
    return Residuals(common, tuple(tuple(map(float, p)) for p in points), tuple(map(float, values)), *best)


def _sums_by_kind(spec: ModelSpec, predict_sum) -> dict[str, float]:
    """Per layer kind of `spec`: predict_sum(kind, its layers)."""
    by_kind: dict[str, list] = {}
    for layer in spec.computing:
        by_kind.setdefault(layer.kind, []).append(layer)
    return {kind: predict_sum(kind, layers) for kind, layers in by_kind.items()}


# ---- evaluation -------------------------------------------------------------------------------


@dataclass
class Evaluation:
    table: list[dict]  # one row per (split, kind, predictor): rows, mape_pct, rmse_ms, within_pct
    points: list[dict]  # every held-out prediction: split, kind, predictor, measured_ms, predicted_ms
    not_evaluated: dict[str, str]  # kind -> why it has no held-out rows


def scores(measured: np.ndarray, predicted: np.ndarray, within: float) -> dict:
    rel = np.abs(predicted - measured) / measured
    return {"rows": int(len(measured)), "mape_pct": float(100 * rel.mean()),
            "rmse_ms": float(np.sqrt(np.mean((predicted - measured) ** 2))),
            "within_pct": float(100 * np.mean(rel <= within + 1e-12))}


def evaluate(rows: Rows, cfg: FitLatencyParams) -> Evaluation:
    rng = np.random.default_rng(cfg.seed)
    points: list[dict] = []
    not_evaluated: dict[str, str] = {}
    for kind in cfg.leaf_variables:
        kind_rows = rows.layers.get(kind, [])
        folds = _folds(len(kind_rows), cfg, rng)
        if folds is None:
            not_evaluated[kind] = (f"{len(kind_rows)} usable rows: too few to hold out 1/{cfg.folds} of them and "
                                   f"fit on >= {cfg.min_rows}")
            continue
        for test in folds:
            train = [r for r, t in zip(kind_rows, test) if not t]
            held = [r for r, t in zip(kind_rows, test) if t]
            measured = _y(held)
            for name, predictor in _fit_predictors(train, kind, cfg).items():
                points += _points("configurations", kind, name, measured, predictor.predict(held))
    points += _whole_model_points(rows.models, layer_predictors(rows, cfg), cfg)
    return Evaluation(_summarise(points, cfg.within), points, not_evaluated)


def layer_predictors(rows: Rows, cfg: FitLatencyParams, names: tuple[str, ...] = PREDICTORS) -> dict[str, dict]:
    """kind -> predictor name -> fitted on every row of the kind, or the fallback by the rule `fit_kinds` uses.

    Whole-model rows never reach layer fits, so these predict held-out models
    as the saved model would.
    """
    pool = [r for rs in rows.layers.values() for r in rs]
    predictors = {}
    for kind in cfg.leaf_variables:
        kind_rows = rows.layers.get(kind, [])
        if len(kind_rows) < cfg.min_rows:
            predictors[kind] = {name: _Fallback(pool) for name in names}
        else:
            predictors[kind] = _fit_predictors(kind_rows, kind, cfg, names)
    return predictors


def _folds(n: int, cfg: FitLatencyParams, rng: np.random.Generator) -> list[np.ndarray] | None:
    """`cfg.folds` disjoint test masks covering every row once; None if a fold would leave < min_rows to fit."""
    if n < cfg.folds or n - -(-n // cfg.folds) < cfg.min_rows:
        return None
    order = rng.permutation(n)
    masks = []
    for part in np.array_split(order, cfg.folds):
        mask = np.zeros(n, bool)
        mask[part] = True
        masks.append(mask)
    return masks


class _TreePredictor:
    def __init__(self, tree: LinearTree):
        self.tree = tree

    def predict(self, rows: list[dict]) -> np.ndarray:
        return self.tree.predict(matrix(rows, self.tree.split_variables), matrix(rows, self.tree.leaf_variables))


class _Fallback(_TreePredictor):
    def __init__(self, pool: list[dict]):
        super().__init__(fallback_tree(pool))


def _fit_predictors(train: list[dict], kind: str, cfg: FitLatencyParams,
                    names: tuple[str, ...] = PREDICTORS) -> dict:
    y = _y(train)
    makers = {
        "tree": lambda: _TreePredictor(fit_tree(train, kind, cfg, np.random.default_rng(cfg.seed))),
        "linear_flops": lambda: LinearFlops().fit(train, y),
        "boosted": lambda: Boosted(cfg.boosted, cfg.seed).fit(train, y),
        "forest": lambda: Forest(cfg.forest, cfg.seed).fit(train, y),
    }
    return {name: makers[name]() for name in names}


def _whole_model_points(models: list[tuple[ModelSpec, dict]], fitted: dict, cfg: FitLatencyParams,
                        predictors: tuple[str, ...] = PREDICTORS) -> list[dict]:
    if not models:
        return []
    y = _y([r for _, r in models])
    points = []
    for name in predictors:
        def predict_sum(kind: str, layers: list, name=name) -> float:
            return float(fitted[kind][name].predict([layer_values(layer) for layer in layers]).sum())

        sums = [_sums_by_kind(spec, predict_sum) for spec, _ in models]
        depths = [len(spec.computing) for spec, _ in models]
        predicted = np.empty(len(y))
        for i in range(len(y)):
            others = [j for j in range(len(y)) if j != i]
            overhead = fit_overhead([sums[j] for j in others], y[others], cfg, form_models=len(y),
                                    layers=[depths[j] for j in others])
            predicted[i] = overhead.apply(sums[i], depths[i])
            if name == "tree":  # the saved model's local correction, fitted on the other models too
                formula = np.array([overhead.apply(sums[j], depths[j]) for j in others])
                residuals = fit_residuals([models[j][0] for j in others], y[others], formula)
                predicted[i] *= residuals.factor(models[i][0])
        points += _points("whole models", "model", name, y, predicted)
    return points


def whole_model_scores(rows: Rows, cfg: FitLatencyParams) -> dict | None:
    """The tree's held-out whole-model scores alone (leave one model out): a cheap comparison of targets."""
    if not rows.models:
        return None
    points = _whole_model_points(rows.models, layer_predictors(rows, cfg, ("tree",)), cfg, ("tree",))
    measured = np.array([p["measured_ms"] for p in points])
    return scores(measured, np.array([p["predicted_ms"] for p in points]), cfg.within)


def _points(split: str, kind: str, predictor: str, measured: np.ndarray, predicted: np.ndarray) -> list[dict]:
    return [{"split": split, "kind": kind, "predictor": predictor, "measured_ms": float(m), "predicted_ms": float(p)}
            for m, p in zip(measured, predicted)]


def _summarise(points: list[dict], within: float) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for p in points:
        groups.setdefault((p["split"], p["kind"], p["predictor"]), []).append(p)
    table = []
    for (split, kind, predictor), ps in groups.items():
        measured = np.array([p["measured_ms"] for p in ps])
        predicted = np.array([p["predicted_ms"] for p in ps])
        table.append({"split": split, "kind": kind, "predictor": predictor, **scores(measured, predicted, within)})
    return table
