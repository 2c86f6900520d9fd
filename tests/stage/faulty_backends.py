"""Plug-in backends that fail on purpose (named in test pool files as tests.stage.faulty_backends:Class).

They run a real runtime (torch, onnxruntime) but crash or refuse some
configurations or files, so the profiler's and the validator's fault handling
is tested against real process deaths.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from components.devices.base import BackendError
from components.devices.onnxrt import OnnxRuntimeBackend
from components.devices.torch_eager import TorchEagerBackend


def _width(item) -> int:
    return item.layer.out_features if item.layer is not None else 0


class CrashingBackend(TorchEagerBackend):
    """Converts to a dummy file; the converter dies with SIGSEGV on widths divisible by 3. On widths
    that leave 1 modulo 3 the runtime refuses a linear layer and dies with SIGSEGV on any other kind."""

    runtime = "crashing"
    artifact_suffix = ".bin"

    def convert(self, item, artifact_path: Path) -> None:
        if _width(item) % 3 == 0 and item.layer is not None:
            os.kill(os.getpid(), signal.SIGSEGV)
        artifact_path.write_bytes(b"converted")

    def load(self, item, artifact_path, threads):
        if _width(item) % 3 == 1:
            if item.kind == "linear":
                raise RuntimeError(f"runtime refuses width {_width(item)}")
            os.kill(os.getpid(), signal.SIGSEGV)
        return super().load(item, artifact_path, threads)


class SlowBackend(TorchEagerBackend):
    """Sleeps in every load, so a test can interrupt a run part-way."""

    runtime = "slow"

    def load(self, item, artifact_path, threads):
        import time

        time.sleep(0.3)
        return super().load(item, artifact_path, threads)


class CrashingFileBackend(OnnxRuntimeBackend):
    """Loads exported ONNX files like onnxruntime, but dies with SIGSEGV on the first window it runs."""

    runtime = "crashing-file"

    def load_file(self, path, fmt, threads):
        runner = super().load_file(path, fmt, threads)

        class Crashing:
            def predict(self, x):
                os.kill(os.getpid(), signal.SIGSEGV)

            def bind(self, x):
                return runner.bind(x)

        return Crashing()


class RefusingFileBackend(OnnxRuntimeBackend):
    """Says it loads ONNX, then refuses every file (a device whose runtime lacks an operator)."""

    runtime = "refusing-file"

    def load_file(self, path, fmt, threads):
        raise BackendError(f"refusing-file cannot load {Path(path).name}: operator GRU is not supported")
