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
(end-to-end rows for the latency model's whole-model correction): some at
random widths drawn the same way, the others (`scaled_share`) the baseline
shrunk the way compression shrinks it, so the correction is fitted where
compression ends, down to a few percent of the baseline's parameters: every
layer's width times one keep fraction per model (log-uniform over
`scaled_keep_range`, stratified so the smallest stratum is always drawn)
times a per-layer jitter, at least 1 and at most the baseline's width. A
share of those (`removed_share`) are also shallower, as the compressor can
leave them: each layer that may be removed whole (a stack's second or later
convolution, a recurrent layer after another) is, with probability one half,
at least one per model. Whole models of several depths are what lets the
latency model's whole-model correction tell a fixed cost per layer from the
fixed cost per inference.

`reference_item` is the baseline itself (train.deepsense on the data set's
input, dropout 0): the model every timing is related to (devices/timing.py),
shared by `profile` and `compress` so their ratios mean the same.
"""

from __future__ import annotations

import numpy as np

from components.config import ConfigError, Params
from components.models.deepsense import deepsense_spec, removable_layers
from components.models.spec import LayerSpec, ModelSpec
from components.profiling.items import Item
from components.settings.profile import SamplerParams
from components.settings.train import TrainParams

_CLASSES = ("c0", "c1", "c2", "c3", "c4", "c5")


def sample_items(p: SamplerParams, train: TrainParams) -> list[Item]:
    """Every item to profile, in a fixed order (the same params give the same list)."""
    _check(p)
    rng = np.random.default_rng(p.seed)
    items: list[Item] = []
    for kind in p.kinds:
        items.extend(_unique(_layers(kind, p, train, rng), p.configs_per_kind))
    items.extend(_models(p, train, rng))
    return items


def _check(p: SamplerParams) -> None:
    keep = p.scaled_keep_range
    if len(keep) != 2 or not 0 < keep[0] <= keep[1] or not 0 <= p.scaled_share <= 1 or p.scaled_jitter < 0:
        raise ConfigError(f"profile.sampler: scaled_keep_range must be [min, max] with 0 < min <= max (got "
                          f"{list(keep)}), scaled_share in [0, 1] (got {p.scaled_share}) and scaled_jitter >= 0 "
                          f"(got {p.scaled_jitter})")


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
    """DeepSense with the baseline's structure (kernels, layers, cell): random widths, then scaled baselines."""
    n_scaled = int(p.models * p.scaled_share)
    random = [Item(model=_random_deepsense(p, train, rng, train.deepsense.rnn)) for _ in range(p.models - n_scaled)]
    return _unique(random + _scaled_baselines(p, train, rng, n_scaled), p.models)


def _random_deepsense(p: SamplerParams, train: TrainParams, rng: np.random.Generator, rnn: str) -> ModelSpec:
    return _deepsense(tuple(p.model_input_shape), train, rnn, sensor_filters=_width(p, rng),
                      merge_filters=_width(p, rng), rnn_units=_width(p, rng))


def _deepsense(shape: tuple[int, ...], train: TrainParams, rnn: str, **widths) -> ModelSpec:
    """DeepSense with the baseline's kernels and layers; `widths`: deepsense_spec's width arguments."""
    d = train.deepsense
    return deepsense_spec(shape, _CLASSES, sensor_kernels=d.sensor_kernels, first_stride=d.first_stride,
                          merge_kernels=d.merge_kernels, rnn=rnn, rnn_layers=d.rnn_layers, dropout=0.0, **widths)


def baseline_deepsense(shape: tuple[int, ...], train: TrainParams, layer_widths: dict[str, int] | None = None
                       ) -> ModelSpec:
    """The baseline's description (train.deepsense, dropout 0), optionally with some layers' widths changed."""
    d = train.deepsense
    return _deepsense(shape, train, d.rnn, sensor_filters=d.sensor_filters, merge_filters=d.merge_filters,
                      rnn_units=d.rnn_units, widths=layer_widths)


def _scaled_baselines(p: SamplerParams, train: TrainParams, rng: np.random.Generator, n: int) -> list[Item]:
    """`n` baselines shrunk as compression shrinks them (see the module docstring), one per keep stratum."""
    shape = tuple(p.model_input_shape)
    base = baseline_deepsense(shape, train)
    edges = np.linspace(np.log(p.scaled_keep_range[0]), np.log(p.scaled_keep_range[1]), n + 1)
    items = []
    for low, high in zip(edges[:-1], edges[1:]):
        keep = float(np.exp(rng.uniform(low, high)))
        widths = {layer.name: _shrunk(layer.out_features, keep, p.scaled_jitter, rng)
                  for layer in base.layers if layer.name != "output"}
        if p.removed_share > 0 and rng.random() < p.removed_share:  # (no draw at 0: the same sample as before)
            removable = removable_layers(base)
            gone = [name for name in removable if rng.random() < 0.5] or removable[:1]
            widths.update(dict.fromkeys(gone, 0))
        items.append(Item(model=baseline_deepsense(shape, train, widths), sweep="scaled"))
    return items


def _shrunk(width: int, keep: float, jitter: float, rng: np.random.Generator) -> int:
    scaled = width * keep * float(np.exp(rng.uniform(-jitter, jitter)))
    return int(min(width, max(1, round(scaled))))


def model_input_shape(params: Params) -> tuple[int, ...]:
    """One window of the whole models: profile.sampler.model_input_shape, else the configured data set's."""
    shape = params.profile.sampler.model_input_shape
    if shape:
        return tuple(shape)
    from components.data.shape import input_shape

    return input_shape(params)


def reference_item(params: Params) -> Item:
    """The model every timing is related to: the baseline DeepSense (see the module docstring)."""
    return Item(model=baseline_deepsense(model_input_shape(params), params.train), sweep="reference")


def _model_layers(kind: str, p: SamplerParams, train: TrainParams, rng: np.random.Generator, n: int) -> list[LayerSpec]:
    """`n` layers of `kind` picked from DeepSense models at random widths (the recurrent cell set to `kind`)."""
    rnn = kind if kind in ("gru", "lstm") else train.deepsense.rnn
    layers = []
    for _ in range(n):
        of_kind = [layer for layer in _random_deepsense(p, train, rng, rnn).layers if layer.kind == kind]
        layers.append(of_kind[int(rng.integers(len(of_kind)))])
    return layers


def sampler_params(params: Params):
    """profile.sampler, its whole models shaped like the configured data set's input when it names no shape."""
    return params.profile.sampler.model_copy(update=dict(model_input_shape=model_input_shape(params)))
