"""ONNX Runtime on the CPU: export with PyTorch's TorchScript exporter, run with pinned threads.

The TorchScript exporter (`dynamo=False`) keeps a dynamic-free graph with the
weights inside the file and exports a layer in tens of milliseconds; the
dynamo exporter takes seconds and writes side files (see STACK.md).

`onnx_int8` is ONNX Runtime's own static quantization in the QDQ format
(`onnxruntime.quantization.quantize_static`): int8 weights per channel,
uint8 activations (the x86 CPU's fast U8S8 kernels), ranges calibrated on
training windows (min-max). Weights use 7 of their 8 bits (`reduce_range`):
on an x86 CPU without VNNI the U8S8 kernels add products in 16 bits and
saturate with full-range weights; on a compressed UCI HAPT model full range
lost 2 points of validation accuracy (0.942 against float's 0.962, 95 % of
decisions alike) and 7 bits lost none (0.962, 99 %), and ran faster. Operators ONNX Runtime cannot quantize in QDQ
form, the recurrent ones (GRU, LSTM) among them, stay float between a
DequantizeLinear and a QuantizeLinear; `float_operators` names them.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from components.devices.base import Backend, BackendError
from components.profiling.items import Item

OPSET = 17
RECURRENT = ("GRU", "LSTM", "RNN")
COMPUTE = ("Conv", "MatMul", "Gemm", *RECURRENT)  # the operators that carry the weights


def write_onnx(module, example, path: Path, output_name: str = "y") -> None:
    """`module` (eval mode) as an ONNX file for inputs shaped like `example` (a torch tensor)."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on RNN export and deprecations
        torch.onnx.export(module, (example,), str(path), dynamo=False, input_names=["x"],
                          output_names=[output_name], opset_version=OPSET)


def write_onnx_int8(model, target: Path, calibration: np.ndarray) -> None:
    """`model` as a QDQ-quantized ONNX file, its activation ranges calibrated on `calibration` (torch layout)."""
    import torch
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    float_path = Path(target).with_name(Path(target).name + ".float.onnx")
    write_onnx(model, torch.zeros((1, *model.spec.input_shape), dtype=torch.float32), float_path, "logits")
    quant_pre_process(str(float_path), str(float_path))  # shapes inferred and the graph optimised, as ORT advises

    class Windows(CalibrationDataReader):
        def __init__(self):
            self.rows = iter(np.ascontiguousarray(calibration, dtype=np.float32))

        def get_next(self):
            row = next(self.rows, None)
            return None if row is None else {"x": row[None]}

    try:
        quantize_static(str(float_path), str(target), Windows(), quant_format=QuantFormat.QDQ, per_channel=True,
                        reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    finally:
        float_path.unlink(missing_ok=True)


def float_operators(path: Path) -> list[str]:
    """The weight-carrying operators of an ONNX file that run in float: "name (GRU)", in graph order.

    In a QDQ file an operator runs quantized when its first input comes from a
    DequantizeLinear (ONNX Runtime fuses the pair into an integer kernel),
    except the recurrent ones, which have no QDQ kernel and always run float.
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [f"{n.name or n.output[0]} ({n.op_type})" for n in graph.node if n.op_type in COMPUTE
            and (n.op_type in RECURRENT or not n.input or n.input[0] not in dequantized)]


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
    formats = ("onnx", "onnx_int8")
    calibrated = ("onnx_int8",)
    int8_format = "onnx_int8"

    def convert(self, item: Item, artifact_path: Path) -> None:
        import torch

        from components.devices.reference import reference_module
        from components.profiling.items import example_input

        write_onnx(reference_module(item), torch.from_numpy(example_input(item)), artifact_path)

    def write(self, model, fmt: str, target: Path, calibration: np.ndarray | None) -> None:
        import torch

        if fmt not in self.formats:
            raise BackendError(f"onnxruntime writes {' or '.join(self.formats)} files only, not {fmt}")
        if fmt == "onnx_int8":
            write_onnx_int8(model, Path(target), calibration)
            return
        write_onnx(model, torch.zeros((1, *model.spec.input_shape), dtype=torch.float32), target,
                   output_name="logits")

    def load(self, item: Item, artifact_path: Path | None, threads: int) -> _OrtRunner:
        return self.load_file(Path(artifact_path), "onnx", threads)

    def load_file(self, path: Path, fmt: str, threads: int) -> _OrtRunner:
        import onnxruntime as ort

        if fmt not in self.formats:
            raise BackendError(f"onnxruntime loads {' or '.join(self.formats)} files only, not {fmt}")
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

    def float_operators(self, path: Path, fmt: str) -> list[str]:
        return float_operators(path) if fmt == "onnx_int8" else []

    def version(self) -> str:
        import onnxruntime as ort

        return f"onnxruntime {ort.__version__}"
