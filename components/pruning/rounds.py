"""The search's rounds: DeepIoT's compressor-critic steps (checkpointed), and FastDeepIoT's refit rounds.

`search_rounds` runs the search, resuming from its checkpoint where that is
this search's (the same settings, baseline and latency model), and setting a
damaged one aside. `refit_rounds` makes the latency model right where the
search went: the structures it visited are profiled once each on the device,
the model is refitted on the profile table plus them, and the search goes on
under it, for a bounded number of rounds (`compress.refit`).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass
class Checkpoint:
    path: Path
    fingerprint: str  # what the search depends on (settings, baseline, latency model): another one starts afresh
    every: int  # steps between checkpoints

    def save(self, state: dict) -> None:
        import torch

        tmp = self.path.with_suffix(".tmp")
        torch.save(state | {"fingerprint": self.fingerprint}, tmp)
        tmp.replace(self.path)


def search_rounds(search, checkpoint: Checkpoint, progress: Callable) -> Callable[[int], None]:
    """Resume `search` from `checkpoint` if it can, run it to its end, and return `more(steps)`: the search run
    on for that many further steps (what a refit round does after swapping the cost)."""
    resume(search, checkpoint.path, checkpoint.fingerprint)
    checkpoint.path.parent.mkdir(parents=True, exist_ok=True)
    search.run(progress, checkpoint.save, checkpoint.every)

    def more(steps: int) -> None:
        search.run(progress, checkpoint.save, checkpoint.every, until=search.step_index + steps)

    return more


def resume(search, checkpoint: Path, fingerprint: str) -> None:
    """Resume the search from `checkpoint` where it is this search's; set a damaged one aside and start afresh."""
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


@dataclass
class Refit:
    latency_model: object  # the model the search steered by last
    rounds: list[dict] = field(default_factory=list)  # per round: profiled, errors before and after the refit


def refit_rounds(search, bench, baseline, latency_model, cfg, params, device, search_on: Callable[[int], None]
                 ) -> Refit:
    """Profile what the search visited, score the model on it, refit, swap the cost, search on; bounded rounds."""
    from components.pruning.costs import LatencyCost
    from components.pruning.on_device import neighbours, prediction_errors, refit, visited_items, within_shares

    done = Refit(latency_model)
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
        errors = prediction_errors(done.latency_model, reference, new_rows)
        record = {"round": r, "profiled": len(new_rows), "before_refit": within_shares(errors)}
        if not new_rows and (r > 1 or not bench.own_rows()):
            log.info("refit round %d: every visited structure was already profiled; the model stays", r)
            done.rounds.append(record)
            break
        # (a resumed run whose structures were all profiled before refits on the same rows: the same model)
        done.latency_model = refit(bench, params, device)
        search.set_cost(LatencyCost(baseline.spec, done.latency_model, device.name))
        record["after_refit"] = within_shares(prediction_errors(done.latency_model, reference, new_rows))
        record["kept_cost_after_refit"] = search.kept_cost()
        shares = record["before_refit"]
        log.info("refit round %d: %d configurations profiled; the latency model had %s of %d new compressed "
                 "structures within +-10 %% (MAPE %s); refitted, the kept structure is now at %.3f of the "
                 "baseline's predicted latency", r, len(new_rows),
                 f"{shares.get('within_10_pct', float('nan')):.0f} %", shares.get("candidates", 0),
                 f"{shares.get('mape_pct', float('nan')):.1f} %", record["kept_cost_after_refit"])
        search_on(cfg.refit.steps)
        done.rounds.append(record)
    return done
