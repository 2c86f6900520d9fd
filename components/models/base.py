"""What every model shares: its description and the input standardisation it carries as buffers."""

from __future__ import annotations

import torch
from torch import nn

from components.models.spec import ModelSpec, check_layers


class SensingModel(nn.Module):
    """A classifier of windows shaped `spec.input_shape`, built from `spec`.

    The per-feature mean and standard deviation of the training windows are
    buffers, saved with the weights, so an exported model takes raw ingest
    output.
    """

    def __init__(self, spec: ModelSpec):
        super().__init__()
        check_layers(spec)
        self.spec = spec
        self.register_buffer("input_mean", torch.zeros(spec.input_shape))
        self.register_buffer("input_std", torch.ones(spec.input_shape))

    def set_input_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.input_mean.copy_(mean)
        self.input_std.copy_(std.clamp(min=1e-6))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.input_mean) / self.input_std
