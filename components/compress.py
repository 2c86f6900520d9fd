"""Stage `compress`: the baseline, made small and fast for one device by DeepIoT's compressor-critic.

For a device: pick the cost (its fitted latency model by default, FastDeepIoT;
parameter count, DeepIoT; a microcontroller's MACs with its flash and SRAM
as hard limits), run the compressor-critic search on the training windows
(checkpointed: an interrupted run resumes), nudge widths up to ones predicted
no slower (latency cost), slice the kept elements into a smaller dense model,
fine-tune it (distilling the baseline if asked), and compare with L1-norm
pruning and uniform scaling at the same budget, fine-tuned the same way. The
budget is met when the fine-tuned model is within it and its validation
accuracy is at or above the floor (the baseline's minus
`max_accuracy_drop`); otherwise the run ends with the best structure found
and `budget_met: false`, said plainly, and a budget below what width pruning
can reach on the device (fixed per-layer costs) is warned about up front.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from components.config import ConfigError, Params
from components.data.outputs import atomic_directory, write_text_atomic
from components.evaluation import interval_text

STAGE = "compress"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompressResult:
    device: str
    model_dir: Path
    metrics: dict
    run_id: str


def run(params: Params, device_name: str, baseline_dir: Path | None = None, ingest_dir: Path | None = None,
        latency_dir: Path | None = None, output_dir: Path | None = None, report_dir: Path | None = None,
        pipeline_key: str | None = None) -> CompressResult:
    import torch

    from components import models, profile, tracking
    from components.train import load_windows, make_folds

    cfg = params.compress
    (device,) = profile.devices(params, [device_name])
    out = Path(output_dir) if output_dir else params.path(cfg.output_dir) / device.name
    reports = Path(report_dir) if report_dir else params.path(cfg.report_dir) / device.name
    windows = load_windows(Path(ingest_dir) if ingest_dir else params.path(params.ingest.output_dir))
    baseline = models.load(Path(baseline_dir) if baseline_dir else params.path(params.train.output_dir) / "model")
    from components.pruning.groups import check_supported

    check_supported(baseline.spec)  # refuse up front what the compressor cannot slice
    latency_model = device_latency_model(params, device, latency_dir)
    cost = _cost(params, device, baseline.spec, latency_model, latency_dir)
    if cost.name not in cfg.budget:
        raise ConfigError(f"compress.budget has no entry for the {cost.name} cost (has {', '.join(cfg.budget)})")
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    data = _data(windows, make_folds(windows.meta, params.train)[0], cfg)
    with tracking.stage_run(params, STAGE, pipeline_key, device=device.name) as mlrun:
        mlrun.log_params({"compress": asdict(cfg), "device": device.name, "cost": cost.name,
                          "baseline.params": baseline.spec.params})
        started = time.perf_counter()
        augmentation = params.train if cfg.augment else None  # train's rotation, scale and noise
        results, search = _compress(baseline, cost, latency_model, data, cfg, augmentation, out, mlrun)
        metrics = _metrics(results, search, cost, cfg, device.name, time.perf_counter() - started)
        with atomic_directory(out / "model") as staging:
            models.save(results["deepiot"]["model"], staging)
        artifacts = _write_report(results, search, metrics, device.name, reports)
        mlrun.log_metrics({k: v for k, v in _flat_numbers(metrics).items()})
        mlrun.set_tags({"cost": cost.name, "budget_met": str(metrics["budget_met"]).lower()})
        for path in [*sorted((out / "model").iterdir()), *artifacts]:
            mlrun.log_artifact(path, f"compress/{device.name}")
        _say(device.name, metrics)
        return CompressResult(device.name, out / "model", metrics, mlrun.run_id)


def _latency_path(params: Params, device, latency_dir: Path | None) -> Path:
    folder = Path(latency_dir) if latency_dir else params.path(params.fit_latency.output_dir) / device.name
    return folder / "latency_model.json"


def device_latency_model(params: Params, device, latency_dir: Path | None):
    """The device's fitted latency model, or None where fit_latency has not run (then only params can steer)."""
    from components.latency.model import load

    path = _latency_path(params, device, latency_dir)
    return load(path) if path.exists() else None


def _cost(params: Params, device, spec, latency_model, latency_dir: Path | None = None):
    from components.pruning.costs import LatencyCost, McuCost, ParamsCost

    if device.mcu is not None:
        return McuCost(spec, device.mcu)
    if params.compress.cost == "params":
        return ParamsCost(spec)
    if latency_model is None:
        raise ConfigError(f"device {device.name}: no latency model at {_latency_path(params, device, latency_dir)}; "
                          f"run `python -m components fit_latency --device {device.name}` "
                          "(or set compress.cost: params)")
    return LatencyCost(spec, latency_model, device.name)


@dataclass
class _Data:
    x_fit: object
    y_fit: object
    x_val: object
    y_val: object
    x_test: object
    y_test: object
    users_test: np.ndarray  # the held-out user of each test window


def _data(windows, fold, cfg) -> _Data:
    import torch

    from components.training import validation_split

    labels = windows.meta["label"].to_numpy().astype(np.int64)
    fit_idx, val_idx = validation_split(labels[fold.train], cfg.val_fraction, cfg.seed)
    fit_idx, val_idx = fold.train[fit_idx], fold.train[val_idx]

    def tensors(idx):
        return (torch.from_numpy(np.ascontiguousarray(windows.x[idx], dtype=np.float32)),
                torch.from_numpy(labels[idx]))

    users = windows.meta["user"].to_numpy().astype(str)
    return _Data(*tensors(fit_idx), *tensors(val_idx), *tensors(fold.test), users[fold.test])


def _compress(baseline, cost, latency_model, data: _Data, cfg, augmentation, out: Path, mlrun
              ) -> tuple[dict, object]:
    import copy

    import torch

    from components.pruning.baselines import l1_keep, uniform_widths
    from components.pruning.deepiot import DeepIoTSearch, Schedule, SearchSettings
    from components.pruning.finetune import FineTuneSettings, accuracy, fine_tune
    from components.pruning.slicing import slice_model

    floor = accuracy(baseline, data.x_val, data.y_val) - cfg.max_accuracy_drop
    s = cfg.search
    budget = cfg.budget[cost.name]
    settings = SearchSettings(budget, floor, s.lambda_cost, s.critic_decay, Schedule(**asdict(s.threshold)),
                              s.max_steps, s.batch_size, s.learning_rate, s.compressor_learning_rate,
                              s.compressor_hidden, s.init_keep, s.eval_every, cfg.seed)
    search = DeepIoTSearch(copy.deepcopy(baseline), cost, data.x_fit, data.y_fit, data.x_val, data.y_val, settings,
                           augmentation)
    if budget < search.cost_floor:
        log.warning("budget %.3f of the baseline's %s is below what width pruning can reach on this device (%.3f "
                    "with one element per layer: fixed per-layer costs); the search will end with BUDGET NOT MET",
                    budget, cost.name, search.cost_floor)
    checkpoint = out / "checkpoint.pt"
    fingerprint = json.dumps({"compress": asdict(cfg), "cost": cost.name, "baseline": baseline.spec.to_json(),
                              "latency_model": latency_model.to_dict() if cost.name == "latency" else None},
                             sort_keys=True)
    if checkpoint.exists():  # written by this stage only; tensors and numbers, no code
        state = torch.load(checkpoint, weights_only=True)
        if state.get("fingerprint") == fingerprint:
            search.restore(state)
            log.info("resuming the search from %s at step %d", checkpoint, search.step_index)
        else:
            log.warning("%s is from other settings or another baseline; starting the search afresh", checkpoint)
    out.mkdir(parents=True, exist_ok=True)

    def save(state):
        tmp = checkpoint.with_suffix(".tmp")
        torch.save(state | {"fingerprint": fingerprint}, tmp)
        tmp.replace(checkpoint)

    def progress(record):
        if record.accuracy is not None:
            log.info("search step %d/%d: threshold %.2f, kept cost %.3f (budget %.3f), validation accuracy %.3f "
                     "(floor %.3f)", record.step, s.max_steps, record.threshold, record.kept_cost, budget,
                     record.accuracy, floor)
            figures = {"search.kept_cost": record.kept_cost, "search.accuracy": record.accuracy,
                       "search.kept_params": record.kept_params, "search.budget": budget}
            if latency_model is not None:
                figures["search.predicted_latency_ms"] = latency_model.predict_model(search.kept_spec())
            mlrun.log_metrics(figures, step=record.step)

    search.run(progress, save, s.checkpoint_every)
    keep = search.kept()
    if cost.name == "latency" and cfg.nudge_radius > 0:
        keep = _nudged(search, keep, cost, cfg.nudge_radius)
    tune = FineTuneSettings(cfg.fine_tune.epochs, cfg.fine_tune.patience, cfg.fine_tune.batch_size,
                            cfg.fine_tune.learning_rate, cfg.fine_tune.distill, cfg.fine_tune.temperature, cfg.seed)
    candidates = {"deepiot": slice_model(search.model, keep)}
    # the baselines get the cost the search reached (the budget, or more where it was not met): same footing
    target = max(budget, cost.relative(candidates["deepiot"].spec))
    if "l1" in cfg.baselines:
        candidates["l1"] = slice_model(baseline, l1_keep(baseline, cost, target))
    if "uniform" in cfg.baselines:
        widths = uniform_widths(baseline.spec, cost, target)
        scores = _l1_order(baseline)
        candidates["uniform"] = slice_model(baseline, {k: scores[k][:w] for k, w in widths.items()})
    results = {"baseline": _describe(baseline, cost, latency_model, data)}
    for name, model in candidates.items():
        log.info("fine-tuning %s (%d parameters)", name, model.spec.params)
        model, epochs = fine_tune(model, data.x_fit, data.y_fit, data.x_val, data.y_val, tune,
                                  teacher=baseline if tune.distill > 0 else None, label=f"[{name}] ",
                                  augmentation=augmentation)
        results[name] = _describe(model, cost, latency_model, data) | {"model": model, "fine_tune_epochs": epochs}
    return results, search


def _nudged(search, keep: dict, cost, radius: int) -> dict:
    """FastDeepIoT's nudge: widths up to a width predicted no slower, adding back the most-wanted elements."""
    import torch

    from components.pruning.baselines import nudge_widths

    widths = nudge_widths(search.spec, {k: len(v) for k, v in keep.items()}, cost, radius)
    probs = [p.detach() for p in search.compressor()]
    nudged = {}
    for (name, kept), p in zip(keep.items(), probs):
        extra = widths[name] - len(kept)
        if extra > 0:
            removed = torch.tensor([i for i in range(len(p)) if i not in set(kept.tolist())])
            best = removed[torch.argsort(p[removed], descending=True)[:extra]]
            kept = torch.sort(torch.cat([kept, best])).values
        nudged[name] = kept
    return nudged


def _l1_order(model) -> dict:
    import torch

    from components.pruning.baselines import element_scores

    return {k: torch.argsort(v, descending=True) for k, v in element_scores(model).items()}


def _describe(model, cost, latency_model, data: _Data) -> dict:
    from components.evaluation import mean_ci
    from components.pruning.finetune import accuracy, predictions

    predicted = {} if latency_model is None else {"predicted_latency_ms": latency_model.predict_model(model.spec)}
    right = (predictions(model, data.x_test) == data.y_test).numpy()
    per_user = {u: float(right[data.users_test == u].mean()) for u in sorted(set(data.users_test.tolist()))}
    test = mean_ci(per_user)
    return {"params": model.spec.params, "macs": model.spec.macs, "relative_cost": cost.relative(model.spec),
            **predicted,
            **cost.describe(model.spec), "fits": cost.fits(model.spec),
            "test_accuracy": test["mean"], "test_accuracy_ci": test, "test_accuracy_per_user": per_user,
            "val_accuracy": accuracy(model, data.x_val, data.y_val),
            "widths": {layer.name: layer.out_features for layer in model.spec.layers}}


def _metrics(results: dict, search, cost, cfg, device: str, wall_s: float) -> dict:
    """The run's figures; the budget is met when the fine-tuned model is within it *and* above the floor."""
    budget = cfg.budget[cost.name]
    deepiot, base = results["deepiot"], results["baseline"]
    floor = search.s.accuracy_floor
    within = deepiot["relative_cost"] <= budget + 1e-9 and deepiot["fits"]
    met = within and deepiot["val_accuracy"] >= floor
    if not met:
        why = (f"validation accuracy {deepiot['val_accuracy']:.3f} is below the floor {floor:.3f}" if within else
               f"the compressed model is at {deepiot['relative_cost']:.3f} of the baseline's {cost.name}"
               + ("" if deepiot["fits"] else " and does not fit the part's flash or SRAM"))
        log.warning("%s: BUDGET NOT MET (budget %.3f of the baseline's %s): %s; the best structure found is kept",
                    device, budget, cost.name, why)
    return {
        "device": device, "cost": cost.name, "budget": budget, "budget_met": met,
        "accuracy_floor": floor, "cost_floor": search.cost_floor,
        "search_steps": search.step_index, "wall_s": round(wall_s, 1),
        "accuracy_change": deepiot["test_accuracy"] - base["test_accuracy"],
        "accuracy_change_ci": _paired(deepiot, base),
        "params_kept": deepiot["params"] / base["params"],
        "methods": {name: {k: v for k, v in r.items() if k != "model"} for name, r in results.items()},
    }


def _paired(model: dict, base: dict) -> dict:
    """The model's test accuracy minus the baseline's, user by user over the held-out users, with its interval."""
    from components.evaluation import paired_ci

    return paired_ci(model["test_accuracy_per_user"], base["test_accuracy_per_user"])


def _write_report(results: dict, search, metrics: dict, device: str, reports: Path) -> list[Path]:
    from components.pruning import plots

    reports.mkdir(parents=True, exist_ok=True)
    write_text_atomic(reports / "metrics.json", json.dumps(metrics, indent=2))
    write_text_atomic(reports / "comparison.md", comparison_markdown(device, metrics))
    return [reports / "metrics.json", reports / "comparison.md",
            plots.trajectory_png(search.history, metrics, reports / "trajectory.png"),
            plots.pareto_png(metrics, reports / "pareto.png", search.history)]


def comparison_markdown(device: str, metrics: dict) -> str:
    methods = metrics["methods"]
    latency = all("predicted_latency_ms" in r for r in methods.values())
    lines = [f"# {device}: compression at budget {metrics['budget']} of the baseline's {metrics['cost']} "
             f"({'met' if metrics['budget_met'] else 'NOT MET'})", "",
             f"Test accuracy is the mean over {methods['baseline']['test_accuracy_ci']['users']} held-out users; "
             f"DeepIoT's change against the baseline, user by user: "
             f"{interval_text(metrics['accuracy_change_ci'], 4)}.", "",
             f"Accuracy floor (validation): {metrics['accuracy_floor']:.3f}; the lowest {metrics['cost']} width "
             f"pruning can reach: {metrics['cost_floor']:.3f} of the baseline's.", "",
             "| method | params | relative cost |" + (" predicted ms |" if latency else "")
             + " test accuracy (95 % CI over users) | validation accuracy | fits |",
             "|---|---|---|" + ("---|" if latency else "") + "---|---|---|"]
    for name, r in methods.items():
        lines.append(f"| {name} | {r['params']} | {r['relative_cost']:.3f} | "
                     + (f"{r['predicted_latency_ms']:.3f} | " if latency else "")
                     + f"{_with_ci(r['test_accuracy_ci'])} | {r['val_accuracy']:.3f} | {r['fits']} |")
    return "\n".join(lines) + "\n"


def _with_ci(ci: dict) -> str:
    if ci["users"] < 2:
        return f"{ci['mean']:.3f}"
    return f"{ci['mean']:.3f} ({ci['low']:.3f} to {ci['high']:.3f})"


def _flat_numbers(metrics: dict) -> dict:
    from components.tracking import flatten

    return {k: float(v) for k, v in flatten(metrics).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)}


def _say(device: str, metrics: dict) -> None:
    d = metrics["methods"]["deepiot"]
    log.info("%s: %s; %d parameters (%.1f %% of the baseline), %s %.3f of the baseline's, test accuracy %.3f "
             "(change per held-out user %s)", device, "budget met" if metrics["budget_met"] else "BUDGET NOT MET",
             d["params"], 100 * metrics["params_kept"], metrics["cost"], d["relative_cost"], d["test_accuracy"],
             interval_text(metrics["accuracy_change_ci"], 4))
