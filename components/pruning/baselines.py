"""What the compressor-critic is compared with at the same budget, and FastDeepIoT's width nudge.

- `l1_keep`: structured magnitude pruning (Li et al.'s L1-norm filter
  pruning, applied to every group): each element scored by the L1 norm of
  the weights that produce it, normalised by its layer's mean score so
  layers compete fairly, removed lowest first across all groups until the
  cost meets the budget.
- `uniform_widths`: every width scaled by one factor, the largest that meets
  the budget ("just make it narrower").
- `nudge_widths`: FastDeepIoT's last step: move each width up, within
  `radius`, to where the predicted latency is lowest (execution time is not
  monotonic in width: a multiple of the vector size can be faster than one
  less), one group at a time until nothing moves.
"""

from __future__ import annotations

import torch

from components.models.spec import ModelSpec
from components.pruning.costs import resized_spec
from components.pruning.groups import groups
from components.pruning.slicing import layer_modules


def element_scores(model) -> dict[str, torch.Tensor]:
    """L1 norm of the weights producing each element of each group."""
    scores = {}
    for group in groups(model.spec):
        main = layer_modules(model, group.layer)["main"]
        with torch.no_grad():
            if group.kind in ("gru", "lstm"):
                gates = 3 if group.kind == "gru" else 4
                rows = (main.weight_ih_l0.abs().sum(1) + main.weight_hh_l0.abs().sum(1)).reshape(gates, -1)
                scores[group.layer] = rows.sum(0)
            else:
                scores[group.layer] = main.weight.abs().reshape(main.weight.shape[0], -1).sum(1)
    return scores


def l1_keep(model, cost, budget: float) -> dict[str, torch.Tensor]:
    """Kept indices per group after removing the lowest normalised L1 scores until `cost` meets `budget`."""
    scores = element_scores(model)
    spec = model.spec
    order = sorted(((float(s / scores[name].mean()), name, i) for name, layer in scores.items()
                    for i, s in enumerate(layer)), key=lambda t: t[0])
    alive = {name: torch.ones(len(s), dtype=torch.bool) for name, s in scores.items()}
    widths = {name: len(s) for name, s in scores.items()}
    step = max(1, len(order) // 200)  # check the cost every `step` removals (and exactly near the end)
    for k, (_, name, i) in enumerate(order):
        if widths[name] == 1:
            continue
        alive[name][i] = False
        widths[name] -= 1
        if (k % step == 0 or step == 1) and cost.relative(resized_spec(spec, widths)) <= budget:
            break
    return {name: torch.nonzero(mask).flatten() for name, mask in alive.items()}


def uniform_widths(spec: ModelSpec, cost, budget: float) -> dict[str, int]:
    """The widest uniform scaling (every group times one factor) whose cost meets `budget`."""
    sizes = {g.layer: g.size for g in groups(spec)}

    def scaled(factor: float) -> dict[str, int]:
        return {name: max(1, round(size * factor)) for name, size in sizes.items()}

    low, high = 0.0, 1.0
    for _ in range(40):
        middle = (low + high) / 2
        if cost.relative(resized_spec(spec, scaled(middle))) <= budget:
            low = middle
        else:
            high = middle
    return scaled(low)


def nudge_widths(spec: ModelSpec, widths: dict[str, int], cost, radius: int,
                 limits: dict[str, int] | None = None) -> dict[str, int]:
    """Each width moved up (by at most `radius`, never past `limits`) to where the predicted cost is lowest.

    Only upward: a wider layer that is predicted no slower is capacity for
    free, while narrowing would trade accuracy the search already priced.
    Ties go to the wider width. Groups are visited in turn until none moves.
    """
    limits = limits or {g.layer: g.size for g in groups(spec)}
    current = dict(widths)
    best = cost.value(resized_spec(spec, current))
    for _ in range(3):
        moved = False
        for name in current:
            start = current[name]
            if start == 0:
                continue  # a layer removed whole stays removed: one element back is not "capacity for free"
            for width in range(start + 1, min(limits[name], start + radius) + 1):
                trial = {**current, name: width}
                value = cost.value(resized_spec(spec, trial))
                if value <= best + 1e-12:
                    best, current, moved = min(best, value), trial, True
        if not moved:
            break
    return current
