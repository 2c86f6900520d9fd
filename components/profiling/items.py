"""What the profiler measures: one layer configuration or one whole model, with a stable key.

An item is a layer description (`LayerSpec`) or a model description
(`ModelSpec`); its key is a hash of that description, so the same
configuration profiled twice on one device is recognised (resume, no
duplicate rows) and matched across devices.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np

from components.models.spec import BYPASS, LayerSpec, ModelSpec

LAYER_KINDS = ("conv1d", "gru", "lstm", "linear")
MODEL_KIND = "model"
FLOAT_BYTES = 4


@dataclass(frozen=True)
class Item:
    layer: LayerSpec | None = None
    model: ModelSpec | None = None
    # "width": a width sweep's configuration; "model": a layer of a random DeepSense; "scaled": a shrunk
    # baseline; "reference": the baseline every timing is related to; "": random draws and models
    sweep: str = ""

    def __post_init__(self):
        if (self.layer is None) == (self.model is None):
            raise ValueError("an item is either one layer or one model")

    @property
    def kind(self) -> str:
        return self.layer.kind if self.layer is not None else MODEL_KIND

    def description(self) -> dict:
        return asdict(self.layer) if self.layer is not None else json.loads(self.model.to_json())

    @property
    def key(self) -> str:
        text = json.dumps({"kind": self.kind, "description": self.description()}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, "sweep": self.sweep, "description": self.description()},
                          sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Item:
        d = json.loads(text)
        if d["kind"] == MODEL_KIND:
            return cls(model=ModelSpec.from_json(json.dumps(d["description"])), sweep=d.get("sweep", ""))
        return cls(layer=LayerSpec(**d["description"]), sweep=d.get("sweep", ""))

    @property
    def layers(self) -> tuple[LayerSpec, ...]:
        return (self.layer,) if self.layer is not None else self.model.layers


def layer_input_shape(layer: LayerSpec) -> tuple[int, ...]:
    """The torch input of one run of the layer for one window (batch first, PyTorch layout).

    conv1d: [instances, channels, length] (DeepSense runs its per-interval
    convolutions as a batch of T); gru/lstm: [1, sequence length, features];
    linear: [instances, features]; a removed layer (bypass): as a convolution.
    """
    if layer.kind in ("conv1d", BYPASS):
        return (layer.instances, layer.in_features, layer.length)
    if layer.kind in ("gru", "lstm"):
        return (1, layer.length, layer.in_features)
    return (layer.instances, layer.in_features)


def layer_output_elements(layer: LayerSpec) -> int:
    if layer.kind in ("conv1d", BYPASS):
        return layer.instances * layer.out_features * layer.out_length
    if layer.kind in ("gru", "lstm"):
        return layer.length * layer.out_features
    return layer.instances * layer.out_features


def explanatory(layer: LayerSpec) -> dict[str, int]:
    """FastDeepIoT's explanatory variables for one layer and one window (float32 bytes); all 0 for a removed one."""
    if layer.kind == BYPASS:
        return dict.fromkeys(("macs", "flops", "params", "input_bytes", "output_bytes", "weight_bytes", "bytes_read",
                              "bytes_written"), 0)
    inputs = 1
    for n in layer_input_shape(layer):
        inputs *= n
    outputs = layer_output_elements(layer)
    weight_bytes = layer.params * FLOAT_BYTES
    return {
        "macs": layer.macs,
        "flops": 2 * layer.macs,
        "params": layer.params,
        "input_bytes": inputs * FLOAT_BYTES,
        "output_bytes": outputs * FLOAT_BYTES,
        "weight_bytes": weight_bytes,
        "bytes_read": inputs * FLOAT_BYTES + weight_bytes,
        "bytes_written": outputs * FLOAT_BYTES,
    }


def item_explanatory(item: Item) -> dict[str, int]:
    """Per-layer variables for a layer; sums over the layers for a model."""
    if item.layer is not None:
        return explanatory(item.layer)
    total: dict[str, int] = {}
    for layer in item.model.layers:
        for k, v in explanatory(layer).items():
            total[k] = total.get(k, 0) + v
    return total


def seed_of(item: Item) -> int:
    return int(item.key[:8], 16)


def example_input(item: Item) -> np.ndarray:
    """One window's input for the item (float32, PyTorch layout), seeded from its key."""
    shape = layer_input_shape(item.layer) if item.layer is not None else (1, *item.model.input_shape)
    return np.random.default_rng(seed_of(item)).standard_normal(shape).astype(np.float32)
