"""Pieces of the training loop that need no data: augmentation, standardisation, validation split, scores."""

from __future__ import annotations

import numpy as np
import torch

from components.config import load_params
from components.data.windows import validation_users
from components.models.training import (
    augment,
    commonest_errors,
    input_stats,
    random_rotations,
    scores,
    validation_split,
)
from tests.conftest import PROJECT_ROOT


def cfg(**changes):
    return load_params(PROJECT_ROOT / "params.yaml").train.model_copy(update=changes)


def test_rotations_are_proper_and_bounded():
    r = random_rotations(200, 30.0, torch.Generator().manual_seed(0))
    torch.testing.assert_close(r @ r.transpose(1, 2), torch.eye(3).expand(200, 3, 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(r), torch.ones(200), atol=1e-5, rtol=0)
    angle = torch.rad2deg(torch.arccos(((r.diagonal(dim1=1, dim2=2).sum(1) - 1) / 2).clamp(-1, 1)))
    assert angle.max() <= 30.0 + 1e-3 and angle.max() > 20.0


def test_rotation_augmentation_turns_axes_but_keeps_their_energy():
    x = torch.randn(4, 8, 2, 3, 2, 16)
    out = augment(x, cfg(rotation_deg=45.0, scale_std=0.0, noise_std=0.0), torch.ones(x.shape[1:]),
                  torch.Generator().manual_seed(1))
    assert not torch.allclose(out, x)
    torch.testing.assert_close(out.norm(dim=3), x.norm(dim=3), atol=1e-4, rtol=1e-4)  # per interval, sensor, bin


def test_augmentation_off_is_the_identity_and_on_is_seeded():
    x = torch.randn(4, 8, 1, 3, 2, 16)
    off = cfg(rotation_deg=0.0, scale_std=0.0, noise_std=0.0)
    assert torch.equal(augment(x, off, torch.ones(x.shape[1:]), torch.Generator()), x)
    on = cfg(rotation_deg=30.0, scale_std=0.1, noise_std=0.1)
    a = augment(x, on, torch.ones(x.shape[1:]), torch.Generator().manual_seed(3))
    b = augment(x, on, torch.ones(x.shape[1:]), torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_input_stats_per_feature_and_per_sensor():
    x = torch.randn(50, 4, 2, 3, 2, 5) * torch.tensor([1.0, 10.0]).reshape(1, 1, 2, 1, 1, 1)
    mean, std = input_stats(x, "feature")
    assert mean.shape == std.shape == x.shape[1:]
    mean, std = input_stats(x, "sensor")
    assert mean.shape == x.shape[1:] and torch.unique(std[:, 0]).numel() == 1
    assert 8 < float(std[0, 1, 0, 0, 0]) / float(std[0, 0, 0, 0, 0]) < 12


def test_validation_split_holds_out_a_group_of_whole_training_users_or_a_stratified_share():
    labels = np.repeat(np.arange(3), 40)
    users = np.tile(np.array(["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"]), 12)
    split = validation_split(labels, users, "users", 0.2, 0.15, seed=0)
    assert split.by_users and len(split.users) == 2 and set(users[split.val]) == set(split.users)
    assert not set(users[split.val]) & set(users[split.fit]) and len(split.fit) + len(split.val) == len(labels)
    assert validation_split(labels, users, "users", 0.2, 0.15, seed=0).users == split.users  # same seed, same group
    windows = validation_split(labels, users, "windows", 0.2, 0.25, seed=0)
    assert not windows.by_users and len(windows.val) == 30 and np.bincount(labels[windows.val]).tolist() == [10] * 3
    assert not set(windows.fit) & set(windows.val)


def test_validation_users_leave_two_to_train_on_and_fall_back_to_windows_without_users():
    assert len(validation_users(np.array(["a", "b", "c", "d"]), 0.9, seed=0)) == 2
    assert len(validation_users(np.array(["a", "b", "c", "d", "e"]), 0.01, seed=0)) == 1
    assert validation_users(np.array(["a", "b"]), 0.5, seed=0) == []
    labels = np.repeat(np.arange(2), 20)
    split = validation_split(labels, np.full(40, "unknown"), "users", 0.2, 0.25, seed=0)
    assert not split.by_users and len(split.val) == 10  # a set without user ids: a share of the windows


def test_scores_per_user_and_macro_f1_over_present_classes():
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 0, 1, 2, 2, 2])
    users = np.array(["a", "a", "a", "b", "b", "b"])
    s = scores(y, pred, users, classes=4)
    assert s["accuracy"] == 5 / 6
    assert s["per_user"]["a"] == {"accuracy": 1.0, "macro_f1": 1.0, "windows": 3, "errors": {}}
    assert s["per_user"]["b"]["errors"] == {"1 -> 2": 1}
    assert np.array(s["confusion_matrix"]).shape == (4, 4)


def test_commonest_errors_name_the_classes_commonest_first_and_keep_the_top():
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    pred = np.array([1, 1, 0, 0, 1, 0, 1, 1, 1])
    names = ("walk", "jog", "sit")
    assert commonest_errors(y, pred, names) == {"sit -> jog": 3, "walk -> jog": 2, "jog -> walk": 1}
    assert commonest_errors(y, pred, names, top=1) == {"sit -> jog": 3}
    assert commonest_errors(y, y, names) == {}
