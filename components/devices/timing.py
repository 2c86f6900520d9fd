"""The timing protocol: warm up, calibrate, then sample in rounds until each median is stable (or a cap).

One sample runs an inference `inner_loops` times back to back, chosen so a
sample lasts at least `min_sample_s`: timer resolution and Python call
overhead stay far below what is measured. Configurations are timed together,
round-robin: each round takes `samples_per_round` samples of every
configuration still running. On a shared or throttling machine the speed
drifts in phases of a fraction of a second; spreading each configuration's
samples over the whole batch keeps one slow phase from biasing one
configuration (back-to-back timing repeated only to about 20 % here, see
benchmarks/README.md). A configuration is stable once it has had
`min_rounds` rounds and its median moved less than `rel_tolerance` in the
last one; it stops then, or at `max_repeats` samples or `max_time_s` timed
seconds. The garbage collector is off while timing.

`busy_s` asks for at least that many timed seconds in all: when the next
configurations convert on other cores meanwhile, extra rounds cost no wall
time and tighten the medians.
"""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable

from components.config import TimingParams

_MAX_INNER = 1 << 20


@dataclass(frozen=True)
class Timing:
    latency_ms: float  # median time of one inference
    q1_ms: float
    q3_ms: float
    iqr_ms: float
    repeats: int  # samples taken
    inner_loops: int  # inferences per sample
    timed_s: float  # total duration of the samples (the runs themselves)
    stable: bool  # the median met the tolerance before a cap

    @property
    def relative_iqr(self) -> float:
        return self.iqr_ms / self.latency_ms if self.latency_ms > 0 else float("nan")

    def to_dict(self) -> dict:
        return asdict(self)


def _sample(run: Callable[[], object], loops: int) -> float:
    start = time.perf_counter()
    for _ in range(loops):
        run()
    return time.perf_counter() - start


def calibrate(run: Callable[[], object], min_sample_s: float) -> int:
    """The smallest power-of-two-ish loop count whose sample lasts at least `min_sample_s`."""
    loops = 1
    while loops < _MAX_INNER:
        elapsed = _sample(run, loops)
        if elapsed >= min_sample_s:
            return loops
        grow = min_sample_s / elapsed * 1.25 if elapsed > 0 else 10.0
        loops = min(_MAX_INNER, max(loops * 2, int(loops * grow)))
    return loops


def moved_less_than(samples: list[float], before: int, rel_tolerance: float) -> bool:
    """Whether the median of all samples is within `rel_tolerance` of the median of the first `before`."""
    if before < 1:
        return False
    now, then = statistics.median(samples), statistics.median(samples[:before])
    return abs(now - then) <= rel_tolerance * now


class _Series:
    """The samples of one configuration."""

    def __init__(self, run: Callable[[], object], loops: int):
        self.run, self.loops = run, loops
        self.samples: list[float] = []
        self.timed_s = 0.0
        self.rounds = 0
        self.stable = False

    def take(self, count: int) -> int:
        before = len(self.samples)
        for _ in range(count):
            elapsed = _sample(self.run, self.loops)
            self.timed_s += elapsed
            self.samples.append(elapsed / self.loops)
        self.rounds += 1
        return before

    def capped(self, p: TimingParams) -> bool:
        return len(self.samples) >= p.max_repeats or self.timed_s >= p.max_time_s

    def result(self) -> Timing:
        s = self.samples
        q1, median, q3 = statistics.quantiles(s, n=4, method="inclusive") if len(s) > 1 else s * 3
        return Timing(latency_ms=median * 1e3, q1_ms=q1 * 1e3, q3_ms=q3 * 1e3, iqr_ms=(q3 - q1) * 1e3,
                      repeats=len(s), inner_loops=self.loops, timed_s=self.timed_s, stable=self.stable)


def measure_many(runs: list[Callable[[], object]], p: TimingParams, busy_s: float = 0.0) -> list[Timing]:
    """Time each of `runs` (one inference each), round-robin, with the protocol above."""
    series = []
    for run in runs:
        for _ in range(p.warmup_runs):
            run()
        series.append(_Series(run, calibrate(run, p.min_sample_s)))
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        while True:
            busy = sum(s.timed_s for s in series) < busy_s
            active = [s for s in series if not s.capped(p) and (not s.stable or busy)]
            if not active:
                break
            for s in active:
                before = s.take(p.samples_per_round)
                s.stable = s.rounds >= p.min_rounds and moved_less_than(s.samples, before, p.rel_tolerance)
    finally:
        if was_enabled:
            gc.enable()
    return [s.result() for s in series]


def measure(run: Callable[[], object], p: TimingParams, busy_s: float = 0.0) -> Timing:
    return measure_many([run], p, busy_s)[0]
