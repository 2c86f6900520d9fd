"""Which hidden elements of a model can be removed, and which weights each removal touches.

A *group* is one compressible layer's output elements (conv filters, GRU/LSTM
hidden units, dense units). Removing element i of a group removes, together:
the layer's own output row i (a conv's filter with its bias and batch-norm
entries; all three GRU gates' or four LSTM gates' rows of unit i, and column
i of the recurrent weights), and the inputs of every layer that reads it (the
next conv's input channel, DeepSense's merge input after the sensors'
concatenation, the L positions of a conv filter that the recurrent layer
reads after flattening, the next recurrent or dense layer's input column).
Torch-Pruning (VainF) calls these coupled groups; here they follow from the
model description, not from tracing a graph.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from components.models.spec import BYPASS, LayerSpec, ModelConfigError, ModelSpec

COMPRESSIBLE_KINDS = ("conv1d", "gru", "lstm", "linear")
OUTPUT = "output"  # the classifier: its outputs are the classes, never pruned
_SENSOR = re.compile(r"^sensor(\d+)\.conv(\d+)$")


@dataclass(frozen=True)
class Group:
    layer: str  # the layer whose output elements the decisions are about
    kind: str
    size: int  # elements before pruning


def groups(spec: ModelSpec) -> list[Group]:
    """Every compressible group of `spec`, in layer order (the order the compressor walks)."""
    check_supported(spec)
    return [Group(layer.name, layer.kind, layer.out_features) for layer in spec.layers
            if layer.name != OUTPUT and layer.kind != BYPASS]


def removable(spec: ModelSpec) -> list[str]:
    """The layers the compressor may remove whole: each passes on as many features as it reads.

    A convolution of stride 1 inside a per-sensor or merge stack (not the
    first, which reads the input or the sensors' concatenation at another
    width), a recurrent layer after another, a hidden dense layer after
    another, all with as many outputs as inputs: removed, the layer becomes
    its input cut to its output length (`models.spec.BYPASS`), so every later
    layer keeps its shape and the reader's weights for element i now read
    the producer's element i. Only in the full-width description (before any
    pruning) is "as many outputs as inputs" the test that matters.
    """
    check_supported(spec)
    out = []
    for index, layer in enumerate(spec.layers):
        if layer.name == OUTPUT or layer.kind == BYPASS or input_sources(spec, index) is None:
            continue
        previous = spec.layers[index - 1]
        same_kind = previous.kind == layer.kind or (layer.kind in ("gru", "lstm") and previous.kind in ("gru", "lstm"))
        if same_kind and layer.stride == 1 and layer.in_features == layer.out_features:
            out.append(layer.name)
    return out


def check_supported(spec: ModelSpec) -> None:
    """Refuse, up front, descriptions the compressor cannot slice."""
    if spec.arch not in ("deepsense", "cnn", "mlp"):
        raise ModelConfigError(f"the compressor does not know architecture {spec.arch!r} (known: deepsense, cnn, mlp)")
    for layer in spec.layers:
        if layer.kind not in (*COMPRESSIBLE_KINDS, BYPASS):
            raise ModelConfigError(f"{spec.arch} layer {layer.name}: the compressor does not know layer kind "
                                   f"{layer.kind!r} (known: {', '.join(COMPRESSIBLE_KINDS)})")
    if not spec.layers or spec.layers[-1].name != OUTPUT:
        raise ModelConfigError(f"{spec.arch}: the last layer must be the classifier named {OUTPUT!r}")


def input_sources(spec: ModelSpec, index: int) -> list[tuple[str, int]] | None:
    """What layer `index` reads, as (producing layer, positions per produced element) in input order.

    None: it reads the model input (nothing prunable feeds it). Each produced
    element occupies `positions` consecutive input features (a conv filter
    flattened over its output length feeds a recurrent layer L features). A
    removed layer (`BYPASS`) is looked through: its reader reads what it read.
    """
    sources = _direct_sources(spec, index)
    if sources is None:
        return None
    names = [l.name for l in spec.layers]
    out = []
    for producer, positions in sources:
        position = names.index(producer)
        if spec.layers[position].kind != BYPASS:
            out.append((producer, positions))
            continue
        through = input_sources(spec, position)
        if through is None:
            raise ModelConfigError(f"{spec.arch} layer {producer}: a removed layer cannot be the first")
        out.extend((name, positions * n) for name, n in through)
    return out


def _direct_sources(spec: ModelSpec, index: int) -> list[tuple[str, int]] | None:
    layer = spec.layers[index]
    if spec.arch == "deepsense":
        return _deepsense_sources(spec, layer)
    if index == 0:
        return None
    return [(spec.layers[index - 1].name, 1)]


def _deepsense_sources(spec: ModelSpec, layer: LayerSpec) -> list[tuple[str, int]] | None:
    names = [l.name for l in spec.layers]
    match = _SENSOR.match(layer.name)
    if match:
        sensor, j = int(match.group(1)), int(match.group(2))
        return None if j == 1 else [(f"sensor{sensor}.conv{j - 1}", 1)]
    if layer.name == "merge.conv1":
        last = {}
        for name in names:
            m = _SENSOR.match(name)
            if m:
                last[int(m.group(1))] = name
        return [(last[s], 1) for s in sorted(last)]
    position = names.index(layer.name)
    previous = spec.layers[position - 1]
    convolved = previous.kind == "conv1d" or (previous.kind == BYPASS and not previous.name.startswith("rnn"))
    if layer.kind in ("gru", "lstm") and convolved:
        return [(previous.name, previous.out_length)]  # [C, L] flattened per interval
    return [(previous.name, 1)]
