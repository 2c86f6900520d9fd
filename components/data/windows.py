"""Ingest's output as the later stages read it: the windows, and the folds of users they are scored on.

`load_windows` opens `x.npy`, `signal.npy`, `windows.parquet` and
`data_card.json` and checks that they agree, naming the file at fault;
`make_folds` deals the windows into the nightly split and, for k-fold
evaluation, every other fold of users ingest dealt; `validation_users` picks
the group of whole training users that every decision before `validate`
(early stopping, compress's accuracy floor, its selection and fine-tuning)
is judged on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from components.artifacts.seals import verify_sealed
from components.data.errors import DataError
from components.settings.train import TrainParams


@dataclass(frozen=True)
class Windows:
    x: np.ndarray  # [N, T, sensors, axes, 2, F] (memory-mapped)
    signal: np.ndarray  # [N, sensors, axes, time]
    meta: pd.DataFrame
    classes: tuple[str, ...]
    card: dict = field(default_factory=dict)  # ingest's data_card.json: the data set's name, data hash, counts
    directory: Path | None = None  # the ingest folder they were read from


@dataclass(frozen=True)
class Fold:
    name: str
    train: np.ndarray  # window indices
    test: np.ndarray
    kfold_id: int | None = None  # which of ingest's folds of users this holds out, when it is one


def load_windows(directory: Path, verify: bool = True) -> Windows:
    """Open ingest's output and check that it is consistent, naming the file at fault.

    `verify=False` skips the seal's checksums: only for the folder ingest has just written and sealed itself.
    """
    directory = Path(directory)
    paths = {name: directory / name for name in ("x.npy", "signal.npy", "windows.parquet", "data_card.json")}
    for path in paths.values():
        if not path.exists():
            raise DataError(path, "not found; run the ingest stage first")
    if verify:
        verify_sealed(directory, list(paths), "run the ingest stage again")
    x = np.load(paths["x.npy"], mmap_mode="r")
    signal = np.load(paths["signal.npy"], mmap_mode="r")
    meta = pd.read_parquet(paths["windows.parquet"])
    card = json.loads(paths["data_card.json"].read_text())
    classes = tuple(card["labels"])
    if x.ndim != 6 or x.shape[4] != 2:
        raise DataError(paths["x.npy"], f"shape {x.shape} is not [windows, intervals, sensors, axes, 2, frequencies]")
    for name, arr in (("x.npy", x), ("signal.npy", signal)):
        if len(arr) != len(meta):
            raise DataError(paths[name], f"has {len(arr)} windows but windows.parquet has {len(meta)}")
    missing = {"label", "user", "split"} - set(meta.columns)
    if missing:
        raise DataError(paths["windows.parquet"], f"missing column(s) {sorted(missing)}")
    bad = np.flatnonzero((meta["label"].to_numpy() < 0) | (meta["label"].to_numpy() >= len(classes)))
    if len(bad):
        raise DataError(paths["windows.parquet"], f"label {meta['label'].iloc[bad[0]]} is outside the model's "
                        f"{len(classes)} classes {list(classes)}", f"window {bad[0]}")
    return Windows(x, signal, meta, classes, card, directory)


def make_folds(meta: pd.DataFrame, cfg: TrainParams) -> list[Fold]:
    """The nightly split first (ingest's held-out users, or train.test_users), then, for `kfold`, every other
    fold of users ingest dealt, so that each user is held out exactly once across the folds. Users ingest
    reserved (`ingest.split.reserve_users`) are in none of them."""
    users = meta["user"].to_numpy().astype(str)
    known = sorted(set(users.tolist()))
    reserved = meta["split"].to_numpy() == "reserved"  # kept out of every stage: never trained on, never judged on
    if cfg.test_users:
        empty = [u for u in cfg.test_users if u not in known]
        if empty:
            raise DataError("params.yaml", f"held-out user(s) {empty} have no windows; users with windows: {known}",
                            "train.test_users")
        kept_out = sorted(set(cfg.test_users) & set(users[reserved].tolist()))
        if kept_out:
            raise DataError("params.yaml", f"held-out user(s) {kept_out} are reserved by ingest "
                            "(ingest.split.reserve_users): no stage may use them", "train.test_users")
        test_mask = np.isin(users, cfg.test_users)
    else:
        test_mask = meta["split"].to_numpy() == "test"
    kfolds: dict[int, np.ndarray] = {}
    if cfg.evaluation == "kfold":
        if "fold" not in meta or (meta["fold"].to_numpy() < 0).all():
            raise DataError("windows.parquet", "no folds of users (ingest deals them: rerun ingest; a data set "
                            "without user ids has none)", "fold")
        fold_ids = np.where(reserved, -1, meta["fold"].to_numpy())
        kfolds = {int(f): fold_ids == f for f in sorted(set(fold_ids.tolist())) if f >= 0}
    same = [f for f, mask in kfolds.items() if np.array_equal(mask, test_mask)]
    folds = [Fold("split", np.flatnonzero(~test_mask & ~reserved), np.flatnonzero(test_mask),
                  same[0] if same else None)]
    folds += [Fold(f"fold{f}", np.flatnonzero(~mask & ~reserved), np.flatnonzero(mask), f)
              for f, mask in kfolds.items() if f not in same]
    for fold in folds:
        if len(fold.test) == 0:
            raise DataError("windows.parquet", f"fold {fold.name}: no held-out windows (ingest held out no user; "
                            "set ingest.split or train.test_users)")
        if len(fold.train) == 0:
            raise DataError("windows.parquet", f"fold {fold.name}: no training windows left")
    return folds


def validation_users(users: np.ndarray, share: float, seed: int) -> list[str]:
    """The validation group: `share` of the distinct training users in `users`, dealt with `seed`.

    At least one user, and at least two are left to train on; none (an empty
    list) when there are fewer than three users (a set without user ids has
    one, "unknown"), where the caller falls back to a share of the windows and
    says so. The group depends only on the set of users, the share and the
    seed, so train and compress pick the same users from the same fold.
    """
    known = sorted(set(np.asarray(users).astype(str).tolist()))
    if len(known) < 3 or share <= 0:
        return []
    count = min(max(1, round(share * len(known))), len(known) - 2)
    return sorted(np.random.default_rng(seed).choice(known, size=count, replace=False).tolist())
