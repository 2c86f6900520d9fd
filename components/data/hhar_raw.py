"""HHAR raw rows -> DeepSense samples, streaming with bounded memory.

Pass 1 (per sensor file, block by block): rows of each (user, model, device)
are put on an absolute time grid of tau-second intervals (by Creation_Time, so
the accelerometer and gyroscope of one device, which share a clock, line up
without coordination), each interval is resampled to a fixed number of points,
and the intervals are appended to per-device spill files on disk. An interval
that straddles two blocks is carried into the next block; rows that arrive
after their interval was emitted (the few swapped rows of the original files)
are dropped and counted.

Pass 2 (per device): the accelerometer and gyroscope intervals are joined on
their grid index, runs of consecutive intervals with one label are cut into
samples of T intervals, and the samples are handed out in bounded blocks.

This follows the description of the DeepSense/DeepIoT authors' HHAR
preprocessing (pair sensors of the same user/device by time, fixed points per
interval, T intervals per sample); the code is our own.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from components.data.deepsense import resample_segments

AXES = ("x", "y", "z")


@dataclass
class GroupIndex:
    """Stable ids for (user, model, device) across every file of a run."""

    keys: list[tuple[str, str, str]] = field(default_factory=list)
    _ids: dict[tuple[str, str, str], int] = field(default_factory=dict)

    def id_of(self, key: tuple[str, str, str]) -> int:
        if key not in self._ids:
            self._ids[key] = len(self.keys)
            self.keys.append(key)
        return self._ids[key]

    def codes(self, frame: pd.DataFrame) -> np.ndarray:
        """Group id per row, from the categorical User/Model/Device columns."""
        parts = [frame[c].cat for c in ("User", "Model", "Device")]
        sizes = [len(p.categories) for p in parts]
        combo = (parts[0].codes.to_numpy(np.int64) * sizes[1] + parts[1].codes.to_numpy(np.int64)) * sizes[2]
        combo += parts[2].codes.to_numpy(np.int64)
        uniq, inverse = np.unique(combo, return_inverse=True)
        lookup = np.empty(len(uniq), dtype=np.int64)
        for i, c in enumerate(uniq):
            u, rest = divmod(int(c), sizes[1] * sizes[2])
            m, d = divmod(rest, sizes[2])
            key = (str(parts[0].categories[u]), str(parts[1].categories[m]), str(parts[2].categories[d]))
            lookup[i] = self.id_of(key)
        return lookup[inverse]


class IntervalSpill:
    """Resampled intervals of one sensor, one set of append-only files per device group."""

    def __init__(self, directory: Path, points: int, axes: int = 3):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.row_shape = (axes, points)
        self.groups: set[int] = set()

    def _file(self, group: int, what: str) -> Path:
        return self.dir / f"{group}.{what}"

    def append(self, group: int, k: np.ndarray, label: np.ndarray, values: np.ndarray) -> None:
        self.groups.add(group)
        for what, arr, dtype in (("k", k, np.int64), ("label", label, np.int16), ("values", values, np.float32)):
            with open(self._file(group, what), "ab") as f:
                np.ascontiguousarray(arr, dtype=dtype).tofile(f)

    def keys(self, group: int) -> tuple[np.ndarray, np.ndarray]:
        return np.fromfile(self._file(group, "k"), np.int64), np.fromfile(self._file(group, "label"), np.int16)

    def values(self, group: int, start: int, stop: int) -> np.ndarray:
        row = int(np.prod(self.row_shape))
        data = np.fromfile(self._file(group, "values"), np.float32, count=(stop - start) * row, offset=start * row * 4)
        return data.reshape(stop - start, *self.row_shape)


@dataclass
class ResampleStats:
    rows_in: int = 0
    rows_late: int = 0  # arrived after their interval had been emitted
    intervals: int = 0
    intervals_sparse: int = 0  # fewer rows than min_rows_per_interval
    intervals_mixed: int = 0  # rows of more than one label
    rows_per_interval: dict[int, list[int]] = field(default_factory=dict)  # group -> counts sample


class SensorResampler:
    """Pass 1 for one sensor: raw rows -> resampled intervals in an IntervalSpill."""

    _MAX_COUNT_SAMPLES = 4096

    def __init__(self, spill: IntervalSpill, groups: GroupIndex, label_ids: dict[str, int],
                 interval_s: float, points: int, min_rows: int):
        self.spill, self.groups, self.label_ids = spill, groups, label_ids
        self.interval_ns = interval_s * 1e9
        self.points, self.min_rows = points, min_rows
        self.stats = ResampleStats()
        self._carry: tuple[np.ndarray, ...] | None = None
        self._last_k: dict[int, int] = {}

    def add(self, frame: pd.DataFrame) -> None:
        """Take one block of rows (already validated)."""
        gt = frame["gt"].cat
        code_to_label = np.array([self.label_ids.get(str(c), -1) for c in gt.categories], dtype=np.int16)
        label = code_to_label[gt.codes.to_numpy()] if len(code_to_label) else np.empty(0, np.int16)
        keep = label >= 0
        group = self.groups.codes(frame)[keep]
        t = frame["Creation_Time"].to_numpy(np.float64)[keep]
        xyz = frame[list(AXES)].to_numpy(np.float64)[keep]
        self.stats.rows_in += int(keep.sum())
        self._process(group, t, label[keep], xyz, final=False)

    def finish(self) -> None:
        """Emit the intervals still carried at the end of the input."""
        empty = (np.empty(0, np.int64), np.empty(0), np.empty(0, np.int16), np.empty((0, 3)))
        self._process(*empty, final=True)

    def _process(self, group, t, label, xyz, final: bool) -> None:
        if self._carry is not None:
            group, t, label, xyz = (np.concatenate((c, a)) for c, a in zip(self._carry, (group, t, label, xyz)))
            self._carry = None
        if len(t) == 0:
            return
        order = np.lexsort((t, group))
        group, t, label, xyz = group[order], t[order], label[order], xyz[order]
        k = np.floor(t / self.interval_ns).astype(np.int64)
        last = np.array([self._last_k.get(int(g), np.iinfo(np.int64).min) for g in range(group.max() + 1)])
        late = k <= last[group]
        if late.any():
            self.stats.rows_late += int(late.sum())
            group, t, label, xyz, k = group[~late], t[~late], label[~late], xyz[~late], k[~late]
            if len(t) == 0:
                return
        # Segment boundaries: a new (group, k) starts a new interval.
        new = np.ones(len(k), dtype=bool)
        new[1:] = (group[1:] != group[:-1]) | (k[1:] != k[:-1])
        starts = np.flatnonzero(new)
        stops = np.append(starts[1:], len(k))
        seg_group, seg_k = group[starts], k[starts]
        if not final:  # hold back each group's last interval: its rows may continue in the next block
            is_last = np.append(seg_group[1:] != seg_group[:-1], True)
            held = np.zeros(len(k), dtype=bool)
            for s, e in zip(starts[is_last], stops[is_last]):
                held[s:e] = True
            self._carry = (group[held], t[held], label[held], xyz[held])
            starts, stops, seg_group, seg_k = starts[~is_last], stops[~is_last], seg_group[~is_last], seg_k[~is_last]
        self._emit(group, t, label, xyz, k, starts, stops, seg_group, seg_k)

    def _emit(self, group, t, label, xyz, k, starts, stops, seg_group, seg_k) -> None:
        if len(starts) == 0:
            return
        counts = stops - starts
        lab_min = np.minimum.reduceat(label, starts)
        lab_max = np.maximum.reduceat(label, starts)
        mixed = lab_min != lab_max
        sparse = counts < self.min_rows
        self.stats.intervals_mixed += int(mixed.sum())
        self.stats.intervals_sparse += int((sparse & ~mixed).sum())
        for g in np.unique(seg_group):
            self._last_k[int(g)] = int(seg_k[seg_group == g].max())
            sample = self.stats.rows_per_interval.setdefault(int(g), [])
            if len(sample) < self._MAX_COUNT_SAMPLES:
                sample.extend(counts[seg_group == g][: self._MAX_COUNT_SAMPLES - len(sample)].tolist())
        ok = ~(mixed | sparse)
        starts, stops, seg_group, seg_k, seg_label = starts[ok], stops[ok], seg_group[ok], seg_k[ok], lab_min[ok]
        if len(starts) == 0:
            return
        rel = (t - k * self.interval_ns) / self.interval_ns
        values = resample_segments(rel, xyz, starts, stops, self.points)
        self.stats.intervals += len(starts)
        for g in np.unique(seg_group):
            sel = seg_group == g
            self.spill.append(int(g), seg_k[sel], seg_label[sel], values[sel])


@dataclass
class WindowBlock:
    """A block of samples from one device group."""

    signal: np.ndarray  # float32 [n, sensors, axes, T * points]
    label: np.ndarray  # int16 [n]
    group: int
    start_s: np.ndarray  # float64 [n], grid time of the first interval


def iter_windows(spills: list[IntervalSpill], intervals: int, stride: int, interval_s: float,
                 block: int = 2048) -> Iterator[WindowBlock]:
    """Pass 2: join the sensors' intervals per group and cut samples of T intervals."""
    common_groups = set.intersection(*(s.groups for s in spills)) if spills else set()
    for group in sorted(common_groups):
        keys = [s.keys(group) for s in spills]
        k, label, rows = _join(keys)
        starts = _sample_starts(k, label, intervals, stride)
        for b in range(0, len(starts), block):
            first = starts[b : b + block]
            idx = first[:, None] + np.arange(intervals)[None, :]  # [n, T] positions in the join
            per_sensor = []
            for spill, r in zip(spills, rows):
                lo, hi = int(r[idx].min()), int(r[idx].max()) + 1
                vals = spill.values(group, lo, hi)[r[idx] - lo]  # [n, T, axes, points]
                n, t_, a, p = vals.shape
                per_sensor.append(vals.transpose(0, 2, 1, 3).reshape(n, a, t_ * p))
            yield WindowBlock(
                signal=np.stack(per_sensor, axis=1),
                label=label[first].astype(np.int16),
                group=group,
                start_s=k[first] * interval_s,
            )


def _join(keys: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Grid indices present in every sensor with the same label; row of each in each sensor."""
    k, label = keys[0]
    rows = [np.arange(len(k))]
    for other_k, other_label in keys[1:]:
        common, ia, ib = np.intersect1d(k, other_k, assume_unique=True, return_indices=True)
        same = label[ia] == other_label[ib]
        k, label = common[same], label[ia][same]
        rows = [r[ia][same] for r in rows] + [ib[same]]
    return k, label, rows


def _sample_starts(k: np.ndarray, label: np.ndarray, intervals: int, stride: int) -> np.ndarray:
    """Positions where T consecutive grid intervals of one label begin, every `stride` intervals."""
    if len(k) < intervals:
        return np.empty(0, dtype=np.int64)
    breaks = np.ones(len(k), dtype=bool)
    breaks[1:] = (np.diff(k) != 1) | (label[1:] != label[:-1])
    run_starts = np.flatnonzero(breaks)
    run_stops = np.append(run_starts[1:], len(k))
    out = [np.arange(s, e - intervals + 1, stride) for s, e in zip(run_starts, run_stops) if e - s >= intervals]
    return np.concatenate(out).astype(np.int64) if out else np.empty(0, dtype=np.int64)
