"""The interface every runtime backend implements, and the registry that finds one by name.

A backend turns a profiled item (a layer or model description) into its
runtime's format (`convert`, run in a subprocess because converters can
crash), loads that artifact with a pinned thread count (`load`), and returns a
`Runner` that predicts (for equality tests and validation) or binds one input
for the timing loop. It also writes a trained model in the whole-model
formats it owns (`write`, what `export` runs in its child process) and loads
them back (`load_file`, what `validate` runs).

Backends whose numbers are computed rather than timed (the microcontroller
model) set `timed = False` and implement `compute`; their hard resource
limits (`limits`) are what compress keeps a model within and validate gates
on. Stages ask the backend these questions instead of looking at the pool
entry's runtime-specific sections.

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
    formats: tuple[str, ...] = ()  # whole-model formats it writes (`write`) and reads (`load_file`)
    calibrated: tuple[str, ...] = ()  # those of `formats` whose writing needs calibration windows (quantised)
    int8_format: str = ""  # its integer form of a model, a candidate compress times and scores ("": none)

    def convert(self, item: Item, artifact_path: Path) -> None:
        """Write the item in this runtime's format to `artifact_path` (no-op for runtimes that need none)."""

    def load(self, item: Item, artifact_path: Path | None, threads: int) -> Runner:
        raise NotImplementedError

    def load_file(self, path: Path, fmt: str, threads: int) -> Runner:
        """A runner for one exported whole model (`validate`); it predicts a batch of one window at a time."""
        raise BackendError(f"runtime {self.runtime or type(self).__name__} loads no exported model file "
                           f"(asked for {fmt})")

    def write(self, model, fmt: str, target: Path, calibration: np.ndarray | None) -> None:
        """Write the eval-mode torch `model`, taking a batch of one window, to `target` in format `fmt`.

        `calibration` (training windows in the torch layout) is given for the
        formats in `calibrated` and only those.
        """
        raise BackendError(f"runtime {self.runtime or type(self).__name__} writes no exported model file "
                           f"(asked for {fmt})")

    def float_operators(self, path: Path, fmt: str) -> list[str]:
        """The weight-carrying operators an exported integer file still runs in float, by name (none by default:
        a full-integer file)."""
        return []

    def compute(self, item: Item, device) -> dict:
        """Analytic figures for runtimes that are computed, not timed: at least `latency_ms`, and one figure
        per key of `limits`."""
        raise NotImplementedError

    def limits(self, device) -> dict[str, int]:
        """Hard limits of the part, keyed by the `compute` figure each bounds (none for a timed runtime)."""
        return {}

    def formula(self, device) -> str:
        """How a computed runtime computes its latency, in a line or two (for the latency model's rules.txt)."""
        return ""

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


def format_backend(fmt: str) -> Backend:
    """The built-in backend that writes and reads exported files of format `fmt`."""
    for runtime in _BUILTIN:
        backend = get_backend(runtime)
        if fmt in backend.formats:
            return backend
    raise BackendError(f"no runtime writes the export format {fmt!r}")


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
