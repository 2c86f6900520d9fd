"""DeepSense preprocessing (Yao et al., WWW 2017), the parts that do not depend on the source format.

A sample is T intervals of tau seconds. Each interval of each sensor axis
holds a fixed number of evenly spaced points; the FFT of every interval is
taken and its real and imaginary parts are stacked, so the model sees, per
window, `T x (sensors x axes x 2 x F)`.
"""

from __future__ import annotations

import numpy as np

# Axis order of the `x` array every ingest writes.
FEATURE_LAYOUT = ("window", "interval", "sensor", "axis", "real_imag", "frequency")
SIGNAL_LAYOUT = ("window", "sensor", "axis", "time")


def interval_spectra(signal: np.ndarray, intervals: int) -> np.ndarray:
    """FFT each of `intervals` equal slices of the time axis; stack real and imaginary parts.

    signal: float [N, S, A, L] with L divisible by `intervals`.
    Returns float32 [N, T, S, A, 2, F] with T = intervals and F = L / T.
    """
    n, sensors, axes, length = signal.shape
    if intervals <= 0 or length % intervals:
        raise ValueError(f"a window of {length} points cannot be cut into {intervals} equal intervals")
    points = length // intervals
    sliced = signal.reshape(n, sensors, axes, intervals, points)
    spectrum = np.fft.fft(sliced, axis=-1)  # [N, S, A, T, F]
    stacked = np.stack((spectrum.real, spectrum.imag), axis=-2)  # [N, S, A, T, 2, F]
    return np.ascontiguousarray(stacked.transpose(0, 3, 1, 2, 4, 5), dtype=np.float32)


def resample_segments(
    times: np.ndarray, values: np.ndarray, starts: np.ndarray, stops: np.ndarray, points: int
) -> np.ndarray:
    """Linearly resample each segment of rows onto `points` evenly spaced times.

    times: float [R], each segment's times relative to its interval, in [0, 1),
    ascending within a segment. values: [R, A]. Segment s covers rows
    starts[s]:stops[s] (non-empty). The targets are the centres of `points`
    equal sub-intervals of [0, 1); outside a segment's first and last row the
    nearest row's value is held. Returns float32 [len(starts), A, points].
    Vectorised over all segments (one searchsorted), as this runs on every row.
    """
    segments = len(starts)
    if segments == 0:
        return np.empty((0, values.shape[1], points), dtype=np.float32)
    rank = np.repeat(np.arange(segments, dtype=np.float64) * 2.0, stops - starts)
    offsets = np.concatenate(([0], np.cumsum(stops - starts)))
    picked = _ranges(starts, stops)
    row_keys = rank + times[picked]
    target_u = (np.arange(points) + 0.5) / points
    target_keys = (np.arange(segments, dtype=np.float64)[:, None] * 2.0 + target_u[None, :]).ravel()
    pos = np.searchsorted(row_keys, target_keys, side="right")
    first = np.repeat(offsets[:-1], points)
    last = np.repeat(offsets[1:] - 1, points)
    hi = np.clip(pos, first, last)
    lo = np.clip(pos - 1, first, last)
    span = row_keys[hi] - row_keys[lo]
    weight = np.divide(target_keys - row_keys[lo], span, out=np.zeros_like(span), where=span > 0)
    weight = np.clip(weight, 0.0, 1.0)[:, None]
    v = values[picked]
    out = v[lo] + weight * (v[hi] - v[lo])  # [segments * points, A]
    return out.reshape(segments, points, -1).transpose(0, 2, 1).astype(np.float32)


def _ranges(starts: np.ndarray, stops: np.ndarray) -> np.ndarray:
    """Concatenation of arange(start, stop) for every pair, without a Python loop."""
    lengths = stops - starts
    total = int(lengths.sum())
    if total == 0:
        return np.empty(0, dtype=np.int64)
    steps = np.ones(total, dtype=np.int64)
    boundaries = np.cumsum(lengths)[:-1]
    steps[0] = starts[0]
    steps[boundaries] = starts[1:] - stops[:-1] + 1
    return np.cumsum(steps)
