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

With a `reference` (one inference of a fixed model, e.g. the baseline), the
machine's speed is measured alongside: one reference sample before the
first configuration sample, then one after every `reference_every`
configuration samples, and one after the last. Each configuration sample is
divided by the reference time at its moment, interpolated between the
reference samples taken just before and just after it, so a phase in which
the machine runs 50 % slower slows both and leaves the ratio alone
(milliseconds measured in different phases differ; ratios do not). The stop
rule then watches the median ratio instead of the median milliseconds; the
milliseconds are still reported beside the ratio.

With a `meter` (devices/meters.py), its counter is read just before and
after every configuration sample: the joules a configuration's samples
used over the inferences they ran is its measured energy per inference.
"""

from __future__ import annotations

import bisect
import gc
import statistics
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable

from components.settings.profile import TimingParams

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
    # with a reference model (None without): median over the samples of time / the reference time around it
    ratio: float | None = None
    ratio_q1: float | None = None
    ratio_q3: float | None = None
    reference_ms: float | None = None  # median time of one reference inference over the whole batch
    # with a meter (None without): what the samples used over the inferences they ran, and what measured it
    energy_mj: float | None = None
    energy_source: str | None = None

    def to_dict(self) -> dict:
        """Its fields; the energy ones only where a meter measured them (profile tables keep their columns)."""
        out = asdict(self)
        if self.energy_mj is None:
            del out["energy_mj"], out["energy_source"]
        return out


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


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, median, q3


class _Series:
    """The samples of one run (a configuration, or the reference), each with the moment it was taken."""

    def __init__(self, run: Callable[[], object], loops: int, meter=None):
        self.run, self.loops, self.meter = run, loops, meter
        self.joules = 0.0  # what the samples used, with a meter
        self.samples: list[float] = []  # seconds per inference
        self.stamps: list[float] = []  # perf_counter at the middle of each sample
        self.timed_s = 0.0
        self.rounds = 0
        self.stable = False

    def take_one(self) -> None:
        before = self.meter.joules() if self.meter is not None else 0.0
        start = time.perf_counter()
        elapsed = _sample(self.run, self.loops)
        if self.meter is not None:
            self.joules += self.meter.joules() - before
        self.timed_s += elapsed
        self.samples.append(elapsed / self.loops)
        self.stamps.append(start + elapsed / 2)

    def take(self, count: int, reference: _Reference | None = None) -> int:
        """One round: `count` samples (the reference paced in between); returns the count before it."""
        before = len(self.samples)
        for _ in range(count):
            self.take_one()
            if reference is not None:
                reference.tick()
        self.rounds += 1
        return before

    def capped(self, p: TimingParams) -> bool:
        return len(self.samples) >= p.max_repeats or self.timed_s >= p.max_time_s

    def ratios(self, reference: _Reference) -> list[float]:
        return [value / reference.around(stamp) for value, stamp in zip(self.samples, self.stamps)]

    def result(self, reference: _Reference | None = None) -> Timing:
        q1, median, q3 = _quartiles(self.samples)
        timing = Timing(latency_ms=median * 1e3, q1_ms=q1 * 1e3, q3_ms=q3 * 1e3, iqr_ms=(q3 - q1) * 1e3,
                        repeats=len(self.samples), inner_loops=self.loops, timed_s=self.timed_s,
                        stable=self.stable)
        if self.meter is not None:
            timing = replace(timing, energy_mj=self.joules * 1e3 / (len(self.samples) * self.loops),
                             energy_source=f"measured: {self.meter.source}")
        if reference is None:
            return timing
        r1, ratio, r3 = _quartiles(self.ratios(reference))
        return replace(timing, ratio=ratio, ratio_q1=r1, ratio_q3=r3,
                       reference_ms=statistics.median(reference.samples) * 1e3)


class _Reference(_Series):
    """The reference model's samples: one after every `every` configuration samples (see the module docstring)."""

    def __init__(self, run: Callable[[], object], loops: int, every: int):
        super().__init__(run, loops)
        self.every, self.pending = every, 0

    def tick(self) -> None:
        self.pending += 1
        if self.pending >= self.every:
            self.take_one()
            self.pending = 0

    def close(self) -> None:
        """A last sample, so the configuration samples since the previous one have one after them too."""
        if self.pending or not self.samples:
            self.take_one()
            self.pending = 0

    def around(self, stamp: float) -> float:
        """Seconds per reference inference at `stamp`: interpolated between the samples just before and after it.

        Linear in time, so a machine that slows down steadily gives every
        configuration sample the reference time of its own moment; at either
        end (no sample after it yet, while the stop rule looks) the nearest one.
        """
        i = bisect.bisect_left(self.stamps, stamp)
        if i == 0 or i == len(self.stamps):
            return self.samples[min(i, len(self.samples) - 1)]
        t0, t1 = self.stamps[i - 1], self.stamps[i]
        weight = (stamp - t0) / (t1 - t0) if t1 > t0 else 0.5
        return self.samples[i - 1] + weight * (self.samples[i] - self.samples[i - 1])


def _prepare(run: Callable[[], object], p: TimingParams) -> int:
    """Warm `run` up and return its loop count."""
    for _ in range(p.warmup_runs):
        run()
    return calibrate(run, p.min_sample_s)


def measure_many(runs: list[Callable[[], object]], p: TimingParams, busy_s: float = 0.0,
                 reference: Callable[[], object] | None = None, meter=None) -> list[Timing]:
    """Time each of `runs` (one inference each), round-robin, with the protocol above.

    With `reference`, every Timing also carries the ratio to it and the
    reference's own median (`reference_ms`); with `meter`, its energy per inference.
    """
    if reference is not None and p.reference_every < 1:
        raise ValueError(f"timing.reference_every must be at least 1 (got {p.reference_every})")
    series = [_Series(run, _prepare(run, p), meter) for run in runs]
    ref = None
    if reference is not None and series:
        ref = _Reference(reference, _prepare(reference, p), p.reference_every)
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        if ref is not None:
            ref.take_one()  # the first configuration sample has one before it
        _rounds(series, p, busy_s, ref)
        if ref is not None:
            ref.close()
    finally:
        if was_enabled:
            gc.enable()
    return [s.result(ref) for s in series]


def _rounds(series: list[_Series], p: TimingParams, busy_s: float, ref: _Reference | None) -> None:
    """Round-robin until every series is stable (or busy time is used up) or capped."""
    while True:
        timed_s = sum(s.timed_s for s in series) + (ref.timed_s if ref is not None else 0.0)
        busy = timed_s < busy_s
        active = [s for s in series if not s.capped(p) and (not s.stable or busy)]
        if not active:
            return
        for s in active:
            before = s.take(p.samples_per_round, ref)
            watched = s.ratios(ref) if ref is not None else s.samples
            s.stable = s.rounds >= p.min_rounds and moved_less_than(watched, before, p.rel_tolerance)


def measure(run: Callable[[], object], p: TimingParams, busy_s: float = 0.0,
            reference: Callable[[], object] | None = None, meter=None) -> Timing:
    return measure_many([run], p, busy_s, reference, meter)[0]
