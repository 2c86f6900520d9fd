"""`ingest` for UCI HAPT's raw recordings (Reyes-Ortiz et al., Neurocomputing 2016), in UCI's own layout.

`RawData/` holds, per experiment NN of user UU, `acc_expNN_userUU.txt` and
`gyro_expNN_userUU.txt` (one `x y z` row per sample at 50 Hz; row i of both
files is the same instant: accelerometer in g with gravity, gyroscope in
rad/s) and one `labels.txt` (`experiment user activity first last`, sample
indices 0-based and inclusive). Experiment by experiment (memory bounded by
one experiment, whatever the number of them), the two files are paired row by
row, every row is validated, and samples of `intervals` x `interval_s` are cut
inside one labelled run, never across two runs or two experiments; the
WindowWriter then takes DeepSense's interval spectra of the two sensors.
Every problem names its file and line, and nothing is written (the output
folder is all or nothing).
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from components.artifacts.atomic import WindowWriter
from components.artifacts.seals import sha256_of
from components.config import Params
from components.data.errors import DataError
from components.data.expectations import ValidationFailed, Validator
from components.data.runs import sample_starts, take_samples
from components.data.text_rows import read_numeric
from components.settings.ingest import IngestParams

log = logging.getLogger(__name__)
SAMPLE_RATE_HZ = 50.0
SENSORS, UNITS = ("accelerometer", "gyroscope"), ("g", "rad/s")
LABELS = ("walking", "walking_upstairs", "walking_downstairs", "sitting", "standing", "laying",  # UCI ids 1-6
          "stand_to_sit", "sit_to_stand", "sit_to_lie", "lie_to_sit", "stand_to_lie", "lie_to_stand")  # 7-12
BASIC = 6
_FILE = re.compile(r"^(acc|gyro)_exp(\d+)_user(\d+)\.txt$")
_COLUMNS = tuple(f"{s}_{a}" for s in SENSORS for a in "xyz")


@dataclass(frozen=True)
class Experiment:
    number: int
    user: int
    acc: Path
    gyro: Path


@dataclass(frozen=True)
class HaptIngest:
    label_names: tuple[str, ...]
    sources: dict[str, str]
    notes: list[str]
    card_stats: dict
    stream_s: float


def find_experiments(directory: Path) -> dict[int, Experiment]:
    """Every experiment's accelerometer and gyroscope file; a file without its partner is an error."""
    if not directory.is_dir():
        raise DataError(directory, "folder not found (expected UCI HAPT's RawData/)")
    found: dict[tuple[int, int], dict[str, Path]] = {}
    for path in sorted(directory.iterdir()):
        m = _FILE.match(path.name)
        if m:
            found.setdefault((int(m.group(2)), int(m.group(3))), {})[m.group(1)] = path
    if not found:
        raise DataError(directory, "no acc_expNN_userUU.txt / gyro_expNN_userUU.txt files")
    experiments: dict[int, Experiment] = {}
    for (number, user), files in sorted(found.items()):
        for have, need in (("acc", "gyro"), ("gyro", "acc")):
            if have in files and need not in files:
                raise DataError(files[have], f"its partner {need}_exp{number:02d}_user{user:02d}.txt is missing: "
                                "the accelerometer and gyroscope of an experiment are read row by row together")
        if number in experiments:
            raise DataError(files["acc"], f"experiment {number} also belongs to user {experiments[number].user} "
                            f"({experiments[number].acc.name}): one experiment, one user")
        experiments[number] = Experiment(number, user, files["acc"], files["gyro"])
    return experiments


def read_labels(path: Path, experiments: dict[int, Experiment]) -> pd.DataFrame:
    """labels.txt as a frame (experiment, user, activity, first, last, line), checked against the files."""
    if not path.exists():
        raise DataError(path, "file not found (UCI HAPT's labels of the activity runs)")
    values = read_numeric(path, 5, " ", "integers (experiment user activity first last)")
    line = np.arange(1, len(values) + 1)
    frac = np.flatnonzero(values != np.round(values))
    if len(frac):
        i, j = divmod(int(frac[0]), 5)
        raise DataError(path, f"{values[i, j]!r} is not a whole number", f"line {i + 1}")
    table = pd.DataFrame(values.astype(np.int64), columns=["experiment", "user", "activity", "first", "last"])
    table["line"] = line
    for row in table.itertuples(index=False):
        where = f"line {row.line}"
        exp = experiments.get(row.experiment)
        if exp is None:
            raise DataError(path, f"experiment {row.experiment} of user {row.user} has no acc/gyro files in "
                            f"{next(iter(experiments.values())).acc.parent}", where)
        if exp.user != row.user:
            raise DataError(path, f"experiment {row.experiment} is labelled as user {row.user}, but its files "
                            f"belong to user {exp.user} ({exp.acc.name})", where)
        if not 1 <= row.activity <= len(LABELS):
            raise DataError(path, f"activity {row.activity} is not one of UCI HAPT's 1..{len(LABELS)}", where)
        if row.first < 0 or row.last < row.first:
            raise DataError(path, f"run {row.first}..{row.last} is empty or negative", where)
    ordered = table.sort_values(["experiment", "first"])
    overlap = (ordered["experiment"].to_numpy()[1:] == ordered["experiment"].to_numpy()[:-1]) & \
              (ordered["first"].to_numpy()[1:] <= ordered["last"].to_numpy()[:-1])
    if overlap.any():
        row = ordered.iloc[int(np.flatnonzero(overlap)[0]) + 1]
        raise DataError(path, f"run {row['first']}..{row['last']} of experiment {row['experiment']} overlaps the "
                        "run before it", f"line {row['line']}")
    return table


def ingest_uci_hapt(params: Params, writer: WindowWriter, validator: Validator) -> HaptIngest:
    cfg = params.ingest.uci_hapt
    root = params.data_root() / cfg.dir
    points = points_per_interval(cfg.interval_s)
    length, stride = cfg.intervals * points, cfg.window_stride_intervals * points
    classes = LABELS if cfg.activities == "all" else LABELS[:BASIC]
    experiments = find_experiments(root)
    runs = read_labels(root / "labels.txt", experiments)
    chosen = _chosen(experiments, cfg.users)
    sources = {f"{root.name}/labels.txt": sha256_of(root / "labels.txt")}
    counts = {"rows": 0, "labelled_samples": {n: 0 for n in LABELS}, "unlabelled_samples": 0,
              "samples_in_runs_shorter_than_a_window": 0, "runs_used": 0}
    rows_per_file: dict[str, int] = {}
    started = time.perf_counter()
    for exp in chosen:
        values, shown = _read_pair(exp, root)
        rows_per_file |= {name: len(values) for name in shown}
        sources |= {name: sha256_of(root / Path(name).name) for name in shown}
        mine = runs[runs["experiment"] == exp.number]
        past = mine[mine["last"] >= len(values)]
        if len(past):
            row = past.iloc[0]
            raise DataError(root / "labels.txt", f"experiment {exp.number}'s run {row['first']}..{row['last']} ends "
                            f"past the end of {exp.acc.name} ({len(values)} rows: samples 0..{len(values) - 1})",
                            f"line {row['line']}")
        _validate_rows(validator, exp, values, params.ingest)
        _count(counts, mine, len(values), length)
        kept = mine[mine["activity"] <= len(classes)]
        counts["runs_used"] += len(kept)
        starts = sample_starts(kept["first"].to_numpy(), kept["last"].to_numpy() + 1, length, stride)
        if len(starts):
            run_of = np.searchsorted(kept["first"].to_numpy(), starts, side="right") - 1
            signal = take_samples(values, starts, length).reshape(len(starts), 2, 3, length)
            n = len(starts)
            writer.add(signal, {"label": (kept["activity"].to_numpy()[run_of] - 1).astype(np.int16),
                                "user": np.full(n, f"user{exp.user:02d}"), "model": np.full(n, "galaxy_s2"),
                                "device": np.full(n, "galaxy_s2"), "source": np.full(n, exp.acc.name),
                                "experiment": np.full(n, exp.number, dtype=np.int16),
                                "start_s": starts / SAMPLE_RATE_HZ})
        log.info("uci_hapt: experiment %d (user %d): %d rows, %d samples", exp.number, exp.user, len(values),
                 len(starts))
    if not validator.report.success:
        raise ValidationFailed(validator.report)
    counts["rows"] = sum(rows_per_file.values()) // 2
    stats = {"rows_per_file": rows_per_file, "sampling_rate_hz": {"galaxy_s2": {"nominal": SAMPLE_RATE_HZ}},
             "resampling": {"none": "rows are evenly spaced at 50 Hz; samples are cut from them as they are"},
             "labelled_runs": counts}
    return HaptIngest(classes, sources, _notes(cfg, classes, counts, points), stats,
                      round(time.perf_counter() - started, 3))


def points_per_interval(interval_s: float) -> int:
    points = interval_s * SAMPLE_RATE_HZ
    if points < 1 or abs(points - round(points)) > 1e-6:
        raise DataError("params.yaml", f"ingest.uci_hapt.interval_s {interval_s} s is {points:g} samples at 50 Hz; "
                        "choose a whole number of samples (e.g. 0.32 s = 16)", "ingest.uci_hapt.interval_s")
    return int(round(points))


def _chosen(experiments: dict[int, Experiment], users: tuple[str, ...]) -> list[Experiment]:
    if not users:
        return list(experiments.values())
    known = sorted({f"user{e.user:02d}" for e in experiments.values()})
    unknown = [u for u in users if u not in known]
    if unknown:
        raise DataError("params.yaml", f"ingest.uci_hapt.users names users without files: {unknown}; the data has "
                        f"{known}", "ingest.uci_hapt.users")
    return [e for e in experiments.values() if f"user{e.user:02d}" in users]


def _read_pair(exp: Experiment, root: Path) -> tuple[np.ndarray, list[str]]:
    """[rows, 6] = accelerometer x y z, gyroscope x y z; the two files must have a row per instant each."""
    acc = read_numeric(exp.acc, 3, " ", "values (x y z)")
    gyro = read_numeric(exp.gyro, 3, " ", "values (x y z)")
    if len(acc) != len(gyro):
        shorter = exp.gyro if len(gyro) < len(acc) else exp.acc
        raise DataError(shorter, f"{min(len(acc), len(gyro))} rows, but its partner has {max(len(acc), len(gyro))}: "
                        "row i of both files must be the same instant", f"line {min(len(acc), len(gyro)) + 1}")
    return np.hstack([acc, gyro]), [f"{root.name}/{exp.acc.name}", f"{root.name}/{exp.gyro.name}"]


def _validate_rows(validator: Validator, exp: Experiment, values: np.ndarray, cfg: IngestParams) -> None:
    """Every row of both files: present and physically possible (g for the accelerometer, rad/s the gyroscope)."""
    E, ex = validator.expectations, cfg.expectations
    frame = pd.DataFrame(values, columns=list(_COLUMNS), index=pd.RangeIndex(1, len(values) + 1, name="line"))
    limits = {"accelerometer": ex.accel_abs_max / 9.80665, "gyroscope": ex.gyro_abs_max}
    suite = []
    for column in _COLUMNS:
        limit = limits[column.split("_")[0]]
        suite += [E.ExpectColumnValuesToNotBeNull(column=column),
                  E.ExpectColumnValuesToBeBetween(column=column, min_value=-limit, max_value=limit)]
    validator.validate("raw_rows", f"{exp.acc.name} + {exp.gyro.name}", frame, suite)


def _count(counts: dict, runs: pd.DataFrame, rows: int, length: int) -> None:
    spans = runs["last"].to_numpy() - runs["first"].to_numpy() + 1
    for activity, span in zip(runs["activity"].to_numpy(), spans):
        counts["labelled_samples"][LABELS[activity - 1]] += int(span)
    counts["unlabelled_samples"] += int(rows - spans.sum())
    counts["samples_in_runs_shorter_than_a_window"] += int(spans[spans < length].sum())


def _notes(cfg, classes, counts: dict, points: int) -> list[str]:
    dropped = {k: v for k, v in counts["labelled_samples"].items() if k not in classes and v}
    notes = [
        f"samples of {cfg.intervals} intervals x {cfg.interval_s} s ({cfg.intervals * points} rows at 50 Hz), "
        f"a new one every {cfg.window_stride_intervals} intervals, cut inside one labelled run: never across two "
        "activities or two experiments",
        "accelerometer in g with gravity (not m/s^2), gyroscope in rad/s, as UCI publishes them; not standardised",
        f"{counts['unlabelled_samples']} samples outside every labelled run (UCI's gaps between activities) are "
        "not used",
        f"{counts['samples_in_runs_shorter_than_a_window']} labelled samples lie in runs shorter than one sample "
        "and give none",
    ]
    if dropped:
        notes.append(f"activities: {cfg.activities}; the postural transitions are left out "
                     f"({sum(dropped.values())} samples: {', '.join(f'{k} {v}' for k, v in dropped.items())}); "
                     "set ingest.uci_hapt.activities: all to keep them")
    notes.append("HAPT user k is UCI HAR subject k: never train on one set and test on the other for the same user")
    return notes
