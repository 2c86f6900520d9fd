"""Plug-in backends that fail on purpose (named in test pool files as tests.unit.faulty_backends:Class).

They run the real torch runtime but crash or refuse some configurations, so
the profiler's fault handling is tested against real process deaths.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

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
