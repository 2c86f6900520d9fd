"""Which structure to fine-tune, and the fallback one step back along the search's path.

`select` takes the fastest *measured* candidate at the accuracy floor where
the device can be timed (the cheapest front structures, the last kept one,
each with FastDeepIoT's nudge, timed together against the baseline), else the
search's last kept structure, nudged on the latency model's word. `fallback`
walks back from it, putting back the elements the compressor wants most,
to `compress.fallback` times the aim: what validate deploys instead when the
chosen model misses only the accuracy gate.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

log = logging.getLogger(__name__)
FALLBACK_STEPS = (1.0, 0.75, 0.5, 0.25)  # timed device: shares of the way back timed together, the largest within


@dataclass
class Selection:
    keep: dict  # layer -> the element indices kept
    method: str
    timed: list[dict] = field(default_factory=list)  # each candidate timed on the device (empty: none was)
    prediction: dict = field(default_factory=dict)  # how well the latency model predicted the timed candidates

    @property
    def chosen(self) -> dict | None:
        return next((row for row in self.timed if row["chosen"]), None)

    def to_dict(self) -> dict:
        return {"method": self.method} | ({"timed": self.timed, "prediction": self.prediction} if self.timed else {})


def select(search, cost, bench, baseline, cfg, floor: float) -> Selection:
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
    from components.pruning.on_device import within_shares

    keep = search.kept()
    if bench is None:  # nothing to time on: a parameter or computed cost, or a device that is not timed
        if cost.name == "latency" and cfg.nudge_radius > 0:
            keep = _nudged(search, keep, cost, cfg.nudge_radius)
        return Selection(keep, "last kept structure" + (" (nudged)" if cost.name == "latency" else ""))
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
    log.info("%s: %d candidates timed against the baseline; chose %s (measured %.3f, predicted %.3f of the "
             "baseline's latency, validation accuracy %.3f)", bench.device.name, len(rows), best["name"],
             best["measured_ratio"], best["predicted_ratio"], best["accuracy"])
    return Selection(pool[best["name"]], "fastest measured candidate at the floor", rows, within_shares(rows))


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


@dataclass
class Fallback:
    why: str = ""  # why there is none (empty: there is one)
    aim: float | None = None  # compress.fallback times the search's aim
    keep: dict | None = None  # layer -> element indices (None: no fallback)
    share: float | None = None  # of the way back along the search's path
    relative_cost: float | None = None
    measured_ratio: float | None = None  # timed devices: the step taken, measured
    timed: list[dict] = field(default_factory=list)  # timed devices: every step tried

    def to_dict(self) -> dict:
        """Its figures as compress's metrics.json records them (where no fallback model was made)."""
        out = {"aim": self.aim} if self.aim is not None else {}
        out |= {"timed": self.timed} if self.timed else {}
        if self.keep is not None:
            out |= {"share": self.share, "relative_cost": self.relative_cost}
            out |= {"measured_ratio": self.measured_ratio} if self.measured_ratio is not None else {}
        return out | ({"why": self.why} if self.why else {})


def fallback(search, keep: dict, cost, bench, baseline, cfg, floor) -> Fallback:
    """The structure one step back along the search's path, at `compress.fallback` times the aim.

    The search removed elements least wanted first, so walking back adds the
    removed elements its compressor wants most, while the cost stays within
    the looser aim (and, on a microcontroller, the part's limits). On a timed
    device the latency model's word is checked: the whole way back and shares
    of it (`FALLBACK_STEPS`) are timed together against the baseline, and the
    longest that measures within the aim is taken (structures far from where
    the model was refitted are predicted less well: UCI HAPT, ort-1t, the
    whole way predicted 0.363, measured 0.444). `floor`: the `Floor` check.
    """
    from components.pruning.costs import resized_spec

    if cfg.fallback <= 0:
        return Fallback("compress.fallback is 0: no fallback")
    if floor.above_budget:  # said up front: the budget is out of reach, and a step back is further from it
        return Fallback(f"the device cannot reach the budget (one element per layer is at {floor.predicted:.3f}), "
                        "so a step back cannot either")
    aim = min(1.0, search.s.budget * cfg.fallback)
    widths = {name: len(idx) for name, idx in keep.items()}
    here = cost.relative(resized_spec(search.spec, widths))
    if here >= aim:
        log.info("no fallback: the chosen structure is at %.3f of the baseline's %s, already at or past the "
                 "fallback's aim %.3f", here, cost.name, aim)
        return Fallback(f"the chosen structure is at {here:.3f}, at or past the fallback's aim {aim:.3f}", aim)
    added = _way_back(search, keep, cost, aim)
    steps = {share: _with_added(keep, added[:round(share * len(added))]) for share in FALLBACK_STEPS}
    specs = {share: resized_spec(search.spec, {n: len(i) for n, i in kept.items()}) for share, kept in steps.items()}
    out = Fallback(aim=aim, share=1.0)
    if bench is not None:  # a latency cost on a timed device (compress gives no bench otherwise)
        timed = bench.time({f"fallback{s}": spec for s, spec in specs.items()}, baseline.spec)
        measured = {s: timed[f"fallback{s}"]["ratio"] for s in specs}
        within = [s for s in FALLBACK_STEPS if measured[s] <= aim * (1 + cfg.measured_tolerance)]
        out.timed = [{"share": s, "predicted_ratio": cost.relative(specs[s]), "measured_ratio": measured[s],
                      "params": specs[s].params} for s in FALLBACK_STEPS]
        if not within:
            log.info("no fallback: a quarter of the way back already measures %.3f of the baseline's latency, past "
                     "the fallback's aim %.3f", measured[FALLBACK_STEPS[-1]], aim)
            out.why = (f"a quarter of the way back measures {measured[FALLBACK_STEPS[-1]]:.3f}, past the fallback's "
                       f"aim {aim:.3f}")
            return out
        out.share = max(within)
        out.measured_ratio = measured[out.share]
    out.keep, out.relative_cost = steps[out.share], cost.relative(specs[out.share])
    log.info("fallback: %s of the way back along the search's path, %d parameters at %.3f of the baseline's %s "
             "(aim %.3f)%s", f"{100 * out.share:.0f} %", specs[out.share].params, out.relative_cost, cost.name, aim,
             f", measured {out.measured_ratio:.3f}" if out.measured_ratio is not None else "")
    return out


def _way_back(search, keep: dict, cost, aim: float) -> list[tuple[str, int]]:
    """The removed elements to put back, most wanted by the compressor first, each while the whole stays within
    `aim` (and fits the part): (group, element index) in the order they were added."""
    from components.pruning.costs import resized_spec

    probs = [p.detach() for p in search.compressor()]
    kept = {name: set(idx.tolist()) for name, idx in keep.items()}
    order = sorted(((float(p[i]), name, i) for name, p in zip(search.names, probs) for i in range(len(p))
                    if i not in kept[name] and kept[name]), reverse=True)  # a layer removed whole stays removed
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
