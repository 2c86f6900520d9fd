"""DeepSense (Yao et al., WWW 2017) as its authors built it for HHAR, from a layer description.

Per sensor, each interval's spectrum (axes x real/imag channels over F
frequency bins) goes through three 1-D convolutions along frequency (the first
spans several bins, with a stride), each with batch-norm, ReLU and channel
dropout. The sensors' outputs are stacked as channels and merged by three more
convolutions. A stack of GRU (or LSTM) layers runs over the intervals; its
output is averaged over the real (unpadded) intervals and a dense layer
classifies.

Widths come from the layer description, not from constants, so a compressed
description (fewer filters or units per layer) builds a smaller dense model.
"""

from __future__ import annotations

import re
from typing import Mapping

import torch
from torch import nn

from components.models.base import Bypass, SensingModel, run_recurrent
from components.models.spec import BYPASS, LayerSpec, ModelConfigError, ModelSpec, check_layers


def deepsense_spec(input_shape: tuple[int, ...], classes: tuple[str, ...], *, sensor_filters: int,
                   sensor_kernels: tuple[int, ...], first_stride: int, merge_filters: int,
                   merge_kernels: tuple[int, ...], rnn: str, rnn_units: int, rnn_layers: int,
                   dropout: float, widths: Mapping[str, int] | None = None) -> ModelSpec:
    """The description; `widths` gives single layers (by name) their own output width, as a compressed
    model has them, and the layers that read them take the matching input width. A width of 0 removes a
    layer that may go (a stack's second or later convolution, a recurrent layer after another): a `BYPASS`,
    as the compressor leaves it."""
    widths = dict(widths or {})
    intervals, sensors, axes, _, freq = input_shape
    layers: list[LayerSpec] = []
    merge_in = 0
    for s in range(sensors):
        channels, length = axes * 2, freq
        for j, kernel in enumerate(sensor_kernels, start=1):
            name = f"sensor{s}.conv{j}"
            layer = _layer(name, "conv1d", channels, widths.pop(name, sensor_filters), kernel,
                           first_stride if j == 1 else 1, length, intervals, removable=j > 1)
            layers.append(layer)
            channels, length = layer.out_features, layer.out_length
        merge_in += channels if sensor_kernels else sensor_filters
    channels = merge_in
    for j, kernel in enumerate(merge_kernels, start=1):
        name = f"merge.conv{j}"
        layer = _layer(name, "conv1d", channels, widths.pop(name, merge_filters), kernel, 1, length, intervals,
                       removable=j > 1)
        layers.append(layer)
        channels, length = layer.out_features, layer.out_length
    features = channels * length
    for j in range(1, rnn_layers + 1):
        layer = _layer(f"rnn{j}", rnn, features, widths.pop(f"rnn{j}", rnn_units), 1, 1, intervals, 1,
                       removable=j > 1)
        layers.append(layer)
        features = layer.out_features
    if widths:
        raise ModelConfigError(f"deepsense: widths for layers it does not have: {', '.join(sorted(widths))}")
    layers.append(LayerSpec("output", "linear", features, len(classes)))
    spec = ModelSpec("deepsense", tuple(input_shape), tuple(classes), tuple(layers), {"dropout": dropout})
    check_layers(spec)
    return spec


def removable_layers(spec: ModelSpec) -> list[str]:
    """The layers `deepsense_spec` builds as removed for a width of 0: each stack's second or later convolution,
    each recurrent layer after the first (what `pruning.groups.removable` finds in the baseline)."""
    return [layer.name for layer in spec.layers if re.search(r"(\.conv|^rnn)([2-9]|\d\d+)$", layer.name)]


def _layer(name: str, kind: str, in_features: int, width: int, kernel: int, stride: int, length: int,
           instances: int, removable: bool) -> LayerSpec:
    if width == 0 and removable:
        return LayerSpec(name, BYPASS, in_features, in_features, kernel if kind == "conv1d" else 1, 1, length,
                         instances)
    return LayerSpec(name, kind, in_features, width, kernel, stride, length, instances)


class ConvBlock(nn.Sequential):
    """Conv1d + BatchNorm + ReLU + channel dropout: one compressible unit (the filters shrink together)."""

    def __init__(self, layer: LayerSpec, dropout: float):
        super().__init__(
            nn.Conv1d(layer.in_features, layer.out_features, layer.kernel, layer.stride),
            nn.BatchNorm1d(layer.out_features),
            nn.ReLU(),
            nn.Dropout1d(dropout),
        )


def _block(layer: LayerSpec, dropout: float) -> nn.Module:
    return Bypass(layer.kernel) if layer.kind == BYPASS else ConvBlock(layer, dropout)


class DeepSense(SensingModel):
    def __init__(self, spec: ModelSpec):
        super().__init__(spec)
        intervals, self.sensors, axes, _, freq = spec.input_shape
        dropout = float(spec.options.get("dropout", 0.0))
        names = [layer.name for layer in spec.layers]
        self.sensor_names = [[n for n in names if n.startswith(f"sensor{s}.")] for s in range(self.sensors)]
        self.merge_names = [n for n in names if n.startswith("merge.")]
        self.rnn_names = [n for n in names if n.startswith("rnn")]
        self.sensor_convs = nn.ModuleList(nn.Sequential(*(_block(spec.layer(n), dropout) for n in stack))
                                          for stack in self.sensor_names)
        self.merge = nn.Sequential(*(_block(spec.layer(n), dropout) for n in self.merge_names))
        recurrent = [spec.layer(n) for n in self.rnn_names]
        if not any(layer.kind in ("gru", "lstm") for layer in recurrent):
            raise ModelConfigError("deepsense needs at least one recurrent layer")
        cell = {"gru": nn.GRU, "lstm": nn.LSTM}
        self.rnns = nn.ModuleList(Bypass() if layer.kind == BYPASS else
                                  cell[layer.kind](layer.in_features, layer.out_features, batch_first=True)
                                  for layer in recurrent)
        self.rnn_dropout = nn.Dropout(dropout)
        out = spec.layer("output")
        self.output = nn.Linear(out.in_features, out.out_features)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, T, sensors, axes, 2, F]; lengths: real intervals per window (default: all)."""
        x = self.normalize(x)
        b, t = x.shape[:2]
        per_sensor = []
        for s, stack in enumerate(self.sensor_convs):
            xs = x[:, :, s].reshape(b * t, -1, x.shape[-1])  # [B*T, axes*2, F]
            per_sensor.append(self.run_blocks(self.sensor_names[s], stack, xs))
        h = self.run_blocks(self.merge_names, self.merge, torch.cat(per_sensor, dim=1))  # [B*T, C, L]
        h = h.reshape(b, t, -1)
        for i, (name, rnn) in enumerate(zip(self.rnn_names, self.rnns)):
            if isinstance(rnn, Bypass) or self.skipped(name):
                continue
            h = run_recurrent(rnn, h, self.hidden_masks.get(name))
            if i < len(self.rnns) - 1:
                h = self.rnn_dropout(h)
        if lengths is None:
            pooled = h.mean(dim=1)
        else:
            mask = (torch.arange(t, device=x.device)[None, :] < lengths[:, None]).to(h.dtype)
            pooled = (h * mask[..., None]).sum(dim=1) / mask.sum(dim=1, keepdim=True).clamp(min=1)
        return self.output(self.rnn_dropout(pooled))
