"""The interface every runtime backend implements, and the registry that finds one by name.

A backend turns a profiled item (a layer or model description) into its
runtime's format (`convert`, run in a subprocess because converters can
crash), loads that artifact with a pinned thread count (`load`), and returns a
`Runner` that predicts (for equality tests and validation) or binds one input
for the timing loop. Backends whose numbers are computed rather than timed
(the microcontroller model) set `timed = False` and implement `compute`.

Third-party backends are named `package.module:Class` in the pool file.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from components.profiling.items import Item


class BackendError(RuntimeError):
    """A conversion or load that failed for a reason worth recording (the profile goes on)."""


class Runner(Protocol):
    def predict(self, x: np.ndarray) -> np.ndarray:
        """Run one input in PyTorch layout and return the output in PyTorch layout."""

    def bind(self, x: np.ndarray) -> Callable[[], object]:
        """A no-argument callable that runs one inference on `x` (what the timing loop calls)."""


class Backend:
    runtime: str = ""
    timed: bool = True
    artifact_suffix: str = ""  # file the conversion writes, e.g. ".onnx"; "" when nothing is converted
    formats: tuple[str, ...] = ()  # exported whole-model formats `load_file` reads (components.export.FORMATS)

    def convert(self, item: Item, artifact_path: Path) -> None:
        """Write the item in this runtime's format to `artifact_path` (no-op for runtimes that need none)."""

    def load(self, item: Item, artifact_path: Path | None, threads: int) -> Runner:
        raise NotImplementedError

    def load_file(self, path: Path, fmt: str, threads: int) -> Runner:
        """A runner for one exported whole model (`validate`); it predicts a batch of one window at a time."""
        raise BackendError(f"runtime {self.runtime or type(self).__name__} loads no exported model file "
                           f"(asked for {fmt})")

    def compute(self, item: Item, device) -> dict:
        """Analytic figures for runtimes that are computed, not timed."""
        raise NotImplementedError

    def check_device(self, device) -> None:
        """Refuse a pool entry this runtime cannot work with (raise ConfigError saying what it lacks)."""

    def host_runtime(self, device) -> tuple[str, int]:
        """The runtime and threads that run the device's exported files on this host: its own by default."""
        return device.runtime, device.threads

    def version(self) -> str:
        return ""


_BUILTIN = {
    "torch": "components.devices.torch_eager:TorchEagerBackend",
    "onnxruntime": "components.devices.onnxrt:OnnxRuntimeBackend",
    "tflite": "components.devices.tflite:TfliteBackend",
    "mcu": "components.devices.mcu:McuBackend",
}


def known_runtimes() -> tuple[str, ...]:
    return tuple(_BUILTIN)


def get_backend(runtime: str) -> Backend:
    """The backend named `runtime`: a built-in name, or `package.module:Class` for a plug-in."""
    target = _BUILTIN.get(runtime, runtime)
    module_name, sep, class_name = target.partition(":")
    if not sep:
        raise BackendError(f"unknown runtime {runtime!r}; known: {', '.join(_BUILTIN)} "
                           "(or a plug-in as package.module:Class)")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise BackendError(f"runtime {runtime!r}: cannot load {target}: {exc}") from exc
    return cls()
