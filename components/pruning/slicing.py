"""Physical slicing: a smaller dense model with the kept elements' weights, rebuilt from its description.

`slice_model(model, keep)` writes a new description (fewer filters and units,
a layer kept with no element removed whole) and copies, for every layer, the
rows of its kept output elements and the columns of its kept inputs
(`groups.input_sources`). The result has real,
smaller tensors, so it exports and runs like any other model; its outputs
equal those of the original with the removed elements masked to zero
(`masked.MaskedModel`), which the tests check for every layer kind.
"""

from __future__ import annotations

import torch
from torch import nn

from components.models import build
from components.models.spec import BYPASS, ModelConfigError, ModelSpec
from components.pruning.costs import resized_spec
from components.pruning.groups import OUTPUT, check_supported, input_sources


def layer_modules(model, name: str) -> dict[str, nn.Module]:
    """The torch modules holding layer `name` of `model`: {"main": conv/rnn/linear, "norm": batch-norm or absent}."""
    arch = model.spec.arch
    if name == OUTPUT:
        return {"main": model.output}
    if arch == "deepsense":
        if name.startswith("sensor"):
            sensor, conv = name.removeprefix("sensor").split(".conv")
            block = model.sensor_convs[int(sensor)][int(conv) - 1]
        elif name.startswith("merge.conv"):
            block = model.merge[int(name.removeprefix("merge.conv")) - 1]
        else:
            return {"main": model.rnns[int(name.removeprefix("rnn")) - 1]}
        return {"main": block[0], "norm": block[1]}
    if arch == "cnn":
        block = model.convs[int(name.removeprefix("conv")) - 1]
        return {"main": block[0], "norm": block[1]}
    return {"main": model.hidden[int(name.removeprefix("dense")) - 1][0]}


def kept_inputs(spec: ModelSpec, index: int, keep: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """Indices of layer `index`'s input features that survive `keep` (None: all of them)."""
    sources = input_sources(spec, index)
    if sources is None:
        return None
    parts, offset = [], 0
    for producer, positions in sources:
        size = spec.layer(producer).out_features
        kept = keep.get(producer, torch.arange(size))
        if positions == 1:
            parts.append(kept + offset)
        else:
            parts.append((kept[:, None] * positions + torch.arange(positions)[None, :]).reshape(-1) + offset)
        offset += size * positions
    return torch.cat(parts)


def slice_model(model, keep: dict[str, torch.Tensor | list[int]]):
    """A new, smaller model keeping, per group (layer name), the listed output elements (all if not listed).

    An empty list removes the layer whole, where `groups.removable` allows it.
    """
    spec = model.spec
    check_supported(spec)
    keep = {name: _indices(spec, name, idx) for name, idx in keep.items()}
    smaller = build(resized_spec(spec, {name: len(idx) for name, idx in keep.items()}))  # refuses empty layers
    # the full widths with the removed layers marked: a reader of a removed layer reads what it read
    marked = resized_spec(spec, {name: 0 for name, idx in keep.items() if len(idx) == 0})
    with torch.no_grad():
        for index, layer in enumerate(spec.layers):
            out = keep.get(layer.name)
            if layer.kind == BYPASS or (out is not None and len(out) == 0):
                continue  # removed whole: nothing to copy, its readers read its input
            inputs = kept_inputs(marked, index, keep)
            old, new = layer_modules(model, layer.name), layer_modules(smaller, layer.name)
            if layer.kind in ("gru", "lstm"):
                _copy_recurrent(old["main"], new["main"], out, inputs, 3 if layer.kind == "gru" else 4)
            else:
                _copy_rows_cols(old["main"], new["main"], out, inputs)
            if "norm" in old:
                _copy_norm(old["norm"], new["norm"], out)
        smaller.input_mean.copy_(model.input_mean)
        smaller.input_std.copy_(model.input_std)
    return smaller.train(model.training)


def _indices(spec: ModelSpec, name: str, idx) -> torch.Tensor:
    if name == OUTPUT:
        raise ModelConfigError("the classifier's outputs are the classes and cannot be pruned")
    size = spec.layer(name).out_features
    idx = torch.as_tensor(idx, dtype=torch.long).reshape(-1)
    if len(idx) and (idx.min() < 0 or idx.max() >= size or len(torch.unique(idx)) != len(idx)):
        raise ModelConfigError(f"layer {name}: kept elements must be distinct indices below {size}")
    return torch.sort(idx).values


def _pick(tensor: torch.Tensor, rows: torch.Tensor | None, cols: torch.Tensor | None) -> torch.Tensor:
    if rows is not None:
        tensor = tensor.index_select(0, rows)
    if cols is not None:
        tensor = tensor.index_select(1, cols)
    return tensor


def _copy_rows_cols(old: nn.Module, new: nn.Module, rows, cols) -> None:
    """A conv (out, in, k) or a dense layer (out, in): kept rows and input columns, and the bias."""
    new.weight.copy_(_pick(old.weight, rows, cols))
    if old.bias is not None:
        new.bias.copy_(_pick(old.bias, rows, None))


def _copy_norm(old: nn.BatchNorm1d, new: nn.BatchNorm1d, rows) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(new, name).copy_(_pick(getattr(old, name), rows, None))
    new.num_batches_tracked.copy_(old.num_batches_tracked)


def _copy_recurrent(old: nn.RNNBase, new: nn.RNNBase, units, inputs, gates: int) -> None:
    """Every gate's rows of the kept units; input columns; the recurrent columns of the kept units."""
    hidden = old.hidden_size
    rows = None if units is None else torch.cat([g * hidden + units for g in range(gates)])
    new.weight_ih_l0.copy_(_pick(old.weight_ih_l0, rows, inputs))
    new.weight_hh_l0.copy_(_pick(old.weight_hh_l0, rows, units))
    new.bias_ih_l0.copy_(_pick(old.bias_ih_l0, rows, None))
    new.bias_hh_l0.copy_(_pick(old.bias_hh_l0, rows, None))
