"""Export a trained model to the files the pool's runtimes load, each with its sha256.

Formats (`FORMATS`):

    onnx         ONNX (PyTorch's TorchScript exporter, as `profile` converts), float32
    onnx_int8    ONNX in ONNX Runtime's QDQ int8 form (static quantization calibrated on training windows:
                 int8 weights per channel, uint8 activations); GRU and LSTM stay float, named by
                 `onnxrt.float_operators`
    tflite       TensorFlow Lite, float32 (rebuilt in Keras, recurrent layers unrolled)
    tflite_int8  TensorFlow Lite full-integer int8: weights, activations, input and output quantised,
                 calibrated on training windows (post-training quantization)
    tflite_int16x8  TensorFlow Lite "16x8" full-integer: int8 weights, int16 activations, input and output,
                 calibrated the same way; what the microcontroller runs (TFLite Micro and CMSIS-NN have
                 16x8 kernels). Plain int8 changes 2.5-7 % of a DeepSense model's decisions (its GRU and
                 its logits lose most); 16x8 changed under 0.1 %, in a file 8-14 % smaller than int8's (UCI HAPT fold 0)
    torch        the weights as safetensors with the model description in its metadata (no pickle)

Every export takes a batch of one window, the way a sensing device runs. The
backend that owns a format writes it (`Backend.write`, components/devices) and
loads it back for validate (`Backend.load_file`); this module names the files,
checksums them and isolates the converters. Each conversion runs in its own child process (`python -m components.devices.export`), so a
converter that crashes (TensorFlow's int8 converter on a looped GRU dies with
SIGSEGV, see STACK.md) fails that one format with a message, not the stage.
`manifest.json` beside the files lists each file's format, size and sha256;
`components.artifacts.seals.verify` checks a file against it before anything loads it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from components.artifacts.atomic import write_text_atomic
from components.artifacts.seals import sha256_of
from components.devices.base import format_backend
from components.devices.worker import describe_exit

# each written by the backend that owns it
FORMATS = ("onnx", "onnx_int8", "tflite", "tflite_int8", "tflite_int16x8", "torch")
FILE_NAMES = {"onnx": "model.onnx", "onnx_int8": "model.int8.onnx", "tflite": "model.tflite",
              "tflite_int8": "model.int8.tflite",
              "tflite_int16x8": "model.int16x8.tflite", "torch": "model.safetensors"}
MANIFEST = "manifest.json"


class ExportFailed(RuntimeError):
    """A conversion that failed or crashed; the message says which format and why."""


@dataclass(frozen=True)
class ExportedFile:
    format: str
    file: str  # name inside the export folder
    sha256: str
    bytes: int

    def to_dict(self) -> dict:
        return asdict(self)


def export(model_dir: Path, formats: list[str] | tuple[str, ...], out_dir: Path, calibration: np.ndarray | None,
           timeout_s: float) -> tuple[dict[str, ExportedFile], dict[str, str]]:
    """Export the model in `model_dir` to each format under `out_dir`; write the manifest.

    Returns the files written and, per format that failed, why. Nothing half
    written is left: a conversion writes a temporary file that is renamed only
    once it is complete.
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown export format(s) {unknown}; known: {', '.join(FORMATS)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    for fmt, name in FILE_NAMES.items():  # files of formats no longer asked for are not left to be mistaken
        if fmt not in formats:
            (out_dir / name).unlink(missing_ok=True)
    calibration_path = None
    files: dict[str, ExportedFile] = {}
    failures: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="export-", dir=out_dir) as scratch:
        quantised = [f for f in formats if f in format_backend(f).calibrated]
        if quantised:
            if calibration is None or len(calibration) == 0:
                raise ValueError(f"{quantised[0]} needs calibration windows")
            calibration_path = Path(scratch) / "calibration.npy"
            np.save(calibration_path, np.ascontiguousarray(calibration, dtype=np.float32))
        for fmt in formats:
            target = out_dir / FILE_NAMES[fmt]
            partial = Path(scratch) / FILE_NAMES[fmt]
            try:
                _convert_in_child(model_dir, fmt, partial, calibration_path, timeout_s, Path(scratch) / "log.txt")
            except ExportFailed as exc:
                failures[fmt] = str(exc)
                target.unlink(missing_ok=True)
                continue
            partial.replace(target)
            files[fmt] = ExportedFile(fmt, target.name, sha256_of(target), target.stat().st_size)
    manifest = {"model_dir": os.path.relpath(model_dir, out_dir), "files": {f: e.to_dict() for f, e in files.items()},
                "failed": failures}
    write_text_atomic(out_dir / MANIFEST, json.dumps(manifest, indent=2))
    return files, failures


def _convert_in_child(model_dir: Path, fmt: str, target: Path, calibration: Path | None, timeout_s: float,
                      log_path: Path) -> None:
    cmd = [sys.executable, "-m", "components.devices.export", fmt, str(model_dir), str(target)]
    if calibration is not None:
        cmd.append(str(calibration))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1")
    with open(log_path, "wb") as log:
        try:
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, timeout=timeout_s,
                                  cwd=Path(__file__).resolve().parents[2])
        except subprocess.TimeoutExpired:
            raise ExportFailed(f"{fmt}: the conversion overran {timeout_s:.0f} s and was killed") from None
    if proc.returncode != 0 or not target.exists():
        tail = " | ".join(log_path.read_text(errors="replace").strip().splitlines()[-3:])
        how = describe_exit(proc.returncode) if proc.returncode else "it wrote no file"
        raise ExportFailed(f"{fmt}: the converter failed ({how})" + (f": {tail}" if tail else ""))


def read_manifest(out_dir: Path) -> dict[str, ExportedFile]:
    d = json.loads((out_dir / MANIFEST).read_text())
    return {fmt: ExportedFile(**entry) for fmt, entry in d["files"].items()}


# ---- the conversions (child process) ---------------------------------------------------------------------------


def _main(argv: list[str]) -> int:
    fmt, model_dir, target = argv[0], Path(argv[1]), Path(argv[2])
    calibration = np.load(argv[3]) if len(argv) > 3 else None
    import torch

    from components import models

    torch.set_num_threads(1)
    backend = format_backend(fmt)
    backend.write(models.load(model_dir), fmt, target, calibration if fmt in backend.calibrated else None)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
