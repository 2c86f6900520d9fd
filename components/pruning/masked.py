"""Masks over a model's hidden elements: the compressor trains the task network under them.

`set_masks(model, {layer name: 0/1 vector})` makes the model behave as if
the masked elements were removed: conv filters and dense units are zeroed
after their activation (forward hooks), recurrent units inside the
recurrence (`models.base.run_recurrent`). Slicing the same elements away
(`slicing.slice_model`) gives the same outputs, which the tests check.
"""

from __future__ import annotations

import torch

from components.pruning.groups import groups
from components.pruning.slicing import layer_modules

_HOOKED = "_pruning_hooks"


def set_masks(model, masks: dict[str, torch.Tensor] | None) -> None:
    """Apply `masks` (replacing any before); None or {} removes them. Parameters are shared, not copied."""
    _install_hooks(model)
    sizes = {g.layer: g.size for g in groups(model.spec)}
    clean = {}
    for name, mask in (masks or {}).items():
        if name not in sizes:
            raise KeyError(f"no compressible layer {name!r} (have {', '.join(sizes)})")
        mask = torch.as_tensor(mask, dtype=torch.float32).reshape(-1)
        if len(mask) != sizes[name]:
            raise ValueError(f"layer {name}: mask of {len(mask)} for {sizes[name]} elements")
        clean[name] = mask
    model.hidden_masks = clean


def _install_hooks(model) -> None:
    if getattr(model, _HOOKED, False):
        return
    for group in groups(model.spec):
        if group.kind in ("gru", "lstm"):
            continue  # masked inside the recurrence by the model's forward
        activation = _activation(model, group.layer)
        activation.register_forward_hook(_mask_hook(model, group.layer))
    setattr(model, _HOOKED, True)


def _activation(model, name: str) -> torch.nn.Module:
    """The ReLU after the layer: masking there zeroes exactly what the next layer reads."""
    main = layer_modules(model, name)["main"]
    for container in model.modules():
        if isinstance(container, torch.nn.Sequential):
            children = list(container)
            if children and children[0] is main:
                return next(m for m in children if isinstance(m, torch.nn.ReLU))
    raise ValueError(f"layer {name}: no activation after it to mask")


def _mask_hook(model, name: str):
    def hook(module, inputs, output):
        mask = model.hidden_masks.get(name)
        if mask is None:
            return output
        shape = (1, -1) + (1,) * (output.dim() - 2)
        return output * mask.to(output.dtype).reshape(shape)

    return hook
