"""What the device can reach at all, said before the search: one element per layer, predicted and measured.

A budget under the predicted floor cannot be met by width pruning (fixed
per-layer costs: eager torch pays ~0.1 ms per module call); the search then
applies the budget to what width pruning can remove, aiming at
`floor + budget * (1 - floor)` (the same share of the removable time), and
says so now: pruning to the floor itself would cost the accuracy for the
last few per cent of time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass
class Floor:
    predicted: float  # one element per layer, as the cost predicts it (relative to the baseline)
    aim: float  # what the search aims at: the budget, or the best reachable where the budget is below the floor
    above_budget: bool  # the floor is at or above the budget: the budget cannot be met
    measured: float | None = None  # the same structure timed on the device (timed devices only)

    def to_dict(self) -> dict:
        out = {"predicted": self.predicted, "aim": self.aim, "above_budget": self.above_budget}
        return out if self.measured is None else out | {"measured": self.measured}


def floor_check(search, bench, baseline, budget: float, cost) -> Floor:
    """The floor of `search`'s cost; with a `bench` (a timed device and a latency cost) also measured."""
    from components.pruning.costs import resized_spec
    from components.pruning.groups import groups

    predicted = search.cost_floor
    floor = Floor(predicted, budget, predicted >= budget)
    if bench is not None:  # a latency cost on a timed device (compress gives no bench otherwise)
        gone = search.removable
        tiny = resized_spec(baseline.spec, {g.layer: 0 if g.layer in gone else 1 for g in groups(baseline.spec)})
        floor.measured = bench.time({"floor": tiny}, baseline.spec)["floor"]["ratio"]
        log.info("%s: the smallest structure the search can make (one element per layer%s) is predicted at %.3f "
                 "and measured at %.3f of the baseline's latency", bench.device.name,
                 f", {len(gone)} layers removed whole" if gone else "", predicted, floor.measured)
        if floor.measured >= budget > predicted:
            log.warning("%s: the device measures its floor at %.3f, above the budget %.3f, though the latency model "
                        "predicts %.3f; the refit rounds will tell", bench.device.name, floor.measured, budget,
                        predicted)
    if floor.above_budget:
        floor.aim = min(1.0, predicted + budget * (1 - predicted))
        log.warning("budget %.3f of the baseline's %s is below what width pruning can reach on this device (%.3f "
                    "with one element per layer: fixed per-layer costs); BUDGET CANNOT BE MET: aiming at %.3f "
                    "instead (the budget's share of what width pruning can remove), the best this device can "
                    "reach", budget, cost.name, predicted, floor.aim)
    return floor
