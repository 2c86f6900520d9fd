"""Fitting and scoring a SensingModel: seeded, deterministic on CPU, early-stopped on validation loss."""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score
from sklearn.model_selection import train_test_split

from components.models import SensingModel, build
from components.models.spec import ModelSpec
from components.settings.train import TrainParams

log = logging.getLogger(__name__)


@dataclass
class History:
    epochs: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0
    validation: ValidationSet | None = None  # what early stopping judged on
    refit_epochs: int = 0  # > 0: the returned model was trained again on every window for this many epochs


def seed_everything(seed: int, threads: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)


@dataclass(frozen=True)
class ValidationSet:
    """Which training windows are fitted and which judge the model (early stopping, compress's floor)."""

    fit: np.ndarray  # window indices trained on
    val: np.ndarray  # window indices judged on
    users: tuple[str, ...] = ()  # the validation users; empty: `val` is a share of the windows

    @property
    def by_users(self) -> bool:
        return bool(self.users)

    def describe(self) -> str:
        if self.by_users:
            return f"{len(self.users)} whole training user(s) never trained on ({', '.join(self.users)})"
        return f"{len(self.val)} windows drawn from the users trained on"


def validation_split(labels: np.ndarray, users: np.ndarray, mode: str, share: float, fraction: float,
                     seed: int) -> ValidationSet:
    """Split the training windows into a fitting part and a validation part.

    mode "users": every window of a group of whole training users
    (`data.windows.validation_users`), so that what is judged on them is
    judged on people the model never saw; "windows": a `fraction` of the
    windows, stratified by label (those users are also trained on, so the
    figure flatters the model). With fewer than three users (a set without
    user ids) "users" falls back to "windows", saying so.
    """
    from components.data.windows import validation_users

    idx = np.arange(len(labels))
    if mode == "users":
        held = validation_users(users, share, seed)
        if held:
            inside = np.isin(np.asarray(users).astype(str), held)
            return ValidationSet(idx[~inside], idx[inside], tuple(held))
        log.warning("fewer than three training users: the validation set is a share of the windows of users the "
                    "model trains on, which flatters it")
    if fraction <= 0 or len(idx) < 4:
        return ValidationSet(idx, idx[:0])
    counts = np.bincount(labels)
    stratify = labels if counts[counts > 0].min() >= 2 else None
    train, val = train_test_split(idx, test_size=fraction, random_state=seed, stratify=stratify)
    return ValidationSet(np.sort(train), np.sort(val))


def train_validation(labels: np.ndarray, users: np.ndarray, cfg: TrainParams) -> ValidationSet:
    """train's own split of its training windows (`train.validation`)."""
    return validation_split(labels, users, cfg.validation, cfg.validation_share, cfg.val_fraction, cfg.seed)


def fit(spec: ModelSpec, x: np.ndarray, y: np.ndarray, cfg: TrainParams, label: str = "",
        users: np.ndarray | None = None) -> tuple[SensingModel, History]:
    """Train a fresh model of `spec` on (x, y); return the weights of the best validation epoch (or, where
    `train.refit_below_users` applies, a fresh model trained on every window for that many epochs).

    `users` (per window) lets `train.validation: users` judge on whole training users; without them the
    validation set is a share of the windows. `History.validation` says which.
    """
    split = train_validation(y, users if users is not None else np.full(len(y), "unknown"), cfg)
    train_idx, val_idx = split.fit, split.val
    xt, yt = _tensors(x[train_idx], y[train_idx])
    xv, yv = _tensors(x[val_idx], y[val_idx])
    history = History(validation=split)
    model, loss_fn, optimiser, generator = _start(spec, xt, yt, cfg)
    best, best_loss, waited = None, float("inf"), 0
    started = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.perf_counter()
        train_loss, train_acc = _epoch(model, xt, yt, loss_fn, optimiser, cfg, generator)
        val_loss, val_acc = _score(model, xv, yv, loss_fn) if len(val_idx) else (train_loss, train_acc)
        history.epochs.append({"epoch": epoch, "train_loss": train_loss, "train_accuracy": train_acc,
                               "val_loss": val_loss, "val_accuracy": val_acc})
        improved = val_loss < best_loss - 1e-4
        if improved:
            best, best_loss, waited, history.best_epoch = copy.deepcopy(model.state_dict()), val_loss, 0, epoch
        else:
            waited += 1
        log.info("%sepoch %d/%d  loss %.3f  acc %.3f  val_loss %.3f  val_acc %.3f  %.1fs%s", label, epoch, cfg.epochs,
                 train_loss, train_acc, val_loss, val_acc, time.perf_counter() - t0, "  *" if improved else "")
        if waited >= cfg.patience:
            log.info("%sstopping early: no better validation loss for %d epochs", label, cfg.patience)
            break
    history.seconds = time.perf_counter() - started
    if best is None:  # the validation loss never became finite
        raise ValueError(f"{label}training diverged: validation loss {history.epochs[-1]['val_loss']} at every epoch")
    model.load_state_dict(best)
    left = len(set(np.asarray(users)[split.fit].tolist())) if split.by_users else 0
    if split.by_users and left < cfg.refit_below_users:
        log.info("%sonly %d user(s) left to fit on (train.refit_below_users %d): training again on every training "
                 "user for the %d epochs early stopping chose", label, left, cfg.refit_below_users, history.best_epoch)
        model = _refit(spec, x, y, cfg, history)
    model.eval()
    return model, history


def _refit(spec: ModelSpec, x: np.ndarray, y: np.ndarray, cfg: TrainParams, history: History) -> SensingModel:
    """A fresh model trained on every window (the validation users' too) for the epochs early stopping chose:
    with few training users, leaving a group out of the baseline costs more than judging on it saves."""
    xt, yt = _tensors(x, y)
    model, loss_fn, optimiser, generator = _start(spec, xt, yt, cfg)
    started = time.perf_counter()
    for _ in range(history.best_epoch):
        _epoch(model, xt, yt, loss_fn, optimiser, cfg, generator)
    history.seconds += time.perf_counter() - started
    history.refit_epochs = history.best_epoch
    return model


def _tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), torch.from_numpy(y.astype(np.int64))


def _start(spec: ModelSpec, xt: torch.Tensor, yt: torch.Tensor, cfg: TrainParams):
    """A fresh seeded model standardised on (xt, yt), with its loss, optimiser and batch-order generator."""
    seed_everything(cfg.seed, cfg.threads)
    model = build(spec)
    model.set_input_stats(*input_stats(xt, cfg.input_norm))
    loss_fn = torch.nn.CrossEntropyLoss(weight=_class_weights(yt, len(spec.classes)) if cfg.class_weights else None)
    optimiser = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    return model, loss_fn, optimiser, torch.Generator().manual_seed(cfg.seed)


def _epoch(model, xt, yt, loss_fn, optimiser, cfg: TrainParams, generator) -> tuple[float, float]:
    model.train()
    order = torch.randperm(len(xt), generator=generator)
    total, correct = 0.0, 0
    for start in range(0, len(order), cfg.batch_size):
        batch = order[start : start + cfg.batch_size]
        if len(batch) < 2:  # batch-norm needs two samples
            continue
        xb, yb = augment(xt[batch], cfg, model.input_std, generator), yt[batch]
        optimiser.zero_grad()
        logits = model(xb)
        loss = loss_fn(logits, yb)
        loss.backward()
        optimiser.step()
        total += loss.item() * len(batch)
        correct += int((logits.argmax(1) == yb).sum())
    return total / len(xt), correct / len(xt)


@torch.no_grad()
def _score(model, x, y, loss_fn) -> tuple[float, float]:
    model.eval()
    logits = model(x)
    return float(loss_fn(logits, y)), float((logits.argmax(1) == y).float().mean())


@torch.no_grad()
def predict(model: SensingModel, x: np.ndarray, batch: int = 512) -> np.ndarray:
    model.eval()
    out = [model(torch.from_numpy(np.ascontiguousarray(x[i : i + batch], dtype=np.float32))).argmax(1).numpy()
           for i in range(0, len(x), batch)]
    return np.concatenate(out) if out else np.empty(0, dtype=np.int64)


def input_stats(x: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std to standardise inputs [N, T, sensors, axes, 2, F] with, broadcast to one window's shape.

    feature: every value on its own. sensor: one mean/std per sensor over all
    its intervals, axes and bins, which keeps the relative size of the
    spectrum's bins (quiet high-frequency bins are not blown up to unit variance).
    """
    if mode == "feature":
        return x.mean(dim=0), x.std(dim=0)
    dims = (0, 1, 3, 4, 5)
    mean, std = x.mean(dim=dims, keepdim=True)[0], x.std(dim=dims, keepdim=True)[0]
    shape = x.shape[1:]
    return mean.expand(shape).clone(), std.expand(shape).clone()


def augment(x: torch.Tensor, cfg: TrainParams, feature_std: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Training-time augmentation of spectra x [B, T, sensors, axes, 2, F].

    - rotation: each window's sensor axes turned by a random rotation of up to
      `rotation_deg` (the FFT is linear, so rotating spectra = rotating signals);
      sensors are held differently by different users;
    - scale: amplitude times 1 + N(0, scale_std) per window and sensor;
    - axis gain and offset: each axis of each sensor times 1 + N(0, axis_scale_std), and its
      interval means (the DC bin) moved by N(0, offset_std) feature standard deviations: what a
      per-user, per-channel standardisation (WISDM, HHAR_SA) or a sensor's own gain and bias do;
    - noise: Gaussian noise of `noise_std` feature standard deviations (the
      DeepSense authors' augmentation).
    """
    b, _, sensors, axes = x.shape[:4]
    if cfg.rotation_deg > 0 and axes == 3:
        rotation = random_rotations(b * sensors, cfg.rotation_deg, generator).reshape(b, sensors, 3, 3)
        x = torch.einsum("bsij,btsjcf->btsicf", rotation, x)
    if cfg.scale_std > 0:
        scale = 1 + cfg.scale_std * torch.randn((b, 1, sensors, 1, 1, 1), generator=generator)
        x = x * scale
    if cfg.axis_scale_std > 0:
        x = x * (1 + cfg.axis_scale_std * torch.randn((b, 1, sensors, axes, 1, 1), generator=generator))
    if cfg.offset_std > 0:
        shift = torch.zeros_like(x)
        shift[..., 0, 0] = cfg.offset_std * feature_std[..., 0, 0] * torch.randn((b, 1, sensors, axes),
                                                                                 generator=generator)
        x = x + shift
    if cfg.noise_std > 0:
        x = x + cfg.noise_std * feature_std * torch.randn(x.shape, generator=generator)
    return x


def random_rotations(n: int, max_deg: float, generator: torch.Generator) -> torch.Tensor:
    """n rotation matrices about uniformly random axes, by angles uniform in [-max_deg, max_deg]."""
    axis = torch.randn((n, 3), generator=generator)
    axis = axis / axis.norm(dim=1, keepdim=True).clamp(min=1e-8)
    angle = (torch.rand(n, generator=generator) * 2 - 1) * torch.deg2rad(torch.tensor(max_deg))
    k = torch.zeros((n, 3, 3))
    k[:, 0, 1], k[:, 0, 2], k[:, 1, 2] = -axis[:, 2], axis[:, 1], -axis[:, 0]
    k = k - k.transpose(1, 2)
    eye = torch.eye(3).expand(n, 3, 3)
    s, c = torch.sin(angle)[:, None, None], torch.cos(angle)[:, None, None]
    return eye + s * k + (1 - c) * (k @ k)  # Rodrigues' formula


def _class_weights(y: torch.Tensor, classes: int) -> torch.Tensor:
    counts = torch.bincount(y, minlength=classes).float()
    weights = torch.where(counts > 0, counts.sum() / (classes * counts.clamp(min=1)), torch.zeros_like(counts))
    return weights


def scores(y_true: np.ndarray, y_pred: np.ndarray, users: np.ndarray, classes: int,
           names: tuple[str, ...] | None = None) -> dict:
    """Accuracy and macro-F1 overall and per held-out user, each user's commonest errors, and the confusion
    matrix."""
    labels = list(range(classes))
    per_user = {
        str(u): {"accuracy": float(accuracy_score(y_true[users == u], y_pred[users == u])),
                 "macro_f1": float(f1_score(y_true[users == u], y_pred[users == u], average="macro", zero_division=0)),
                 "windows": int((users == u).sum()),
                 "errors": commonest_errors(y_true[users == u], y_pred[users == u], names)}
        for u in sorted(set(users.tolist()))
    }
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        # macro-F1 over the classes that occur (in truth or prediction), as sklearn does by default
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "per_user": per_user,
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def commonest_errors(y_true: np.ndarray, y_pred: np.ndarray, names: tuple[str, ...] | None = None,
                     top: int = 3) -> dict[str, int]:
    """{"true -> predicted": windows} for the `top` commonest mistakes, commonest first."""
    wrong = y_true != y_pred
    pairs, counts = np.unique(np.stack([y_true[wrong], y_pred[wrong]], axis=1), axis=0, return_counts=True)
    name = (lambda c: names[c]) if names else str
    return {f"{name(int(t))} -> {name(int(p))}": int(n)
            for (t, p), n in sorted(zip(pairs.tolist(), counts.tolist()), key=lambda pc: -pc[1])[:top]}
