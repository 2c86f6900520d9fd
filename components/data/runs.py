"""Cutting fixed-length samples out of labelled runs of evenly spaced rows.

A run is a stretch of consecutive rows with one label (one activity of one
user in one session). Samples never cross two runs: a sample that would
straddle an activity change, an unlabelled gap or two recordings teaches the
model a mixture. Both raw loaders (UCI HAPT, a user's own rows) use this.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def sample_starts(run_starts: np.ndarray, run_stops: np.ndarray, length: int, stride: int) -> np.ndarray:
    """First rows of every sample of `length` rows, `stride` apart, inside each run [start, stop).

    Runs shorter than `length` give no sample. Returns int64 row indices, run after run.
    """
    counts = np.maximum((run_stops - run_starts - length) // stride + 1, 0)
    if counts.sum() == 0:
        return np.empty(0, dtype=np.int64)
    offsets = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    return np.repeat(run_starts, counts).astype(np.int64) + offsets * stride


def take_samples(values: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    """values [R, C] -> float32 [len(starts), C, length]: the rows starts[i] .. starts[i] + length - 1."""
    if len(starts) == 0:
        return np.empty((0, values.shape[1], length), dtype=np.float32)
    view = sliding_window_view(values, length, axis=0)  # [R - length + 1, C, length], no copy
    return np.ascontiguousarray(view[starts], dtype=np.float32)


def run_bounds(keys: np.ndarray, breaks: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(starts, stops) of the runs of equal consecutive `keys`; `breaks[i]` True also starts a run at row i."""
    n = len(keys)
    if n == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    change = np.empty(n, dtype=bool)
    change[0] = True
    change[1:] = keys[1:] != keys[:-1]
    if breaks is not None:
        change |= breaks
    starts = np.flatnonzero(change)
    return starts, np.append(starts[1:], n)
