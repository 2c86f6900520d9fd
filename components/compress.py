"""Stage `compress`: the baseline, made small and fast for one device by DeepIoT's compressor-critic.

For a device: pick the cost (its fitted latency model by default, FastDeepIoT;
parameter count, DeepIoT; a microcontroller's MACs with its flash and SRAM
as hard limits) and say up front what the device can reach at all (one
element per layer, predicted and, on a timed device, measured: a budget
below it is not met, and the search aims at the best reachable instead).
Then run the compressor-critic search on the training users' windows,
distilling the baseline into the masked network (checkpointed: an
interrupted run resumes). Every accuracy decision (the floor, the candidate
selection, the fine-tune's early stop) is judged on train's validation
users: whole training users the compressed model is never trained on, each
user counting once, compared with the baseline user by user. With a latency
cost on a timed device, the latency model is made right where the search
went: the structures it visited are profiled once each, the model is
refitted on the profile table plus them, and the search goes on under it
(`compress.refit`); the cheapest front candidates at the accuracy floor,
each with FastDeepIoT's nudge, are then timed against the baseline in the
same rounds and the fastest *measured* one is taken (`compress.select`). The chosen structure is sliced into a smaller dense
model and fine-tuned (distilling the baseline), and compared with L1-norm
pruning and uniform scaling at the same budget, fine-tuned the same way
(`compress.baselines`). The budget is met when the fine-tuned model is
within it (measured where it was timed) and its accuracy on the validation
users is at or above the floor (the baseline's minus `max_accuracy_drop`);
otherwise the run ends with the best structure found and `budget_met:
false`, said plainly. Beside the model, a fallback one step back along the
search's path (`compress.fallback` times the aim, fine-tuned the same way)
is what validate deploys if the model misses only the accuracy gate.
On a timed device whose runtime has an int8 form, that form of the
fine-tuned model is a candidate too (pruning/quantized.py): timed and scored
on the validation users beside the float form, the faster at the floor is
what validate deploys (`deploy.json`).

Energy per inference (devices/energy.py: declared figures, so modelled
here; validate measures it where the device has a meter) is given for every
method. With `compress.energy_budget_mj` naming the device, the search aims
at the smaller of the latency budget and that energy over the baseline's
(modelled energy is proportional to latency), and the budget is met only
when the compressed model's energy is within it too.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from components.artifacts.atomic import atomic_directory, write_text_atomic
from components.config import ConfigError, Params
from components.pruning.candidates import Tuned, tune_candidates
from components.pruning.floor import Floor, floor_check
from components.pruning.quantized import DEPLOY_FILE, choose_form
from components.pruning.rounds import Checkpoint, Refit, refit_rounds, search_rounds
from components.pruning.selection import Fallback, Selection, fallback, select
from components.pruning.split import Split
from components.reports.compress import comparison_markdown
from components.reports.tables import interval_text
from components.stages import artifact_dir, output

if TYPE_CHECKING:
    from components.pruning.deepiot import DeepIoTSearch
    from components.stages import Place

STAGE = "compress"
FALLBACK_DIR = "fallback"  # beside model/: the structure one step back along the search's path, fine-tuned
FORMS_DIR = "forms"  # beside model/: the float and int8 files run on the device (manifest, logs)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CompressResult:
    device: str
    model_dir: Path
    metrics: dict
    run_id: str


def run(params: Params, device_name: str, *, ingest: Path, train: Path, profile: Path, fit_latency: Path,
        out: Place, pipeline_key: str | None = None) -> CompressResult:
    """Compress train's baseline for one device on ingest's windows, steered by the device's latency model.

    `profile`: the device's profile folder (its table seeds the refit rounds); `fit_latency`: its latency model's.
    """
    import torch

    from components import models
    from components.data.windows import load_windows, make_folds
    from components.devices.pool import chosen
    from components.latency.model import load_in
    from components.pruning.groups import check_supported
    from components.pruning.split import split_users
    from components.tracking import runs as tracking

    cfg = params.compress
    (device,) = chosen(params, [device_name])
    reports, out = Path(out.report), Path(out.data)
    windows = load_windows(Path(ingest))
    baseline = models.load(Path(train) / "model")
    check_supported(baseline.spec)  # refuse up front what the compressor cannot slice
    latency_dir = Path(fit_latency)
    latency_model = load_in(latency_dir)  # None where fit_latency has not run (then only params can steer)
    cost = _cost(params, device, baseline.spec, latency_model, latency_dir)
    if cost.name not in cfg.budget:
        raise ConfigError(f"compress.budget has no entry for the {cost.name} cost (has {', '.join(cfg.budget)})")
    budget, energy = _budget(cfg, device, cost, baseline.spec)
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    data = split_users(windows, make_folds(windows.meta, params.train)[0], params.train, Path(train))
    bench = _bench(params, device, cost, out, Path(profile))
    with tracking.stage_run(params, STAGE, pipeline_key, device=device.name) as mlrun:
        mlrun.log_params({"compress": cfg.model_dump(), "device": device.name, "cost": cost.name,
                          "baseline.params": baseline.spec.params})
        mlrun.log_windows_input(windows, "training")
        started = time.perf_counter()
        done = _compress(params, device, baseline, cost, budget, latency_model, data, bench, out, mlrun)
        form = choose_form(params, device, Path(train) / "model", done.tuned["deepiot"].model, data,
                           done.search.s.accuracy_floor, out / FORMS_DIR)
        metrics = _metrics(done, cost, cfg, device, budget, energy, time.perf_counter() - started)
        metrics["deployed"] = form.to_dict()
        write_text_atomic(output(out, STAGE, DEPLOY_FILE), json.dumps(form.to_dict(), indent=2))
        with atomic_directory(out / "model") as staging:
            models.save(done.tuned["deepiot"].model, staging)
        if "fallback" in done.tuned:  # what validate deploys if the model misses only the accuracy gate
            with atomic_directory(out / FALLBACK_DIR) as staging:
                models.save(done.tuned["fallback"].model, staging)
        else:  # an earlier run's fallback is not this model's
            shutil.rmtree(out / FALLBACK_DIR, ignore_errors=True)
        if done.latency_model is not None:  # the model it steered by last (refitted on what it visited)
            from components.latency.model import REFITTED_DIR, save_in

            with atomic_directory(out / REFITTED_DIR, sealed=True) as staging:
                save_in(staging, done.latency_model)
        artifacts = _write_report(done.search, metrics, device.name, reports)
        # the run's Models column, loadable by models:/<model_id>; its metrics are linked to it
        model_id = mlrun.log_model_folder(out / "model", f"compressed-{device.name}", {
            "device": device.name, "cost": cost.name, "budget_met": str(metrics["budget_met"]).lower(),
            "data_hash": windows.card.get("data_hash", "")})
        mlrun.log_metrics(_flat_numbers({k: v for k, v in metrics.items() if k != "fallback"}), model_id=model_id)
        mlrun.set_tags({"cost": cost.name, "budget_met": str(metrics["budget_met"]).lower()})
        for path in [*sorted((out / "model").iterdir()), *artifacts, out / DEPLOY_FILE]:
            mlrun.log_artifact(path, artifact_dir(STAGE, device.name))
        if "fallback" in done.tuned:
            fallback_id = mlrun.log_model_folder(out / FALLBACK_DIR, f"compressed-{device.name}-fallback", {
                "device": device.name, "cost": cost.name, "role": "fallback",
                "data_hash": windows.card.get("data_hash", "")})
            mlrun.log_metrics(_flat_numbers({"fallback": metrics["fallback"]}), model_id=fallback_id)
            for path in sorted((out / FALLBACK_DIR).iterdir()):
                mlrun.log_artifact(path, f"{artifact_dir(STAGE, device.name)}/{FALLBACK_DIR}")
        _say(device.name, metrics)
        return CompressResult(device.name, out / "model", metrics, mlrun.run_id)


def _bench(params: Params, device, cost, out: Path, profile_dir: Path):
    """The device's timing setup for the refit rounds and the measured selection: latency cost, timed device."""
    from components.devices.base import get_backend

    if cost.name != "latency" or not get_backend(device.runtime).timed:
        return None
    cfg = params.compress
    if cfg.refit.rounds <= 0 and cfg.select.candidates <= 0:
        return None
    from components.profiling.sampler import reference_item
    from components.profiling.table import TABLE_FILE
    from components.pruning.on_device import LOG_DIR, DeviceBench

    table = profile_dir / TABLE_FILE
    return DeviceBench(params, device, reference_item(params), out / LOG_DIR, table)


def _budget(cfg, device, cost, spec) -> tuple[float, dict]:
    """The relative budget the search aims at (the cost's, or tighter where the device has an energy budget), and
    the energy budget's figures ({} without one)."""
    from components.devices.energy import energy_per_inference

    budget, limit_mj = cfg.budget[cost.name], cfg.energy_budget_mj.get(device.name)
    if limit_mj is None:
        return budget, {}
    if cost.name == "params":
        raise ConfigError(f"compress.energy_budget_mj.{device.name}: an energy budget steers by latency; "
                          "set compress.cost: latency (or drop the device's energy budget)")
    base = energy_per_inference(device, cost.value(spec))
    if base["energy_mj"] is None:
        raise ConfigError(f"compress.energy_budget_mj.{device.name}: {base['energy_source']}")
    aim = limit_mj / base["energy_mj"]
    log.info("%s: energy budget %g mJ per inference is %.3f of the baseline's %.4g mJ (%s)%s", device.name,
             limit_mj, aim, base["energy_mj"], base["energy_source"],
             f": tighter than the {cost.name} budget {budget}" if aim < budget else "")
    return min(budget, aim), {"budget_mj": limit_mj, "aim": aim}


def _cost(params: Params, device, spec, latency_model, latency_dir: Path):
    from components.devices.base import get_backend
    from components.pruning.costs import ComputedCost, LatencyCost, ParamsCost

    backend = get_backend(device.runtime)
    if not backend.timed:  # its figures are computed: steer by them, within the part's limits
        return ComputedCost(spec, backend, device)
    if params.compress.cost == "params":
        return ParamsCost(spec)
    if latency_model is None:
        raise ConfigError(f"device {device.name}: no latency model in {latency_dir}; "
                          f"run `python -m components fit_latency --device {device.name}` "
                          "(or set compress.cost: params)")
    return LatencyCost(spec, latency_model, device.name)


@dataclass
class Compressed:
    """What the steps made: each candidate fine-tuned and scored, and how the search got there."""

    tuned: dict[str, Tuned]  # baseline, deepiot, [fallback], [l1], [uniform]
    search: DeepIoTSearch
    floor: Floor
    refit: list[dict]
    selection: Selection
    fallback: Fallback
    latency_model: object  # the model the search steered by last (None: a parameter or computed cost)
    validation: dict  # which users the decisions rest on


def _compress(params: Params, device, baseline, cost, budget: float, latency_model, data: Split, bench, out: Path,
              mlrun) -> Compressed:
    """Floor check, search rounds (with refit rounds on a timed device), selection, fallback, fine-tune.

    `bench` (a DeviceBench; latency cost on a timed device only) is what makes
    the refit rounds and the measured selection possible; without it the
    search's last kept structure is taken, nudged on the model's word.
    """
    import copy

    from components.pruning.deepiot import DeepIoTSearch, Schedule, SearchSettings
    from components.pruning.finetune import accuracy

    cfg, s = params.compress, params.compress.search
    augmentation = params.train if cfg.augment else None  # train's rotation, scale and noise
    floor_accuracy = accuracy(baseline, data.x_val, data.y_val, data.users_val) - cfg.max_accuracy_drop
    settings = SearchSettings(budget, floor_accuracy, s.lambda_cost, s.critic_decay, Schedule(**s.threshold.model_dump()),
                              s.max_steps, s.batch_size, s.learning_rate, s.compressor_learning_rate,
                              s.compressor_hidden, s.init_keep, s.eval_every, cfg.seed, s.distill,
                              cfg.fine_tune.temperature, s.remove_layers)
    search = DeepIoTSearch(copy.deepcopy(baseline), cost, data.x_fit, data.y_fit, data.x_val, data.y_val, settings,
                           augmentation, teacher=baseline if s.distill > 0 else None, val_users=data.users_val)
    floor = floor_check(search, bench, baseline, budget, cost)
    if bench is not None and cfg.budget_margin > 0:  # judged on a measurement: a margin
        floor.aim *= 1 - cfg.budget_margin
    if floor.aim != budget:  # said up front: the search aims at the best the device can reach
        search.s = replace(search.s, budget=floor.aim)
    fingerprint = json.dumps({"compress": cfg.model_dump(), "cost": cost.name, "baseline": baseline.spec.to_json(),
                              "latency_model": latency_model.to_dict() if cost.name == "latency" else None},
                             sort_keys=True)
    steering = Refit(latency_model)

    def progress(record):
        if record.accuracy is not None:
            log.info("search step %d: threshold %.2f, kept cost %.3f (aim %.3f), validation accuracy %.3f "
                     "(floor %.3f)", record.step, record.threshold, record.kept_cost, search.s.budget,
                     record.accuracy, floor_accuracy)
            figures = {"search.kept_cost": record.kept_cost, "search.accuracy": record.accuracy,
                       "search.kept_params": record.kept_params, "search.budget": search.s.budget}
            if steering.latency_model is not None:
                figures["search.predicted_latency_ms"] = steering.latency_model.predict_model(search.kept_spec())
            mlrun.log_metrics(figures, step=record.step)

    more = search_rounds(search, Checkpoint(out / "checkpoint.pt", fingerprint, s.checkpoint_every), progress)
    if bench is not None:
        steering = refit_rounds(search, bench, baseline, latency_model, cfg, params, device, more)
        cost = search.cost
    selection = select(search, cost, bench, baseline, cfg, floor_accuracy)
    back = fallback(search, selection.keep, cost, bench, baseline, cfg, floor)
    tuned = tune_candidates(search, selection.keep, back.keep, baseline, cost, cfg, data, augmentation,
                            steering.latency_model)
    if selection.chosen is not None:
        tuned["deepiot"].figures["measured_ratio"] = selection.chosen["measured_ratio"]
    if "fallback" in tuned and back.measured_ratio is not None:
        tuned["fallback"].figures["measured_ratio"] = back.measured_ratio
    return Compressed(tuned, search, floor, steering.rounds, selection, back, steering.latency_model, data.validation)


def _metrics(done: Compressed, cost, cfg, device, budget: float, energy: dict, wall_s: float) -> dict:
    """The run's figures; the budget is met when the fine-tuned model is within it *and* above the floor.

    Where the chosen structure was timed on the device, "within" is judged on
    its measured ratio to the baseline, not on the prediction. `budget`: the
    relative aim (the energy budget's where it is tighter), `energy`: its figures.
    """
    _add_energy(done.tuned, device)
    device = device.name
    deepiot, base = done.tuned["deepiot"].figures, done.tuned["baseline"].figures
    floor = done.search.s.accuracy_floor
    reached = deepiot.get("measured_ratio", deepiot["relative_cost"])
    # a measurement is judged within its repeatability: ratios timed together repeat within ~1 %
    allowed = budget * (1 + cfg.measured_tolerance) if "measured_ratio" in deepiot else budget
    within = reached <= allowed + 1e-9 and deepiot["fits"]
    energy_figures = _energy_metrics(deepiot, base, energy, allowed / budget)
    met = within and deepiot["val_accuracy"] >= floor and energy_figures.get("met", True)
    why = ""
    if within and not energy_figures.get("met", True):
        why = (f"energy {energy_figures['compressed_mj']:.4g} mJ per inference is over the budget "
               f"{energy['budget_mj']:g} mJ")
        log.warning("%s: BUDGET NOT MET: %s", device, why)
    elif not met:
        what = "measured" if "measured_ratio" in deepiot else "predicted"
        why = (f"validation accuracy {deepiot['val_accuracy']:.3f} is below the floor {floor:.3f}" if within else
               f"the compressed model is at {reached:.4f} of the baseline's {cost.name} ({what}"
               + (f"; {100 * cfg.measured_tolerance:.0f} % over the budget is within timing noise)"
                  if what == "measured" else ")")
               + ("" if deepiot["fits"] else " and does not fit the part's flash or SRAM"))
        if done.floor.above_budget:
            why += f"; the device cannot reach the budget (floor {done.floor.predicted:.3f}, said up front)"
        log.warning("%s: BUDGET NOT MET (budget %.3f of the baseline's %s): %s; the best structure found is kept",
                    device, budget, cost.name, why)
    return {
        "device": device, "cost": cost.name, "budget": budget, "budget_met": met, "budget_not_met": why,
        "accuracy_floor": floor, "cost_floor": done.search.cost_floor,
        "floor": done.floor.to_dict(), "refit": done.refit, "selection": done.selection.to_dict(),
        "measured_ratio": deepiot.get("measured_ratio"),
        "energy": energy_figures,
        "search_steps": done.search.step_index, "wall_s": round(wall_s, 1),
        "accuracy_change": deepiot["test_accuracy"] - base["test_accuracy"],
        "accuracy_change_ci": _paired(deepiot, base),
        "validation": done.validation,
        "val_accuracy_change_ci": _paired(deepiot, base, "val_accuracy_per_user"),
        "params_kept": deepiot["params"] / base["params"],
        "methods": {name: t.figures for name, t in done.tuned.items() if name != "fallback"},
        "fallback": _fallback_metrics(done, base),
    }


def _add_energy(tuned: dict, device) -> None:
    """Each method's energy per inference, modelled from its latency (computed, or predicted; the chosen one's
    from the baseline's times its measured ratio where it was timed)."""
    from components.devices.energy import energy_per_inference

    base = tuned["baseline"].figures
    base_latency = base.get("latency_ms", base.get("predicted_latency_ms"))
    base |= energy_per_inference(device, base_latency)
    for name, t in tuned.items():
        if name == "baseline":
            continue
        f = t.figures
        latency = f.get("latency_ms", f.get("predicted_latency_ms"))
        if "measured_ratio" in f and base.get("energy_mj") is not None:
            latency = base_latency * f["measured_ratio"]
        f |= energy_per_inference(device, latency)
        if "measured_ratio" in f and f.get("energy_mj") is not None:
            f["energy_source"] += " (the baseline's latency x the measured ratio)"


def _energy_metrics(model: dict, base: dict, energy: dict, slack: float = 1.0) -> dict:
    """The chosen model's energy per inference against the baseline's, and against the energy budget if any (met
    within the `slack` a measured latency ratio gets)."""
    out = {"compressed_mj": model.get("energy_mj"), "baseline_mj": base.get("energy_mj"),
           "source": model.get("energy_source")}
    if out["compressed_mj"] is not None and out["baseline_mj"]:
        out["ratio"] = out["compressed_mj"] / out["baseline_mj"]
    if energy:
        out |= energy | {"met": out["compressed_mj"] is not None
                         and out["compressed_mj"] <= energy["budget_mj"] * slack * (1 + 1e-9)}
    return out


def _fallback_metrics(done: Compressed, base: dict) -> dict:
    """The fallback's figures beside the chosen model's (validate deploys it only after a missed accuracy gate)."""
    if "fallback" not in done.tuned:
        return done.fallback.to_dict()
    figures = done.tuned["fallback"].figures
    return {"aim": done.fallback.aim, "share": done.fallback.share, **figures, "timed": done.fallback.timed,
            "accuracy_change_ci": _paired(figures, base),
            "val_accuracy_change_ci": _paired(figures, base, "val_accuracy_per_user")}


def _paired(model: dict, base: dict, key: str = "test_accuracy_per_user") -> dict:
    """The model's accuracy minus the baseline's, user by user (held-out users; `val_accuracy_per_user`: the
    validation users), with its interval; empty where there are no users."""
    from components.stats.intervals import paired_ci

    if key not in model or key not in base:
        return {}
    return paired_ci(model[key], base[key])


def _write_report(search, metrics: dict, device: str, reports: Path) -> list[Path]:
    from components.pruning import plots

    reports.mkdir(parents=True, exist_ok=True)
    write_text_atomic(reports / "metrics.json", json.dumps(metrics, indent=2))
    write_text_atomic(reports / "comparison.md", comparison_markdown(device, metrics))
    return [reports / "metrics.json", reports / "comparison.md",
            plots.trajectory_png(search.history, metrics, reports / "trajectory.png"),
            plots.pareto_png(metrics, reports / "pareto.png", search.history)]


def _flat_numbers(metrics: dict) -> dict:
    from components.tracking.runs import flatten

    return {k: float(v) for k, v in flatten(metrics).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)}


def reached(metrics: dict) -> str:
    """The relative cost the run reached: measured on the device where it was timed, else predicted."""
    if metrics.get("measured_ratio") is not None:
        return f"{metrics['measured_ratio']:.3f} measured"
    return f"{metrics['methods']['deepiot']['relative_cost']:.3f} predicted"


def _say(device: str, metrics: dict) -> None:
    d = metrics["methods"]["deepiot"]
    log.info("%s: %s; %d parameters (%.1f %% of the baseline), %s %s of the baseline's, test accuracy %.3f "
             "(change per held-out user %s; per validation user %s)", device,
             "budget met" if metrics["budget_met"] else "BUDGET NOT MET", d["params"], 100 * metrics["params_kept"],
             metrics["cost"], reached(metrics), d["test_accuracy"], interval_text(metrics["accuracy_change_ci"], 4),
             interval_text(metrics.get("val_accuracy_change_ci") or {}, 4))
    removed = [name for name, width in d["widths"].items() if width == 0]
    if removed:
        log.info("%s: layers removed whole: %s", device, ", ".join(removed))
    energy = metrics.get("energy") or {}
    if energy.get("ratio") is not None:
        log.info("%s: energy %.4g mJ per inference, %.3f of the baseline's (%s)", device, energy["compressed_mj"],
                 energy["ratio"], energy["source"])


def summary(result: CompressResult) -> str:
    """A budget not met is a result (said plainly in the line), not a failure."""
    m, d = result.metrics, result.metrics["methods"]["deepiot"]
    verdict = "budget met" if m["budget_met"] else f"BUDGET NOT MET: {m.get('budget_not_met') or 'see the log'}"
    form = (m.get("deployed") or {}).get("format")
    return (f"compress {result.device}: {verdict} "
            f"({m['cost']} {reached(m)} of the baseline's, budget {m['budget']}); "
            + (f"deploys {form}; " if form else "") +
            f"{d['params']} parameters, test accuracy {d['test_accuracy']:.3f} ({m['accuracy_change']:+.3f}) "
            f"-> {result.model_dir} (MLflow run {result.run_id})")
