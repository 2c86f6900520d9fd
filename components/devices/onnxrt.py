"""ONNX Runtime on the CPU: export with PyTorch's TorchScript exporter, run with pinned threads.

The TorchScript exporter (`dynamo=False`) keeps a dynamic-free graph with the
weights inside the file and exports a layer in tens of milliseconds; the
dynamo exporter takes seconds and writes side files (see STACK.md).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from components.devices.base import Backend, BackendError
from components.profiling.items import Item

OPSET = 17


def write_onnx(module, example, path: Path, output_name: str = "y") -> None:
    """`module` (eval mode) as an ONNX file for inputs shaped like `example` (a torch tensor)."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on RNN export and deprecations
        torch.onnx.export(module, (example,), str(path), dynamo=False, input_names=["x"],
                          output_names=[output_name], opset_version=OPSET)


class _OrtRunner:
    def __init__(self, session):
        self.session = session
        self.input_name = session.get_inputs()[0].name

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)})[0]

    def bind(self, x: np.ndarray):
        session, feed = self.session, {self.input_name: np.ascontiguousarray(x, dtype=np.float32)}
        return lambda: session.run(None, feed)


class OnnxRuntimeBackend(Backend):
    runtime = "onnxruntime"
    artifact_suffix = ".onnx"
    formats = ("onnx",)

    def convert(self, item: Item, artifact_path: Path) -> None:
        import torch

        from components.devices.reference import reference_module
        from components.profiling.items import example_input

        write_onnx(reference_module(item), torch.from_numpy(example_input(item)), artifact_path)

    def write(self, model, fmt: str, target: Path, calibration: np.ndarray | None) -> None:
        import torch

        if fmt != "onnx":
            raise BackendError(f"onnxruntime writes ONNX files only, not {fmt}")
        write_onnx(model, torch.zeros((1, *model.spec.input_shape), dtype=torch.float32), target,
                   output_name="logits")

    def load(self, item: Item, artifact_path: Path | None, threads: int) -> _OrtRunner:
        return self.load_file(Path(artifact_path), "onnx", threads)

    def load_file(self, path: Path, fmt: str, threads: int) -> _OrtRunner:
        import onnxruntime as ort

        if fmt != "onnx":
            raise BackendError(f"onnxruntime loads ONNX files only, not {fmt}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        # No spin-waiting of idle intra-op threads: a sensing model runs once per window, not back to back,
        # and the sessions timed round-robin must not burn the cores the next one is timed on.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types per failure
            raise BackendError(f"onnxruntime cannot load {path.name}: {exc}") from exc
        return _OrtRunner(session)

    def version(self) -> str:
        import onnxruntime as ort

        return f"onnxruntime {ort.__version__}"
