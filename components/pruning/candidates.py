"""The fine-tune step: the chosen structure, its fallback and the reference methods, sliced, fine-tuned, scored.

Each candidate is sliced into a smaller dense model and fine-tuned the same
way (distilling the baseline where `compress.fine_tune.distill` says so,
early-stopped on the validation users); L1-norm pruning and uniform scaling
get the cost the search reached, so every method stands on the same footing.
Each is then scored: its size and cost, accuracy per held-out user with its
interval, and per validation user.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from components.pruning.split import Split

log = logging.getLogger(__name__)


@dataclass
class Tuned:
    model: object  # the fine-tuned torch model
    figures: dict  # params, cost, accuracy per user with its interval, ... (compress's metrics.json "methods")


def tune_candidates(search, keep: dict, fallback_keep: dict | None, baseline, cost, cfg, data: Split, augmentation,
                    latency_model) -> dict[str, Tuned]:
    """{"baseline", "deepiot", ["fallback"], ["l1"], ["uniform"]}: each fine-tuned (the baseline as it is)."""
    import torch

    from components.pruning.baselines import element_scores, l1_keep, uniform_widths
    from components.pruning.finetune import FineTuneSettings, fine_tune
    from components.pruning.slicing import slice_model

    tune = FineTuneSettings(cfg.fine_tune.epochs, cfg.fine_tune.patience, cfg.fine_tune.batch_size,
                            cfg.fine_tune.learning_rate, cfg.fine_tune.distill, cfg.fine_tune.temperature, cfg.seed)
    candidates = {"deepiot": slice_model(search.model, keep)}
    if fallback_keep is not None:
        candidates["fallback"] = slice_model(search.model, fallback_keep)
    # the baselines get the cost the search reached (the budget, or more where it was not met): same footing
    target = max(search.s.budget, cost.relative(candidates["deepiot"].spec))
    if "l1" in cfg.baselines:
        candidates["l1"] = slice_model(baseline, l1_keep(baseline, cost, target))
    if "uniform" in cfg.baselines:
        widths = uniform_widths(baseline.spec, cost, target)
        order = {k: torch.argsort(v, descending=True) for k, v in element_scores(baseline).items()}
        candidates["uniform"] = slice_model(baseline, {k: order[k][:w] for k, w in widths.items()})
    tuned = {"baseline": Tuned(baseline, describe(baseline, cost, latency_model, data))}
    for name, model in candidates.items():
        log.info("fine-tuning %s (%d parameters)", name, model.spec.params)
        model, epochs = fine_tune(model, data.x_fit, data.y_fit, data.x_val, data.y_val, tune,
                                  teacher=baseline if tune.distill > 0 else None, label=f"[{name}] ",
                                  augmentation=augmentation, val_users=data.users_val)
        tuned[name] = Tuned(model, describe(model, cost, latency_model, data) | {"fine_tune_epochs": epochs})
    return tuned


def describe(model, cost, latency_model, data: Split) -> dict:
    """A model's figures: size, cost (and predicted latency), accuracy per held-out and per validation user."""
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
            "widths": model.spec.widths}


def _validation_scores(model, data: Split) -> dict:
    """Accuracy on the validation users: the mean over them (each counts once), and each one's."""
    from components.pruning.finetune import judged_accuracy, per_user_accuracy, predictions

    predicted = predictions(model, data.x_val)
    out = {"val_accuracy": judged_accuracy(predicted, data.y_val, data.users_val)}
    if data.users_val is not None:
        out["val_accuracy_per_user"] = per_user_accuracy(predicted, data.y_val, data.users_val)
    return out
