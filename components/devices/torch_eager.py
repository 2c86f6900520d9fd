"""PyTorch eager mode: the reference module itself, no conversion, one intra-op thread pool."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from components.devices.base import Backend, BackendError
from components.profiling.items import Item


class _TorchRunner:
    def __init__(self, module):
        import torch

        self._torch = torch
        self.module = module

    def predict(self, x: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            return self.module(self._torch.from_numpy(np.ascontiguousarray(x))).numpy()

    def bind(self, x: np.ndarray):
        torch, module = self._torch, self.module
        tensor = torch.from_numpy(np.ascontiguousarray(x))

        def run():
            with torch.inference_mode():
                return module(tensor)

        return run


class TorchEagerBackend(Backend):
    runtime = "torch"
    formats = ("torch",)

    def load(self, item: Item, artifact_path: Path | None, threads: int) -> _TorchRunner:
        import torch

        from components.devices.reference import reference_module

        torch.set_num_threads(threads)
        return _TorchRunner(reference_module(item))

    def write(self, model, fmt: str, target: Path, calibration: np.ndarray | None) -> None:
        if fmt != "torch":
            raise BackendError(f"torch writes its own safetensors export only, not {fmt}")
        write_torch_file(model, target)

    def load_file(self, path: Path, fmt: str, threads: int) -> _TorchRunner:
        import torch

        if fmt != "torch":
            raise BackendError(f"torch loads its own safetensors export only, not {fmt}")
        torch.set_num_threads(threads)
        return _TorchRunner(load_torch_file(path))

    def version(self) -> str:
        import torch

        return f"torch {torch.__version__}"


TORCH_FORMAT_TAG = "iot-compress-torch/1"  # the metadata that marks this pipeline's torch export


def write_torch_file(model, target: Path) -> None:
    """The `torch` export: the weights as safetensors, the model's description in the metadata (no pickle)."""
    from safetensors.torch import save_file

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(target), metadata={"format": TORCH_FORMAT_TAG, "spec": model.spec.to_json()})


def load_torch_file(path: Path):
    """The eval-mode model in a `torch` export (safetensors: no code runs while reading it)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from components import models
    from components.models.spec import ModelConfigError, ModelSpec

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("format") != TORCH_FORMAT_TAG:
        raise ModelConfigError(f"{path.name}: not a torch export of this pipeline (no {TORCH_FORMAT_TAG} metadata)")
    model = models.build(ModelSpec.from_json(meta["spec"]))
    model.load_state_dict(load_file(str(path)))
    return model.eval()
