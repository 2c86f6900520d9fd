"""The users compress learns from and the users it judges on.

The training users' windows are split into fitting and validation users
(train's group, `train.validation_share` and `train.seed`); the held-out
users' windows are only scored. The validation users are whole training users
the compressed model is never trained on: the search's floor, the candidate
selection and the fine-tune's early stop are judged on them, user by user.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from components.config import ConfigError

log = logging.getLogger(__name__)


@dataclass
class Split:
    x_fit: object
    y_fit: object
    x_val: object
    y_val: object
    x_test: object
    y_test: object
    users_test: np.ndarray  # the held-out user of each test window
    users_val: np.ndarray | None = None  # the validation user of each validation window (None: windows, no users)
    validation: dict = field(default_factory=dict)  # which users decisions rest on, and whether the baseline saw them


def split_users(windows, fold, train_cfg, train_dir: Path) -> Split:
    """Fitting, validation and held-out windows as tensors, for `fold` of ingest's `windows`."""
    import torch

    from components.models.training import validation_split

    labels = windows.meta["label"].to_numpy().astype(np.int64)
    users = windows.meta["user"].to_numpy().astype(str)
    split = validation_split(labels[fold.train], users[fold.train], "users", train_cfg.validation_share,
                             train_cfg.val_fraction, train_cfg.seed)
    fit_idx, val_idx = fold.train[split.fit], fold.train[split.val]
    validation = {"by": "users" if split.by_users else "windows", "users": list(split.users),
                  "windows": int(len(val_idx)), "baseline_trained_on_them": _baseline_saw(split, train_dir)}
    log.info("compress judges accuracy on %s; the baseline %s them", split.describe(),
             "was trained on" if validation["baseline_trained_on_them"] else "never saw")

    def tensors(idx):
        return (torch.from_numpy(np.ascontiguousarray(windows.x[idx], dtype=np.float32)),
                torch.from_numpy(labels[idx]))

    return Split(*tensors(fit_idx), *tensors(val_idx), *tensors(fold.test), users[fold.test],
                 users[val_idx] if split.by_users else None, validation)


def _baseline_saw(split, train_dir: Path) -> bool:
    """Whether train fitted the baseline on the validation users' windows (its own record says which users it
    held out); a record naming other users than these means train ran with other settings: rerun it."""
    from components.stages import output

    path = output(train_dir, "train", "metrics.json")
    held = json.loads(path.read_text()).get("validation") if path.exists() else None
    if not split.by_users or held is None:
        return True  # windows of every training user, or a baseline from before train said: assume it saw them
    if held["by"] != "users" or held.get("refit_epochs"):
        return True  # early-stopped on windows, or trained again on every training user (train.refit_below_users)
    if list(held["users"]) != list(split.users):
        raise ConfigError(f"train's baseline was early-stopped on validation users {held['users']}, but the settings "
                          f"now give {list(split.users)} (train.validation_share, train.seed): run `python -m "
                          "components train` again")
    return False
