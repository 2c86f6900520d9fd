"""Writing windows to disk: streamed .npy arrays and an all-or-nothing output folder."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from components.data.deepsense import interval_spectra

_HEADER_BYTES = 256  # fixed, so the final shape can be written over the placeholder in place


class NpyAppender:
    """An .npy file written block by block, its length known only at the end.

    Memory stays bounded by one block however many windows are written; the
    result is a standard .npy file (format 1.0) that `np.load(mmap_mode='r')`
    opens.
    """

    def __init__(self, path: Path, dtype: np.dtype, inner_shape: tuple[int, ...]):
        self.path, self.dtype, self.inner_shape = path, np.dtype(dtype), tuple(inner_shape)
        self.count = 0
        self._file = open(path, "wb")
        self._write_header()

    def _write_header(self) -> None:
        header = repr({"descr": self.dtype.str, "fortran_order": False, "shape": (self.count, *self.inner_shape)})
        body = header.encode("latin1")
        pad = _HEADER_BYTES - 10 - len(body) - 1
        if pad < 0:
            raise ValueError(f"shape {self.inner_shape} too long for the fixed .npy header")
        self._file.seek(0)
        self._file.write(b"\x93NUMPY\x01\x00" + (_HEADER_BYTES - 10).to_bytes(2, "little") + body + b" " * pad + b"\n")
        self._file.seek(0, os.SEEK_END)

    def append(self, block: np.ndarray) -> None:
        if block.shape[1:] != self.inner_shape:
            raise ValueError(f"{self.path.name}: block shape {block.shape[1:]} != {self.inner_shape}")
        np.ascontiguousarray(block, dtype=self.dtype).tofile(self._file)
        self.count += len(block)

    def close(self) -> None:
        self._write_header()
        self._file.close()


@dataclass
class WindowWriter:
    """Streams window blocks to `signal.npy` (time domain) and `x.npy` (DeepSense spectra).

    Keeps one small metadata row per window (label, user, device, per-sensor
    peak magnitude, finiteness) for validation, the split and the data card.
    """

    directory: Path
    intervals: int
    sensors: tuple[str, ...]
    _signal: NpyAppender | None = None
    _x: NpyAppender | None = None
    _meta: list[pd.DataFrame] = field(default_factory=list)

    def add(self, signal: np.ndarray, meta: dict[str, np.ndarray]) -> None:
        if len(signal) == 0:
            return
        x = interval_spectra(signal, self.intervals)
        if self._signal is None:
            self._signal = NpyAppender(self.directory / "signal.npy", np.float32, signal.shape[1:])
            self._x = NpyAppender(self.directory / "x.npy", np.float32, x.shape[1:])
        first = self._signal.count
        self._signal.append(signal)
        self._x.append(x)
        frame = pd.DataFrame(meta)
        frame.index = pd.RangeIndex(first, first + len(signal), name="window")
        frame["finite"] = np.isfinite(signal).all(axis=(1, 2, 3)) & np.isfinite(x).all(axis=(1, 2, 3, 4, 5))
        for i, sensor in enumerate(self.sensors):
            frame[f"abs_max_{sensor}"] = np.abs(np.nan_to_num(signal[:, i], posinf=np.inf)).max(axis=(1, 2))
        self._meta.append(frame)

    def close(self) -> pd.DataFrame:
        """Finish the arrays; return the metadata of every window written."""
        for appender in (self._signal, self._x):
            if appender is not None:
                appender.close()
        return pd.concat(self._meta) if self._meta else pd.DataFrame()


@contextmanager
def atomic_directory(target: Path, sealed: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder that replaces `target` only if the block succeeds.

    On any exception the staging folder is removed and `target` is left as it
    was, so a failed run never leaves a half-written output. `sealed`: the
    sha256 of every file it holds is recorded beside them first
    (`checksums.seal`), for the stages that read it to check.
    """
    from components.artifacts.seals import seal

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex[:8]
    staging = target.parent / f".{target.name}.tmp-{token}"
    staging.mkdir()
    try:
        yield staging
        if sealed:
            seal(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = target.parent / f".{target.name}.old-{token}"
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(text)
    tmp.replace(path)
