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

    def load_file(self, path: Path, fmt: str, threads: int) -> _TorchRunner:
        import torch

        from components.export import load_torch_file

        if fmt != "torch":
            raise BackendError(f"torch loads its own safetensors export only, not {fmt}")
        torch.set_num_threads(threads)
        return _TorchRunner(load_torch_file(path))

    def version(self) -> str:
        import torch

        return f"torch {torch.__version__}"
