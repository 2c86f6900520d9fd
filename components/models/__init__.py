"""Models built from a layer description (JSON + safetensors weights), their training, the forest reference.

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
    """Write model.json (the description) and model.safetensors (weights and buffers), sealed (checksums.json)."""
    from safetensors.torch import save_file

    from components.artifacts.seals import seal

    directory.mkdir(parents=True, exist_ok=True)
    (directory / SPEC_FILE).write_text(model.spec.to_json())
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"arch": model.spec.arch})
    seal(directory, [SPEC_FILE, WEIGHTS_FILE])


def load(directory: Path):
    """Rebuild a model from its description and load its weights (safetensors: no code is run).

    Both files must be the ones `save` sealed beside them; a missing, changed, truncated or foreign
    description or weights file raises DamagedArtifact naming it.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from components.artifacts.seals import DamagedArtifact, verify_sealed

    directory = Path(directory)
    remedy = "run the stage that wrote this model folder again (train, or compress for a compressed model)"
    spec_path, weights_path = directory / SPEC_FILE, directory / WEIGHTS_FILE
    verify_sealed(directory, [SPEC_FILE, WEIGHTS_FILE], remedy)
    try:
        spec = ModelSpec.from_json(spec_path.read_text())
    except (ValueError, KeyError, TypeError) as exc:  # JSONDecodeError is a ValueError; ModelConfigError too
        raise DamagedArtifact(spec_path, f"not a readable model description ({type(exc).__name__}: {exc})",
                              remedy) from None
    model = build(spec)
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError) as exc:
        raise DamagedArtifact(weights_path, f"not a readable safetensors file ({exc})", remedy) from None
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shapes that differ from the description's
        raise DamagedArtifact(weights_path, f"its weights do not match {SPEC_FILE} "
                              f"({' '.join(str(exc).split())[:300]})", remedy) from None
    if missing or unexpected:
        raise DamagedArtifact(weights_path, f"its weights do not match {SPEC_FILE} (missing {sorted(missing)[:5]}, "
                              f"unexpected {sorted(unexpected)[:5]})", remedy)
    model.eval()
    return model
