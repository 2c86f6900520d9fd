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
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from components.artifacts.atomic import atomic_directory, write_text_atomic
from components.config import ConfigError, Params
from components.stats.intervals import interval_text

if TYPE_CHECKING:
    from components.stages import Place

STAGE = "compress"
FALLBACK_DIR = "fallback"  # beside model/: the structure one step back along the search's path, fine-tuned
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
    from components.tracking import runs as tracking

    cfg = params.compress
    (device,) = chosen(params, [device_name])
    reports, out = Path(out.report), Path(out.data)
    windows = load_windows(Path(ingest))
    baseline = models.load(Path(train) / "model")
    from components.pruning.groups import check_supported

    check_supported(baseline.spec)  # refuse up front what the compressor cannot slice
    latency_dir = Path(fit_latency)
    latency_model = load_in(latency_dir)  # None where fit_latency has not run (then only params can steer)
    cost = _cost(params, device, baseline.spec, latency_model, latency_dir)
    if cost.name not in cfg.budget:
        raise ConfigError(f"compress.budget has no entry for the {cost.name} cost (has {', '.join(cfg.budget)})")
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    data = _data(windows, make_folds(windows.meta, params.train)[0], params.train, Path(train))
    bench = _bench(params, device, cost, out, Path(profile))
    with tracking.stage_run(params, STAGE, pipeline_key, device=device.name) as mlrun:
        mlrun.log_params({"compress": asdict(cfg), "device": device.name, "cost": cost.name,
                          "baseline.params": baseline.spec.params})
        mlrun.log_windows_input(windows, "training")
        started = time.perf_counter()
        augmentation = params.train if cfg.augment else None  # train's rotation, scale and noise
        results, search, extra = _compress(baseline, cost, latency_model, data, cfg, augmentation, out, mlrun,
                                           bench, params, device)
        metrics = _metrics(results, search, cost, cfg, device.name, time.perf_counter() - started, extra)
        with atomic_directory(out / "model") as staging:
            models.save(results["deepiot"]["model"], staging)
        if "fallback" in results:  # what validate deploys if the model misses only the accuracy gate
            with atomic_directory(out / FALLBACK_DIR) as staging:
                models.save(results["fallback"]["model"], staging)
        else:  # an earlier run's fallback is not this model's
            shutil.rmtree(out / FALLBACK_DIR, ignore_errors=True)
        if extra["latency_model"] is not None:  # the model it steered by last (refitted on what it visited)
            from components.latency.model import REFITTED_DIR, save_in

            with atomic_directory(out / REFITTED_DIR, sealed=True) as staging:
                save_in(staging, extra["latency_model"])
        artifacts = _write_report(results, search, metrics, device.name, reports)
        # the run's Models column, loadable by models:/<model_id>; its metrics are linked to it
        model_id = mlrun.log_model_folder(out / "model", f"compressed-{device.name}", {
            "device": device.name, "cost": cost.name, "budget_met": str(metrics["budget_met"]).lower(),
            "data_hash": windows.card.get("data_hash", "")})
        mlrun.log_metrics(_flat_numbers({k: v for k, v in metrics.items() if k != "fallback"}), model_id=model_id)
        mlrun.set_tags({"cost": cost.name, "budget_met": str(metrics["budget_met"]).lower()})
        for path in [*sorted((out / "model").iterdir()), *artifacts]:
            mlrun.log_artifact(path, f"compress/{device.name}")
        if "fallback" in results:
            fallback_id = mlrun.log_model_folder(out / FALLBACK_DIR, f"compressed-{device.name}-fallback", {
                "device": device.name, "cost": cost.name, "role": "fallback",
                "data_hash": windows.card.get("data_hash", "")})
            mlrun.log_metrics(_flat_numbers({"fallback": metrics["fallback"]}), model_id=fallback_id)
            for path in sorted((out / FALLBACK_DIR).iterdir()):
                mlrun.log_artifact(path, f"compress/{device.name}/{FALLBACK_DIR}")
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
class _Data:
    x_fit: object
    y_fit: object
    x_val: object
    y_val: object
    x_test: object
    y_test: object
    users_test: np.ndarray  # the held-out user of each test window
    users_val: np.ndarray | None = None  # the validation user of each validation window (None: windows, no users)
    validation: dict | None = None  # which users every decision here is judged on, and whether the baseline saw them


def _data(windows, fold, train_cfg, train_dir: Path) -> _Data:
    """The training users' windows split into fitting and validation users (train's group), and the test users'.

    The validation users are whole training users the compressed model is
    never trained on: the search's floor, the candidate selection and the
    fine-tune's early stop are judged on them, user by user.
    """
    import torch

    from components.models.training import validation_split

    labels = windows.meta["label"].to_numpy().astype(np.int64)
    users = windows.meta["user"].to_numpy().astype(str)
    split = validation_split(labels[fold.train], users[fold.train], "users", train_cfg.validation_share,
                             train_cfg.val_fraction, train_cfg.seed)
    fit_idx, val_idx = fold.train[split.fit], fold.train[split.val]
    validation = {"by": "users" if split.by_users else "windows", "users": list(split.users),
                  "windows": int(len(val_idx)), "baseline_trained_on_them": _baseline_saw(split, train_dir)}
    log.info("compress judges accuracy on %s; the baseline %s them", split.describe(),
             "was trained on" if validation["baseline_trained_on_them"] else "never saw")

    def tensors(idx):
        return (torch.from_numpy(np.ascontiguousarray(windows.x[idx], dtype=np.float32)),
                torch.from_numpy(labels[idx]))

    return _Data(*tensors(fit_idx), *tensors(val_idx), *tensors(fold.test), users[fold.test],
                 users[val_idx] if split.by_users else None, validation)


def _baseline_saw(split, train_dir: Path) -> bool:
    """Whether train fitted the baseline on the validation users' windows (its own record says which users it
    held out); a record naming other users than these means train ran with other settings: rerun it."""
    path = Path(train_dir) / "metrics.json"
    held = json.loads(path.read_text()).get("validation") if path.exists() else None
    if not split.by_users or held is None:
        return True  # windows of every training user, or a baseline from before train said: assume it saw them
    if held["by"] != "users" or held.get("refit_epochs"):
        return True  # early-stopped on windows, or trained again on every training user (train.refit_below_users)
    if list(held["users"]) != list(split.users):
        raise ConfigError(f"train's baseline was early-stopped on validation users {held['users']}, but the settings "
                          f"now give {list(split.users)} (train.validation_share, train.seed): run `python -m "
                          "components train` again")
    return False


def _compress(baseline, cost, latency_model, data: _Data, cfg, augmentation, out: Path, mlrun, bench=None,
              params: Params | None = None, device=None) -> tuple[dict, object, dict]:
    """Search (refitting the latency model on what it visits), pick by measurement, fine-tune, compare.

    `bench` (a DeviceBench; latency cost on a timed device only) is what makes
    the refit rounds and the measured selection possible; without it the
    search's last kept structure is taken, nudged on the model's word.
    """
    import copy

    import torch

    from components.pruning.baselines import l1_keep, uniform_widths
    from components.pruning.deepiot import DeepIoTSearch, Schedule, SearchSettings
    from components.pruning.finetune import FineTuneSettings, accuracy, fine_tune
    from components.pruning.slicing import slice_model

    floor = accuracy(baseline, data.x_val, data.y_val, data.users_val) - cfg.max_accuracy_drop
    s = cfg.search
    budget = cfg.budget[cost.name]
    settings = SearchSettings(budget, floor, s.lambda_cost, s.critic_decay, Schedule(**asdict(s.threshold)),
                              s.max_steps, s.batch_size, s.learning_rate, s.compressor_learning_rate,
                              s.compressor_hidden, s.init_keep, s.eval_every, cfg.seed, s.distill,
                              cfg.fine_tune.temperature)
    search = DeepIoTSearch(copy.deepcopy(baseline), cost, data.x_fit, data.y_fit, data.x_val, data.y_val, settings,
                           augmentation, teacher=baseline if s.distill > 0 else None, val_users=data.users_val)
    extra = {"floor": _floor_check(search, bench, baseline, budget, cost)}
    if bench is not None and cost.name == "latency" and cfg.budget_margin > 0:  # judged on a measurement: a margin
        extra["floor"]["aim"] *= 1 - cfg.budget_margin
    if extra["floor"]["aim"] != budget:  # said up front: the search aims at the best the device can reach
        search.s = replace(search.s, budget=extra["floor"]["aim"])
    checkpoint = out / "checkpoint.pt"
    fingerprint = json.dumps({"compress": asdict(cfg), "cost": cost.name, "baseline": baseline.spec.to_json(),
                              "latency_model": latency_model.to_dict() if cost.name == "latency" else None},
                             sort_keys=True)
    _resume(search, checkpoint, fingerprint)
    out.mkdir(parents=True, exist_ok=True)

    def save(state):
        tmp = checkpoint.with_suffix(".tmp")
        torch.save(state | {"fingerprint": fingerprint}, tmp)
        tmp.replace(checkpoint)

    steering = {"model": latency_model}

    def progress(record):
        if record.accuracy is not None:
            log.info("search step %d: threshold %.2f, kept cost %.3f (aim %.3f), validation accuracy %.3f "
                     "(floor %.3f)", record.step, record.threshold, record.kept_cost, search.s.budget,
                     record.accuracy, floor)
            figures = {"search.kept_cost": record.kept_cost, "search.accuracy": record.accuracy,
                       "search.kept_params": record.kept_params, "search.budget": search.s.budget}
            if steering["model"] is not None:
                figures["search.predicted_latency_ms"] = steering["model"].predict_model(search.kept_spec())
            mlrun.log_metrics(figures, step=record.step)

    search.run(progress, save, s.checkpoint_every)
    if bench is not None and cost.name == "latency":
        extra["refit"], steering["model"] = _refit_rounds(search, bench, baseline, steering["model"], cfg, params,
                                                          device, lambda: search.run(
                                                              progress, save, s.checkpoint_every,
                                                              until=search.step_index + cfg.refit.steps))
        cost = search.cost
    keep, extra["selection"] = _select(search, cost, bench, baseline, cfg, floor)
    tune = FineTuneSettings(cfg.fine_tune.epochs, cfg.fine_tune.patience, cfg.fine_tune.batch_size,
                            cfg.fine_tune.learning_rate, cfg.fine_tune.distill, cfg.fine_tune.temperature, cfg.seed)
    extra["fallback"] = _fallback(search, keep, cost, bench, baseline, cfg, extra["floor"])
    candidates = {"deepiot": slice_model(search.model, keep)}
    if extra["fallback"].get("keep") is not None:
        candidates["fallback"] = slice_model(search.model, extra["fallback"].pop("keep"))
    # the baselines get the cost the search reached (the budget, or more where it was not met): same footing
    target = max(search.s.budget, cost.relative(candidates["deepiot"].spec))
    if "l1" in cfg.baselines:
        candidates["l1"] = slice_model(baseline, l1_keep(baseline, cost, target))
    if "uniform" in cfg.baselines:
        widths = uniform_widths(baseline.spec, cost, target)
        scores = _l1_order(baseline)
        candidates["uniform"] = slice_model(baseline, {k: scores[k][:w] for k, w in widths.items()})
    results = {"baseline": _describe(baseline, cost, steering["model"], data)}
    for name, model in candidates.items():
        log.info("fine-tuning %s (%d parameters)", name, model.spec.params)
        model, epochs = fine_tune(model, data.x_fit, data.y_fit, data.x_val, data.y_val, tune,
                                  teacher=baseline if tune.distill > 0 else None, label=f"[{name}] ",
                                  augmentation=augmentation, val_users=data.users_val)
        results[name] = _describe(model, cost, steering["model"], data) | {"model": model, "fine_tune_epochs": epochs}
    chosen = next((c for c in extra["selection"].get("timed", []) if c["chosen"]), None)
    if chosen is not None:
        results["deepiot"]["measured_ratio"] = chosen["measured_ratio"]
    if "fallback" in results and extra["fallback"].get("measured_ratio") is not None:
        results["fallback"]["measured_ratio"] = extra["fallback"]["measured_ratio"]
    extra["latency_model"] = steering["model"]
    extra["validation"] = data.validation or {}
    return results, search, extra


def _resume(search, checkpoint: Path, fingerprint: str) -> None:
    """Resume the search from `checkpoint` where it is this search's; set a damaged one aside and start afresh."""
    import copy

    import torch

    if not checkpoint.exists():
        return
    fresh = copy.deepcopy(search.state())  # what a failed restore goes back to (state() shares live tensors)
    try:  # written by this stage only; tensors and numbers, no code
        state = torch.load(checkpoint, weights_only=True)
        if not isinstance(state, dict):
            raise ValueError(f"expected a mapping, found {type(state).__name__}")
        if state.get("fingerprint") != fingerprint:
            log.warning("%s is from other settings or another baseline; starting the search afresh", checkpoint)
            return
        search.restore(state)
    except Exception as exc:  # noqa: BLE001 - truncated, half written, not this search's: the search restarts
        search.restore(fresh)
        aside = checkpoint.with_name(f"{checkpoint.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}")
        checkpoint.replace(aside)
        why = (str(exc).strip().splitlines() or [""])[0]
        log.warning("%s could not be read (%s: %s); set aside as %s, starting the search afresh", checkpoint,
                    type(exc).__name__, why, aside.name)
        return
    log.info("resuming the search from %s at step %d", checkpoint, search.step_index)


def _floor_check(search, bench, baseline, budget: float, cost) -> dict:
    """What the device can reach at all, said before the search: one element per layer, predicted and measured.

    A budget under the predicted floor cannot be met by width pruning (fixed
    per-layer costs: eager torch pays ~0.1 ms per module call); the search
    then applies the budget to what width pruning can remove, aiming at
    `floor + budget * (1 - floor)` (the same share of the removable time),
    and says so now: pruning to the floor itself would cost the accuracy for
    the last few per cent of time.
    """
    from components.pruning.costs import resized_spec
    from components.pruning.groups import groups

    floor = search.cost_floor
    out = {"predicted": floor, "aim": budget, "above_budget": floor >= budget}
    if bench is not None and cost.name == "latency":
        tiny = resized_spec(baseline.spec, {g.layer: 1 for g in groups(baseline.spec)})
        measured = bench.time({"floor": tiny}, baseline.spec)["floor"]
        out["measured"] = measured["ratio"]
        log.info("%s: the smallest structure width pruning can make (one element per layer) is predicted at %.3f "
                 "and measured at %.3f of the baseline's latency", bench.device.name, floor, measured["ratio"])
        if measured["ratio"] >= budget > floor:
            log.warning("%s: the device measures its floor at %.3f, above the budget %.3f, though the latency model "
                        "predicts %.3f; the refit rounds will tell", bench.device.name, measured["ratio"], budget,
                        floor)
    if floor >= budget:
        out["aim"] = min(1.0, floor + budget * (1 - floor))
        log.warning("budget %.3f of the baseline's %s is below what width pruning can reach on this device (%.3f "
                    "with one element per layer: fixed per-layer costs); BUDGET CANNOT BE MET: aiming at %.3f "
                    "instead (the budget's share of what width pruning can remove), the best this device can "
                    "reach", budget, cost.name, floor, out["aim"])
    return out


def _refit_rounds(search, bench, baseline, latency_model, cfg, params, device, search_on) -> tuple[list, object]:
    """Profile what the search visited, score the model on it, refit, swap the cost, search on; bounded rounds."""
    from components.pruning.costs import LatencyCost
    from components.pruning.on_device import neighbours, prediction_errors, refit, visited_items, within_shares

    rounds = []
    for r in range(1, cfg.refit.rounds + 1):
        structures: list[dict] = []
        for c in reversed(search.candidates):
            if c.widths not in structures:
                structures.append(c.widths)
            if len(structures) >= cfg.refit.structures:
                break
        last = {name: len(idx) for name, idx in search.kept().items()}
        structures = [last, *[w for w in structures if w != last],
                      *neighbours(baseline.spec, last, tuple(cfg.refit.neighbours))]
        new_rows = bench.profile(visited_items(baseline.spec, structures, cfg.refit.max_items))
        reference = bench.reference.model
        errors = prediction_errors(latency_model, reference, new_rows)
        record = {"round": r, "profiled": len(new_rows), "before_refit": within_shares(errors)}
        if not new_rows and (r > 1 or not bench.own_rows()):
            log.info("refit round %d: every visited structure was already profiled; the model stays", r)
            rounds.append(record)
            break
        # (a resumed run whose structures were all profiled before refits on the same rows: the same model)
        latency_model = refit(bench, params, device)
        search.set_cost(LatencyCost(baseline.spec, latency_model, device.name))
        record["after_refit"] = within_shares(prediction_errors(latency_model, reference, new_rows))
        record["kept_cost_after_refit"] = search.kept_cost()
        shares = record["before_refit"]
        log.info("refit round %d: %d configurations profiled; the latency model had %s of %d new compressed "
                 "structures within +-10 %% (MAPE %s); refitted, the kept structure is now at %.3f of the "
                 "baseline's predicted latency", r, len(new_rows),
                 f"{shares.get('within_10_pct', float('nan')):.0f} %", shares.get("candidates", 0),
                 f"{shares.get('mape_pct', float('nan')):.1f} %", record["kept_cost_after_refit"])
        search_on()
        rounds.append(record)
    return rounds, latency_model


def _select(search, cost, bench, baseline, cfg, floor: float) -> tuple[dict, dict]:
    """The structure to fine-tune: the fastest *measured* candidate at the floor, or the search's last one.

    Candidates: the cheapest front structures whose validation accuracy (with
    the task network as it is now) is at the floor, the last kept structure,
    and each one's FastDeepIoT nudge (widths up to ones predicted no slower).
    Timed together against the baseline's shape, a nudge is kept only where
    the device confirms it; with no device to time on (parameter cost,
    microcontroller) the last kept structure is taken, nudged on the model's
    word for a latency cost.
    """
    import torch

    from components.pruning.costs import resized_spec

    keep = search.kept()
    if bench is None or cost.name != "latency":
        if cost.name == "latency" and cfg.nudge_radius > 0:
            keep = _nudged(search, keep, cost, cfg.nudge_radius)
        return keep, {"method": "last kept structure" + (" (nudged)" if cost.name == "latency" else "")}
    pool: dict[str, dict] = {"last": {n: idx for n, idx in keep.items()}}
    above = [c for c in search.front() if search.accuracy({n: torch.tensor(i) for n, i in c.kept.items()}) >= floor]
    for c in above[:cfg.select.candidates]:
        pool.setdefault(f"step{c.step}", {n: torch.tensor(i) for n, i in c.kept.items()})
    if cfg.nudge_radius > 0:
        for name in list(pool):
            nudged = _nudged(search, pool[name], cost, cfg.nudge_radius)
            if any(len(nudged[k]) != len(pool[name][k]) for k in nudged):
                pool[f"{name}+nudge"] = nudged
    specs = {name: resized_spec(baseline.spec, {k: len(v) for k, v in kept.items()}) for name, kept in pool.items()}
    timed = bench.time(specs, baseline.spec)
    rows = []
    for name, kept in pool.items():
        rows.append({"name": name, "accuracy": search.accuracy(kept), "predicted_ratio": cost.relative(specs[name]),
                     "measured_ratio": timed[name]["ratio"], "measured_ms": timed[name]["latency_ms"],
                     "params": specs[name].params, "widths": {k: len(v) for k, v in kept.items()}})
    # at the floor; if none is (the search ran out of steps below it), as accurate as the last kept structure
    last = next(r for r in rows if r["name"] == "last")
    eligible = ([r for r in rows if r["accuracy"] >= floor]
                or [r for r in rows if r["accuracy"] >= last["accuracy"] - 0.005])
    best = min(eligible, key=lambda r: (r["measured_ratio"], -r["accuracy"]))
    for r in rows:
        r["chosen"] = r is best
        r["error"] = (r["predicted_ratio"] - r["measured_ratio"]) / r["measured_ratio"]
    from components.pruning.on_device import within_shares

    log.info("%s: %d candidates timed against the baseline; chose %s (measured %.3f, predicted %.3f of the "
             "baseline's latency, validation accuracy %.3f)", bench.device.name, len(rows), best["name"],
             best["measured_ratio"], best["predicted_ratio"], best["accuracy"])
    return pool[best["name"]], {"method": "fastest measured candidate at the floor", "timed": rows,
                                "prediction": within_shares(rows)}


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


FALLBACK_STEPS = (1.0, 0.75, 0.5, 0.25)  # timed device: shares of the way back timed together, the largest within


def _fallback(search, keep: dict, cost, bench, baseline, cfg, floor: dict) -> dict:
    """The structure one step back along the search's path, at `compress.fallback` times the aim.

    validate deploys it instead when the chosen model misses only the
    accuracy gate. The search removed elements least wanted first, so
    walking back adds the removed elements its compressor wants most, while
    the cost stays within the looser aim (and, on a microcontroller, the
    part's limits). On a timed device the latency model's word is checked:
    the whole way back and shares of it (`FALLBACK_STEPS`) are timed together
    against the baseline, and the longest that measures within the aim is
    taken (structures far from where the model was refitted are predicted
    less well: UCI HAPT, ort-1t, the whole way predicted 0.363, measured 0.444).
    """
    from components.pruning.costs import resized_spec

    if cfg.fallback <= 0:
        return {"why": "compress.fallback is 0: no fallback"}
    if floor.get("above_budget"):  # said up front: the budget is out of reach, and a step back is further from it
        return {"why": f"the device cannot reach the budget (one element per layer is at {floor['predicted']:.3f}), "
                       "so a step back cannot either"}
    aim = min(1.0, search.s.budget * cfg.fallback)
    widths = {name: len(idx) for name, idx in keep.items()}
    here = cost.relative(resized_spec(search.spec, widths))
    if here >= aim:
        log.info("no fallback: the chosen structure is at %.3f of the baseline's %s, already at or past the "
                 "fallback's aim %.3f", here, cost.name, aim)
        return {"aim": aim, "why": f"the chosen structure is at {here:.3f}, at or past the fallback's aim {aim:.3f}"}
    added = _way_back(search, keep, cost, aim)
    steps = {share: _with_added(keep, added[:round(share * len(added))]) for share in FALLBACK_STEPS}
    specs = {share: resized_spec(search.spec, {n: len(i) for n, i in kept.items()}) for share, kept in steps.items()}
    out: dict = {"aim": aim}
    share = 1.0
    if bench is not None and cost.name == "latency":
        timed = bench.time({f"fallback{s}": spec for s, spec in specs.items()}, baseline.spec)
        measured = {s: timed[f"fallback{s}"]["ratio"] for s in specs}
        within = [s for s in FALLBACK_STEPS if measured[s] <= aim * (1 + cfg.measured_tolerance)]
        out["timed"] = [{"share": s, "predicted_ratio": cost.relative(specs[s]), "measured_ratio": measured[s],
                         "params": specs[s].params} for s in FALLBACK_STEPS]
        if not within:
            log.info("no fallback: a quarter of the way back already measures %.3f of the baseline's latency, past "
                     "the fallback's aim %.3f", measured[FALLBACK_STEPS[-1]], aim)
            return out | {"why": f"a quarter of the way back measures {measured[FALLBACK_STEPS[-1]]:.3f}, past the "
                                 f"fallback's aim {aim:.3f}"}
        share = max(within)
        out["measured_ratio"] = measured[share]
    out |= {"keep": steps[share], "share": share, "relative_cost": cost.relative(specs[share])}
    log.info("fallback: %s of the way back along the search's path, %d parameters at %.3f of the baseline's %s "
             "(aim %.3f)%s", f"{100 * share:.0f} %", specs[share].params, out["relative_cost"], cost.name, aim,
             f", measured {out['measured_ratio']:.3f}" if "measured_ratio" in out else "")
    return out


def _way_back(search, keep: dict, cost, aim: float) -> list[tuple[str, int]]:
    """The removed elements to put back, most wanted by the compressor first, each while the whole stays within
    `aim` (and fits the part): (group, element index) in the order they were added."""
    from components.pruning.costs import resized_spec

    probs = [p.detach() for p in search.compressor()]
    kept = {name: set(idx.tolist()) for name, idx in keep.items()}
    order = sorted(((float(p[i]), name, i) for name, p in zip(search.names, probs) for i in range(len(p))
                    if i not in kept[name]), reverse=True)
    widths = {name: len(idx) for name, idx in kept.items()}
    added = []
    for _, name, i in order:
        trial = {**widths, name: widths[name] + 1}
        spec = resized_spec(search.spec, trial)
        if cost.relative(spec) <= aim and cost.fits(spec):
            added.append((name, i))
            widths = trial
    return added


def _with_added(keep: dict, added: list[tuple[str, int]]) -> dict:
    import torch

    kept = {name: set(idx.tolist()) for name, idx in keep.items()}
    for name, i in added:
        kept[name].add(i)
    return {name: torch.tensor(sorted(idx), dtype=torch.long) for name, idx in kept.items()}


def _l1_order(model) -> dict:
    import torch

    from components.pruning.baselines import element_scores

    return {k: torch.argsort(v, descending=True) for k, v in element_scores(model).items()}


def _describe(model, cost, latency_model, data: _Data) -> dict:
    from components.pruning.finetune import predictions
    from components.stats.intervals import mean_ci

    predicted = {} if latency_model is None else {"predicted_latency_ms": latency_model.predict_model(model.spec)}
    right = (predictions(model, data.x_test) == data.y_test).numpy()
    per_user = {u: float(right[data.users_test == u].mean()) for u in sorted(set(data.users_test.tolist()))}
    test = mean_ci(per_user)
    return {"params": model.spec.params, "macs": model.spec.macs, "relative_cost": cost.relative(model.spec),
            **predicted,
            **cost.describe(model.spec), "fits": cost.fits(model.spec),
            "test_accuracy": test["mean"], "test_accuracy_ci": test, "test_accuracy_per_user": per_user,
            **_validation_scores(model, data),
            "widths": {layer.name: layer.out_features for layer in model.spec.layers}}


def _validation_scores(model, data: _Data) -> dict:
    """Accuracy on the validation users: the mean over them (each counts once), and each one's."""
    from components.pruning.finetune import judged_accuracy, per_user_accuracy, predictions

    predicted = predictions(model, data.x_val)
    out = {"val_accuracy": judged_accuracy(predicted, data.y_val, data.users_val)}
    if data.users_val is not None:
        out["val_accuracy_per_user"] = per_user_accuracy(predicted, data.y_val, data.users_val)
    return out


def _metrics(results: dict, search, cost, cfg, device: str, wall_s: float, extra: dict | None = None) -> dict:
    """The run's figures; the budget is met when the fine-tuned model is within it *and* above the floor.

    Where the chosen structure was timed on the device, "within" is judged on
    its measured ratio to the baseline, not on the prediction.
    """
    extra = extra or {}
    budget = cfg.budget[cost.name]
    deepiot, base = results["deepiot"], results["baseline"]
    floor = search.s.accuracy_floor
    reached = deepiot.get("measured_ratio", deepiot["relative_cost"])
    # a measurement is judged within its repeatability: ratios timed together repeat within ~1 %
    allowed = budget * (1 + cfg.measured_tolerance) if "measured_ratio" in deepiot else budget
    within = reached <= allowed + 1e-9 and deepiot["fits"]
    met = within and deepiot["val_accuracy"] >= floor
    why = ""
    if not met:
        what = "measured" if "measured_ratio" in deepiot else "predicted"
        why = (f"validation accuracy {deepiot['val_accuracy']:.3f} is below the floor {floor:.3f}" if within else
               f"the compressed model is at {reached:.4f} of the baseline's {cost.name} ({what}"
               + (f"; {100 * cfg.measured_tolerance:.0f} % over the budget is within timing noise)"
                  if what == "measured" else ")")
               + ("" if deepiot["fits"] else " and does not fit the part's flash or SRAM"))
        if extra.get("floor", {}).get("above_budget"):
            why += f"; the device cannot reach the budget (floor {extra['floor']['predicted']:.3f}, said up front)"
        log.warning("%s: BUDGET NOT MET (budget %.3f of the baseline's %s): %s; the best structure found is kept",
                    device, budget, cost.name, why)
    return {
        "device": device, "cost": cost.name, "budget": budget, "budget_met": met, "budget_not_met": why,
        "accuracy_floor": floor, "cost_floor": search.cost_floor,
        "floor": extra.get("floor", {}), "refit": extra.get("refit", []),
        "selection": extra.get("selection", {}),
        "measured_ratio": deepiot.get("measured_ratio"),
        "search_steps": search.step_index, "wall_s": round(wall_s, 1),
        "accuracy_change": deepiot["test_accuracy"] - base["test_accuracy"],
        "accuracy_change_ci": _paired(deepiot, base),
        "validation": extra.get("validation", {}),
        "val_accuracy_change_ci": _paired(deepiot, base, "val_accuracy_per_user"),
        "params_kept": deepiot["params"] / base["params"],
        "methods": {name: _figures(r) for name, r in results.items() if name != "fallback"},
        "fallback": _fallback_metrics(results, base, extra.get("fallback", {})),
    }


def _figures(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "model"}


def _fallback_metrics(results: dict, base: dict, fallback: dict) -> dict:
    """The fallback's figures beside the chosen model's (validate deploys it only after a missed accuracy gate)."""
    if "fallback" not in results:
        return {k: v for k, v in fallback.items() if k != "keep"}
    r = results["fallback"]
    return {"aim": fallback["aim"], "share": fallback["share"], **_figures(r), "timed": fallback.get("timed", []),
            "accuracy_change_ci": _paired(r, base), "val_accuracy_change_ci": _paired(r, base, "val_accuracy_per_user")}


def _paired(model: dict, base: dict, key: str = "test_accuracy_per_user") -> dict:
    """The model's accuracy minus the baseline's, user by user (held-out users; `val_accuracy_per_user`: the
    validation users), with its interval; empty where there are no users."""
    from components.stats.intervals import paired_ci

    if key not in model or key not in base:
        return {}
    return paired_ci(model[key], base[key])


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
             *_floor_lines(metrics.get("floor", {}), metrics["cost"]),
             f"Test accuracy is the mean over {methods['baseline']['test_accuracy_ci']['users']} held-out users; "
             f"DeepIoT's change against the baseline, user by user: "
             f"{interval_text(metrics['accuracy_change_ci'], 4)}.", "",
             *_validation_lines(metrics),
             f"Accuracy floor (mean over the validation users): {metrics['accuracy_floor']:.3f}; the lowest "
             f"{metrics['cost']} width pruning can reach: {metrics['cost_floor']:.3f} of the baseline's.", "",
             "| method | params | relative cost |" + (" predicted ms |" if latency else "")
             + " test accuracy (95 % CI over users) | validation accuracy | fits |",
             "|---|---|---|" + ("---|" if latency else "") + "---|---|---|"]
    for name, r in methods.items():
        lines.append(f"| {name} | {r['params']} | {r['relative_cost']:.3f} | "
                     + (f"{r['predicted_latency_ms']:.3f} | " if latency else "")
                     + f"{_with_ci(r['test_accuracy_ci'])} | {r['val_accuracy']:.3f} | {r['fits']} |")
    lines += _fallback_lines(metrics.get("fallback", {}), metrics["cost"])
    lines += _refit_lines(metrics.get("refit", [])) + _selection_lines(metrics.get("selection", {}))
    return "\n".join(lines) + "\n"


def _validation_lines(metrics: dict) -> list[str]:
    v = metrics.get("validation") or {}
    if not v:
        return []
    if v["by"] != "users":
        return [f"Decisions here (the floor, the selection, the fine-tune's early stop) rest on {v['windows']} "
                "windows of the training users (the set has too few users for a validation group): they "
                "flatter the model.", ""]
    saw = "the baseline was trained on them" if v["baseline_trained_on_them"] else "nor was the baseline"
    return [f"Every decision here (the search's floor, the candidate selection, the fine-tune's early stop) is "
            f"judged on the validation users {', '.join(v['users'])} ({v['windows']} windows): whole training users "
            f"the compressed model is never trained on ({saw}). DeepIoT's change against the baseline on them, "
            f"user by user: {interval_text(metrics.get('val_accuracy_change_ci') or {}, 4)}.", ""]


def _fallback_lines(fallback: dict, cost: str) -> list[str]:
    if not fallback:
        return []
    if "params" not in fallback:
        return ["", f"No fallback: {fallback.get('why', 'none was made')}."]
    measured = f", measured {fallback['measured_ratio']:.3f}" if fallback.get("measured_ratio") is not None else ""
    return ["", "## Fallback (one step back along the search's path)", "",
            f"Deployed by validate instead if the model misses only the accuracy gate: "
            f"{100 * fallback['share']:.0f} % of the way back, {fallback['params']} "
            f"parameters at {fallback['relative_cost']:.3f} of the baseline's {cost} (aim {fallback['aim']:.3f}"
            f"{measured}); change against the baseline on the validation users "
            f"{interval_text(fallback.get('val_accuracy_change_ci') or {}, 4)}, on the held-out users "
            f"{interval_text(fallback.get('accuracy_change_ci') or {}, 4)}."]


def _floor_lines(floor: dict, cost: str) -> list[str]:
    if not floor:
        return []
    measured = f", measured {floor['measured']:.3f}" if floor.get("measured") is not None else ""
    line = (f"One element per layer (the lowest width pruning reaches): predicted {floor['predicted']:.3f}"
            f"{measured} of the baseline's {cost}.")
    if floor.get("above_budget"):
        line += f" **The budget is below it: the search aimed at {floor['aim']:.3f}, the best this device can reach.**"
    return [line, ""]


def _refit_lines(rounds: list[dict]) -> list[str]:
    if not rounds:
        return []
    lines = ["", "## The latency model, refitted where the search went", "",
             "Newly profiled compressed structures, predicted (ratio to the baseline) before and after each refit:",
             "", "| round | configurations profiled | structures | within +-5 % before | within +-10 % before "
             "| MAPE before | MAPE after |", "|---|---|---|---|---|---|---|"]
    for r in rounds:
        b, a = r.get("before_refit", {}), r.get("after_refit", {})
        lines.append(f"| {r['round']} | {r['profiled']} | {b.get('candidates', 0)} | {_pct(b, 'within_5_pct')} | "
                     f"{_pct(b, 'within_10_pct')} | {_pct(b, 'mape_pct', 1)} | {_pct(a, 'mape_pct', 1)} |")
    return lines


def _selection_lines(selection: dict) -> list[str]:
    timed = selection.get("timed")
    if not timed:
        return ["", f"Structure taken: {selection['method']}."] if selection else []
    p = selection["prediction"]
    lines = ["", "## Candidates timed on the device against the baseline (same rounds)", "",
             f"Predicted ratio within +-5 % of the measured one: {_pct(p, 'within_5_pct')}, within +-10 %: "
             f"{_pct(p, 'within_10_pct')} ({p['candidates']} candidates).", "",
             "| candidate | params | validation accuracy | predicted ratio | measured ratio | chosen |",
             "|---|---|---|---|---|---|"]
    for r in timed:
        lines.append(f"| {r['name']} | {r['params']} | {r['accuracy']:.3f} | {r['predicted_ratio']:.3f} | "
                     f"{r['measured_ratio']:.3f} | {'**yes**' if r['chosen'] else ''} |")
    return lines


def _pct(d: dict, key: str, digits: int = 0) -> str:
    return f"{d[key]:.{digits}f} %" if key in d else "-"


def _with_ci(ci: dict) -> str:
    if ci["users"] < 2:
        return f"{ci['mean']:.3f}"
    return f"{ci['mean']:.3f} ({ci['low']:.3f} to {ci['high']:.3f})"


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


def summary(result: CompressResult) -> str:
    """A budget not met is a result (said plainly in the line), not a failure."""
    m, d = result.metrics, result.metrics["methods"]["deepiot"]
    verdict = "budget met" if m["budget_met"] else f"BUDGET NOT MET: {m.get('budget_not_met') or 'see the log'}"
    return (f"compress {result.device}: {verdict} "
            f"({m['cost']} {reached(m)} of the baseline's, budget {m['budget']}); "
            f"{d['params']} parameters, test accuracy {d['test_accuracy']:.3f} ({m['accuracy_change']:+.3f}) "
            f"-> {result.model_dir} (MLflow run {result.run_id})")
