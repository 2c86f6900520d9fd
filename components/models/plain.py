"""A small plain CNN and an MLP: other structures for the compressor to prove itself on."""

from __future__ import annotations

import math

import torch
from torch import nn

from components.models.base import Bypass, SensingModel
from components.models.spec import BYPASS, LayerSpec, ModelSpec, check_layers


def cnn_spec(input_shape: tuple[int, ...], classes: tuple[str, ...], *, filters: tuple[int, ...], kernel: int,
             dropout: float) -> ModelSpec:
    """Temporal convolutions over the intervals, every spectral feature a channel."""
    intervals = input_shape[0]
    channels = math.prod(input_shape[1:])
    layers, length = [], intervals
    for j, width in enumerate(filters, start=1):
        layer = LayerSpec(f"conv{j}", "conv1d", channels, width, kernel, 1, length)
        layers.append(layer)
        channels, length = width, layer.out_length
    layers.append(LayerSpec("output", "linear", channels, len(classes)))
    spec = ModelSpec("cnn", tuple(input_shape), tuple(classes), tuple(layers), {"dropout": dropout})
    check_layers(spec)
    return spec


def mlp_spec(input_shape: tuple[int, ...], classes: tuple[str, ...], *, units: tuple[int, ...],
             dropout: float) -> ModelSpec:
    features = math.prod(input_shape)
    layers = []
    for j, width in enumerate(units, start=1):
        layers.append(LayerSpec(f"dense{j}", "linear", features, width))
        features = width
    layers.append(LayerSpec("output", "linear", features, len(classes)))
    spec = ModelSpec("mlp", tuple(input_shape), tuple(classes), tuple(layers), {"dropout": dropout})
    check_layers(spec)
    return spec


class PlainCNN(SensingModel):
    def __init__(self, spec: ModelSpec):
        super().__init__(spec)
        dropout = float(spec.options.get("dropout", 0.0))
        self.conv_names = [layer.name for layer in spec.layers if layer.name != "output"]
        self.convs = nn.Sequential(*(
            Bypass(layer.kernel) if layer.kind == BYPASS else
            nn.Sequential(nn.Conv1d(layer.in_features, layer.out_features, layer.kernel, layer.stride),
                          nn.BatchNorm1d(layer.out_features), nn.ReLU(), nn.Dropout1d(dropout))
            for layer in map(spec.layer, self.conv_names)))
        out = spec.layer("output")
        self.output = nn.Linear(out.in_features, out.out_features)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        x = self.normalize(x)
        h = self.run_blocks(self.conv_names, self.convs, x.flatten(2).transpose(1, 2))  # [B, features, T]
        return self.output(h.mean(dim=2))


class MLP(SensingModel):
    def __init__(self, spec: ModelSpec):
        super().__init__(spec)
        dropout = float(spec.options.get("dropout", 0.0))
        self.hidden_names = [layer.name for layer in spec.layers if layer.name != "output"]
        self.hidden = nn.Sequential(*(
            Bypass() if layer.kind == BYPASS else
            nn.Sequential(nn.Linear(layer.in_features, layer.out_features), nn.ReLU(), nn.Dropout(dropout))
            for layer in map(spec.layer, self.hidden_names)))
        out = spec.layer("output")
        self.output = nn.Linear(out.in_features, out.out_features)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.output(self.run_blocks(self.hidden_names, self.hidden, self.normalize(x).flatten(1)))
