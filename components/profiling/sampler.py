"""The configuration sampler: layer configurations per kind, and whole small models, seeded.

Per layer kind, about a third of the configurations are a width sweep: the
baseline's own layer (params `sampler.sweep`) with its width stepped through
every value from k*m-2 to k*m+2 around a few multiples m of the largest entry
of `multiples` (16: 30..34, 62..66, ...), where FastDeepIoT found execution
time jumping. A third are the layers of DeepSense models at random widths
(`sweep: model`): what the compressor will ask the latency model about, since
shrinking one layer changes the next one's input too. The rest are random
draws over the ranges the models use, half of their widths log-uniform (as
many narrow layers, which compression produces, as wide ones) and half at or
next to a multiple of 2, 4, 8 or 16. Whole models are DeepSense descriptions
at random widths drawn the same way (end-to-end rows for the latency model's
sum-of-layers check, small compressed models included).
"""

from __future__ import annotations

import numpy as np

from components.config import SamplerParams, TrainParams
from components.models.deepsense import deepsense_spec
from components.models.spec import LayerSpec
from components.profiling.items import Item

_CLASSES = ("c0", "c1", "c2", "c3", "c4", "c5")


def sample_items(p: SamplerParams, train: TrainParams) -> list[Item]:
    """Every item to profile, in a fixed order (the same params give the same list)."""
    rng = np.random.default_rng(p.seed)
    items: list[Item] = []
    for kind in p.kinds:
        items.extend(_unique(_layers(kind, p, train, rng), p.configs_per_kind))
    items.extend(_models(p, train, rng))
    return items


def _unique(items: list[Item], limit: int) -> list[Item]:
    seen, out = set(), []
    for item in items:
        if item.key not in seen:
            seen.add(item.key)
            out.append(item)
    return out[:limit]


def _layers(kind: str, p: SamplerParams, train: TrainParams, rng: np.random.Generator) -> list[Item]:
    n_sweep = n_model = p.configs_per_kind // 3
    sweep = [Item(layer=_sweep_layer(kind, p, width), sweep="width") for width in sweep_widths(p, n_sweep, rng)]
    # draw spare configurations: duplicates are dropped afterwards
    in_models = _unique([Item(layer=layer, sweep="model") for layer in _model_layers(kind, p, train, rng, 3 * n_model)],
                        n_model)
    n_random = p.configs_per_kind - len(sweep) - len(in_models)
    random = [Item(layer=_random_layer(kind, p, rng)) for _ in range(2 * n_random + 4)]
    return sweep + in_models + random


def sweep_widths(p: SamplerParams, n: int, rng: np.random.Generator) -> list[int]:
    """`n` widths in runs of five around multiples of the largest `multiples` entry, within the range."""
    low, high = p.width_range
    step = max(p.multiples)
    anchors = [a for a in range(step, high + 1, step) if a - 2 >= low and a + 2 <= high]
    rng.shuffle(anchors)
    widths: list[int] = []
    for anchor in anchors:
        widths.extend(range(anchor - 2, anchor + 3))
        if len(widths) >= n:
            break
    return sorted(widths[:n])


def _width(p: SamplerParams, rng: np.random.Generator, low: int | None = None, high: int | None = None) -> int:
    low = p.width_range[0] if low is None else low
    high = p.width_range[1] if high is None else high
    if rng.random() < 0.5:  # log-uniform: as many narrow layers (what compression makes) as wide ones
        return int(np.clip(round(np.exp(rng.uniform(np.log(low), np.log(high + 1)))), low, high))
    m = int(rng.choice(p.multiples))
    k = int(rng.integers(max(1, -(-low // m)), max(1, high // m) + 1))
    return int(np.clip(k * m + int(rng.integers(-1, 2)), low, high))


def _sweep_layer(kind: str, p: SamplerParams, width: int) -> LayerSpec:
    b = p.sweep[kind]
    return LayerSpec(f"{kind}.sweep", kind, b.in_features, width, b.kernel, b.stride, b.length, b.instances)


def _random_layer(kind: str, p: SamplerParams, rng: np.random.Generator) -> LayerSpec:
    if kind == "conv1d":
        r = p.conv1d
        kernel = int(rng.choice(r.kernels))
        length = int(rng.integers(max(kernel, r.length_range[0]), r.length_range[1] + 1))
        return LayerSpec("conv1d.random", kind, _width(p, rng, *r.in_range), _width(p, rng), kernel,
                         int(rng.choice(r.strides)), length, int(rng.choice(r.instances)))
    r = p.recurrent if kind in ("gru", "lstm") else p.linear
    length = int(rng.integers(r.length_range[0], r.length_range[1] + 1))
    return LayerSpec(f"{kind}.random", kind, _width(p, rng, *r.in_range), _width(p, rng), 1, 1, length,
                     int(rng.choice(r.instances)))


def _models(p: SamplerParams, train: TrainParams, rng: np.random.Generator) -> list[Item]:
    """DeepSense with the baseline's structure (kernels, layers, cell) and random widths."""
    return [Item(model=_random_deepsense(p, train, rng, train.deepsense.rnn)) for _ in range(p.models)]


def _random_deepsense(p: SamplerParams, train: TrainParams, rng: np.random.Generator, rnn: str):
    d = train.deepsense
    return deepsense_spec(tuple(p.model_input_shape), _CLASSES, sensor_filters=_width(p, rng),
                          sensor_kernels=d.sensor_kernels, first_stride=d.first_stride,
                          merge_filters=_width(p, rng), merge_kernels=d.merge_kernels, rnn=rnn,
                          rnn_units=_width(p, rng), rnn_layers=d.rnn_layers, dropout=0.0)


def _model_layers(kind: str, p: SamplerParams, train: TrainParams, rng: np.random.Generator, n: int) -> list[LayerSpec]:
    """`n` layers of `kind` picked from DeepSense models at random widths (the recurrent cell set to `kind`)."""
    rnn = kind if kind in ("gru", "lstm") else train.deepsense.rnn
    layers = []
    for _ in range(n):
        of_kind = [layer for layer in _random_deepsense(p, train, rng, rnn).layers if layer.kind == kind]
        layers.append(of_kind[int(rng.integers(len(of_kind)))])
    return layers
