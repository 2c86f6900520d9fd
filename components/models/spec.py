"""A model described as a list of layers with their widths.

This is the unit the compressor (which changes widths), the profiler (which
times layers) and the latency model (which predicts them) all speak. A model is
rebuilt from its description plus its weights; nothing is pickled.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

BYPASS = "bypass"
"""The kind of a layer the compressor removed. It computes nothing: its output is its input (in_features
== out_features), cut to the length the removed layer made (`kernel` - 1 positions fewer, centred, so
every later layer keeps its shape; kernel 1 for a removed recurrent or dense layer)."""


class ModelConfigError(ValueError):
    """A model description or config that cannot be built (zero units, a kernel longer than its input, ...)."""


@dataclass(frozen=True)
class LayerSpec:
    name: str  # unique in the model, e.g. "sensor0.conv1", "rnn1", "output"
    kind: str  # conv1d | gru | lstm | linear | bypass (a removed layer: see BYPASS)
    in_features: int  # input channels (conv) or features (rnn, linear)
    out_features: int  # filters, hidden units or output units
    kernel: int = 1
    stride: int = 1
    length: int = 1  # conv: input length; rnn: sequence length; linear: 1
    instances: int = 1  # how many times the layer runs per window (e.g. a per-interval conv: T)

    @property
    def out_length(self) -> int:
        if self.kind in ("conv1d", BYPASS):
            return (self.length - self.kernel) // self.stride + 1
        return self.length

    @property
    def params(self) -> int:
        i, o = self.in_features, self.out_features
        if self.kind == BYPASS:
            return 0
        if self.kind == "conv1d":
            return o * i * self.kernel + o + 2 * o  # weights, bias, batch-norm scale and shift
        if self.kind in ("gru", "lstm"):
            gates = 3 if self.kind == "gru" else 4
            return gates * (o * i + o * o + 2 * o)
        return o * i + o

    @property
    def macs(self) -> int:
        """Multiply-accumulates per window."""
        i, o = self.in_features, self.out_features
        if self.kind == BYPASS:
            return 0
        if self.kind == "conv1d":
            per = o * self.out_length * i * self.kernel
        elif self.kind in ("gru", "lstm"):
            gates = 3 if self.kind == "gru" else 4
            per = self.length * gates * (o * i + o * o)
        else:
            per = o * i
        return per * self.instances


@dataclass(frozen=True)
class ModelSpec:
    arch: str  # deepsense | cnn | mlp
    input_shape: tuple[int, ...]  # one window: (T, sensors, axes, 2, F)
    classes: tuple[str, ...]
    layers: tuple[LayerSpec, ...]
    options: dict[str, Any] = field(default_factory=dict)  # dropout, rnn kind, ...

    def layer(self, name: str) -> LayerSpec:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def with_layers(self, layers: list[LayerSpec]) -> ModelSpec:
        return replace(self, layers=tuple(layers))

    @property
    def computing(self) -> tuple[LayerSpec, ...]:
        """The layers that compute something (every one but those the compressor removed)."""
        return tuple(layer for layer in self.layers if layer.kind != BYPASS)

    @property
    def widths(self) -> dict[str, int]:
        """Each layer's output width, 0 for a removed one (what `pruning.costs.resized_spec` reads back)."""
        return {layer.name: 0 if layer.kind == BYPASS else layer.out_features for layer in self.layers}

    @property
    def removed(self) -> tuple[str, ...]:
        return tuple(layer.name for layer in self.layers if layer.kind == BYPASS)

    @property
    def params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        d = json.loads(text)
        return cls(arch=d["arch"], input_shape=tuple(d["input_shape"]), classes=tuple(d["classes"]),
                   layers=tuple(LayerSpec(**layer) for layer in d["layers"]), options=d.get("options", {}))


def check_layers(spec: ModelSpec) -> None:
    """Refuse descriptions that cannot be built, naming the layer."""
    for layer in spec.layers:
        if layer.in_features <= 0 or layer.out_features <= 0:
            raise ModelConfigError(f"{spec.arch} layer {layer.name}: {layer.in_features} -> {layer.out_features} "
                                   "units; every layer needs at least one input and one output unit")
        if layer.kind == "conv1d" and (layer.kernel <= 0 or layer.stride <= 0):
            raise ModelConfigError(f"{spec.arch} layer {layer.name}: kernel and stride must be positive")
        if layer.kind == BYPASS and (layer.in_features != layer.out_features or layer.stride != 1):
            raise ModelConfigError(f"{spec.arch} layer {layer.name}: a removed layer passes its input on "
                                   f"unchanged ({layer.in_features} -> {layer.out_features} units, stride "
                                   f"{layer.stride} given)")
        if layer.kind in ("conv1d", BYPASS) and layer.kernel > layer.length:
            raise ModelConfigError(f"{spec.arch} layer {layer.name}: kernel {layer.kernel} is longer than its "
                                   f"input ({layer.length} positions); use smaller kernels or more frequency bins")
