"""Fine-tuning a sliced model, optionally distilling the baseline into it (Hinton et al.'s soft targets).

Early-stopped on the validation users (whole training users it never trains
on; each user's mean loss counts once); the weights of the best validation
epoch are kept. With `distill > 0` the loss is
`(1 - distill) * cross-entropy + distill * T^2 * KL(teacher_T || student_T)`
with temperature T: the compressed model learns the baseline's full output
distribution, not only the labels.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from components.models.training import augment

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FineTuneSettings:
    epochs: int
    patience: int
    batch_size: int
    learning_rate: float
    distill: float  # weight of the distillation term; 0: labels only
    temperature: float
    seed: int


def fine_tune(model, x, y, x_val, y_val, settings: FineTuneSettings, teacher=None, label: str = "",
              augmentation=None, val_users: np.ndarray | None = None):
    """Train `model` further in place and return it with the best validation weights, and the epochs run.

    `augmentation`: train's settings, to augment each batch as the baseline was trained (the teacher sees
    the same augmented batch). `val_users`: the user of each validation window (each user's loss counts
    once); without them the windows are pooled.
    """
    if settings.distill > 0 and teacher is None:
        raise ValueError("distillation needs the baseline model as teacher")
    generator = torch.Generator().manual_seed(settings.seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    if settings.distill > 0:
        teacher.eval()
    best, best_loss, waited, epochs = copy.deepcopy(model.state_dict()), _val_loss(model, x_val, y_val, val_users), 0, 0
    for epoch in range(1, settings.epochs + 1):
        epochs = epoch
        model.train()
        order = torch.randperm(len(x), generator=generator)
        for start in range(0, len(order), settings.batch_size):
            batch = order[start : start + settings.batch_size]
            if len(batch) < 2:
                continue
            xb = x[batch] if augmentation is None else augment(x[batch], augmentation, model.input_std, generator)
            logits = model(xb)
            loss = F.cross_entropy(logits, y[batch])
            if settings.distill > 0:
                t = settings.temperature
                with torch.no_grad():
                    soft = F.log_softmax(teacher(xb) / t, dim=1)
                kd = F.kl_div(F.log_softmax(logits / t, dim=1), soft, log_target=True, reduction="batchmean")
                loss = (1 - settings.distill) * loss + settings.distill * t * t * kd
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        val_loss = _val_loss(model, x_val, y_val, val_users)
        if val_loss < best_loss - 1e-4:
            best, best_loss, waited = copy.deepcopy(model.state_dict()), val_loss, 0
        else:
            waited += 1
        log.info("%sfine-tune epoch %d/%d  val_loss %.3f", label, epoch, settings.epochs, val_loss)
        if waited >= settings.patience:
            break
    model.load_state_dict(best)
    return model.eval(), epochs


@torch.no_grad()
def _val_loss(model, x, y, users: np.ndarray | None = None) -> float:
    model.eval()
    if len(x) == 0:
        return float("nan")
    losses = torch.cat([F.cross_entropy(model(x[i:i + 1024]), y[i:i + 1024], reduction="none")
                        for i in range(0, len(x), 1024)]).numpy()
    return float(user_mean(losses, users))


@torch.no_grad()
def accuracy(model, x, y, users: np.ndarray | None = None) -> float:
    """Accuracy as every decision reads it: the mean over users of each user's accuracy (pooled without users)."""
    return judged_accuracy(predictions(model, x), y, users)


def judged_accuracy(predicted: torch.Tensor, y: torch.Tensor, users: np.ndarray | None = None) -> float:
    return float(user_mean((predicted == y).numpy().astype(np.float64), users))


def per_user_accuracy(predicted: torch.Tensor, y: torch.Tensor, users: np.ndarray) -> dict[str, float]:
    right = (predicted == y).numpy()
    return {str(u): float(right[users == u].mean()) for u in sorted(set(users.tolist()))}


def user_mean(values: np.ndarray, users: np.ndarray | None) -> float:
    """The mean of each user's mean (every user counts once, whatever their windows); the plain mean without
    users. NaN for no values."""
    if len(values) == 0:
        return float("nan")
    if users is None:
        return float(values.mean())
    return float(np.mean([values[users == u].mean() for u in np.unique(users)]))


@torch.no_grad()
def predictions(model, x, batch: int = 1024) -> torch.Tensor:
    """Predicted classes, in batches (a whole test set at once needs memory for every activation)."""
    model.eval()
    if len(x) == 0:
        return torch.empty(0, dtype=torch.long)
    return torch.cat([model(x[i:i + batch]).argmax(dim=1) for i in range(0, len(x), batch)])
