"""The timing protocol: warm up, calibrate, then sample until the median is stable (or a cap).

One sample runs the inference `inner_loops` times back to back, chosen so a
sample lasts at least `min_sample_s`: timer resolution and Python call
overhead stay far below what is measured. Samples are taken until at least
`min_repeats` exist and the median of all samples differs from the median
without the newest quarter by less than `rel_tolerance`, or until
`max_repeats` / `max_time_s`. The garbage collector is off while timing.

`busy_s` asks for at least that many timed seconds: when the next
configuration converts on other cores meanwhile, extra samples cost no wall
time and tighten the median.
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


def is_stable(samples: list[float], min_repeats: int, rel_tolerance: float) -> bool:
    if len(samples) < max(min_repeats, 4):
        return False
    older = samples[: len(samples) - len(samples) // 4]
    now, before = statistics.median(samples), statistics.median(older)
    return abs(now - before) <= rel_tolerance * now


def measure(run: Callable[[], object], p: TimingParams, busy_s: float = 0.0) -> Timing:
    """Time `run` (one inference) with the protocol above."""
    for _ in range(p.warmup_runs):
        run()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        loops = calibrate(run, p.min_sample_s)
        samples: list[float] = []
        timed = 0.0
        stable = False
        while len(samples) < p.max_repeats and timed < p.max_time_s:
            elapsed = _sample(run, loops)
            timed += elapsed
            samples.append(elapsed / loops)
            stable = is_stable(samples, p.min_repeats, p.rel_tolerance)
            if stable and timed >= busy_s:
                break
    finally:
        if was_enabled:
            gc.enable()
    q1, median, q3 = statistics.quantiles(samples, n=4, method="inclusive") if len(samples) > 1 else samples * 3
    return Timing(latency_ms=median * 1e3, q1_ms=q1 * 1e3, q3_ms=q3 * 1e3, iqr_ms=(q3 - q1) * 1e3,
                  repeats=len(samples), inner_loops=loops, timed_s=timed, stable=stable)
