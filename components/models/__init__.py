"""Models built from a layer description; saved as description (JSON) + weights (safetensors).

Importing the package does not import torch: the descriptions (`spec`) are
read by processes that never build a model (the profiler's timing workers
for ONNX Runtime and TFLite, the latency model). The torch classes load on
first use.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from components.models.spec import LayerSpec, ModelConfigError, ModelSpec

SPEC_FILE, WEIGHTS_FILE = "model.json", "model.safetensors"
_LAZY = {"SensingModel": "components.models.base", "DeepSense": "components.models.deepsense",
         "PlainCNN": "components.models.plain", "MLP": "components.models.plain"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name == "ARCHITECTURES":
        return architectures()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def architectures() -> dict:
    from components.models.deepsense import DeepSense
    from components.models.plain import MLP, PlainCNN

    return {"deepsense": DeepSense, "cnn": PlainCNN, "mlp": MLP}

__all__ = ["ARCHITECTURES", "LayerSpec", "ModelConfigError", "ModelSpec", "SensingModel", "build", "load", "save",
           "spec_from_params"]


def spec_from_params(arch: str, model_params, input_shape: tuple[int, ...], classes: tuple[str, ...]) -> ModelSpec:
    """The description of a fresh model of `arch`, its widths taken from params.yaml."""
    from components.models.deepsense import deepsense_spec
    from components.models.plain import cnn_spec, mlp_spec

    if arch == "deepsense":
        p = model_params.deepsense
        return deepsense_spec(input_shape, classes, sensor_filters=p.sensor_filters, sensor_kernels=p.sensor_kernels,
                              first_stride=p.first_stride, merge_filters=p.merge_filters,
                              merge_kernels=p.merge_kernels, rnn=p.rnn, rnn_units=p.rnn_units,
                              rnn_layers=p.rnn_layers, dropout=p.dropout)
    if arch == "cnn":
        p = model_params.cnn
        return cnn_spec(input_shape, classes, filters=p.filters, kernel=p.kernel, dropout=p.dropout)
    if arch == "mlp":
        p = model_params.mlp
        return mlp_spec(input_shape, classes, units=p.units, dropout=p.dropout)
    raise ModelConfigError(f"unknown architecture {arch!r}; known: deepsense, cnn, mlp")


def build(spec: ModelSpec):
    """The torch model (a SensingModel) the description describes, freshly initialised."""
    known = architectures()
    try:
        cls = known[spec.arch]
    except KeyError:
        raise ModelConfigError(f"unknown architecture {spec.arch!r}; known: {', '.join(known)}") from None
    return cls(spec)


def save(model, directory: Path) -> None:
    """Write model.json (the description) and model.safetensors (weights and buffers)."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    (directory / SPEC_FILE).write_text(model.spec.to_json())
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"arch": model.spec.arch})


def load(directory: Path):
    """Rebuild a model from its description and load its weights (safetensors: no code is run)."""
    from safetensors.torch import load_file

    spec = ModelSpec.from_json((directory / SPEC_FILE).read_text())
    model = build(spec)
    state = load_file(str(directory / WEIGHTS_FILE))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelConfigError(f"{directory}: weights do not match the description "
                               f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})")
    model.eval()
    return model
