"""The PyTorch module every backend starts from: one profiled item with seeded weights.

A layer item becomes the compressible unit it is in the models (a conv with
its batch-norm and ReLU, a recurrent layer returning its whole output
sequence, a dense layer); a model item is built from its description. The
weights are random but seeded from the item's key, and batch-norm statistics
are randomised too, so every runtime converts the same numbers and outputs can
be compared across runtimes.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from components.models import build
from components.models.spec import LayerSpec
from components.profiling.items import Item, example_input, seed_of

__all__ = ["example_input", "layer_module", "randomize_batch_norm", "reference_module", "run_reference"]


class RecurrentLayer(nn.Module):
    """A GRU/LSTM returning its output sequence (what the next layer of DeepSense reads)."""

    def __init__(self, layer: LayerSpec):
        super().__init__()
        cell = nn.GRU if layer.kind == "gru" else nn.LSTM
        self.rnn = cell(layer.in_features, layer.out_features, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(x)[0]


def layer_module(layer: LayerSpec) -> nn.Module:
    if layer.kind == "conv1d":
        return nn.Sequential(nn.Conv1d(layer.in_features, layer.out_features, layer.kernel, layer.stride),
                             nn.BatchNorm1d(layer.out_features), nn.ReLU())
    if layer.kind in ("gru", "lstm"):
        return RecurrentLayer(layer)
    if layer.kind == "linear":
        return nn.Linear(layer.in_features, layer.out_features)
    raise ValueError(f"layer {layer.name}: no reference module for kind {layer.kind!r}")


def reference_module(item: Item) -> nn.Module:
    """The item as an eval-mode torch module with weights seeded from its key."""
    torch.manual_seed(seed_of(item))
    module = layer_module(item.layer) if item.layer is not None else build(item.model)
    randomize_batch_norm(module)
    return module.eval()


def randomize_batch_norm(module: nn.Module) -> None:
    """Trained-looking batch-norm statistics and affine terms (fresh ones are the identity)."""
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, nn.BatchNorm1d):
                sub.running_mean.uniform_(-0.5, 0.5)
                sub.running_var.uniform_(0.5, 2.0)
                sub.weight.uniform_(0.5, 1.5)
                sub.bias.uniform_(-0.2, 0.2)


def run_reference(item: Item, x: np.ndarray) -> np.ndarray:
    module = reference_module(item)
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()
