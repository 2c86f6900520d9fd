"""TensorFlow Lite on the CPU: rebuild the item in Keras, convert to float32 .tflite, run with LiteRT.

Conversion rebuilds the torch reference module as a Keras model with the same
weights (`keras_build`) and converts it with TensorFlow's TFLiteConverter
(float32, no optimisations, built-in ops only). TensorFlow is imported there
and nowhere else: it costs seconds and hundreds of MB. Loading uses the
standalone LiteRT interpreter (`ai_edge_litert`, XNNPACK by default), which
runs .tflite files without TensorFlow.

A conv1d layer item is channels-last in TFLite ([instances, length,
channels]); the runner transposes from and to the PyTorch layout, once per
bound input, so the timed call is only set-input-and-invoke. Model items take
the PyTorch layout directly (the model transposes inside).

Recurrent layers are unrolled over their fixed sequence length (see
keras_build), so the whole graph runs in the XNNPACK delegate.
"""

from __future__ import annotations

import contextlib
import io
import os
from importlib import metadata
from pathlib import Path

import numpy as np

from components.devices.base import Backend, BackendError
from components.profiling.items import Item

_ACTIVATIONS = {"tflite_int8": "int8", "tflite_int16x8": "int16"}  # quantised export format -> activation type
_CHANNELS_LAST = (0, 2, 1)  # [instances, channels, length] <-> [instances, length, channels]; its own inverse


@contextlib.contextmanager
def _quiet_tensorflow():
    """Quiet TensorFlow's C++ logs and Keras' export printout while converting; restore the environment after.

    TF_CPP_MIN_LOG_LEVEL is read when TensorFlow first logs, so it is set for
    the import and the conversion only (and left alone if the caller set it).
    """
    previous = os.environ.get("TF_CPP_MIN_LOG_LEVEL")
    if previous is None:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # Keras prints the temporary SavedModel's signature
            yield
    finally:
        if previous is None:
            os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)


def tflite_bytes(item: Item, module, calibration: np.ndarray | None = None, activations: str = "int8") -> bytes:
    """The TFLite flatbuffer of `module`, the item's eval-mode torch module.

    float32 as trained, or with `calibration` (windows in the torch layout,
    one per representative sample) full-integer post-training quantization
    calibrated on those windows: int8 weights, and `activations` (with the
    input and output) int8, or int16 ("16x8", what the microcontroller runs:
    it keeps the GRU's decisions where int8 does not).
    """
    if activations not in ("int8", "int16"):
        raise ValueError(f"activations must be int8 or int16, not {activations!r}")
    with _quiet_tensorflow():
        import tensorflow as tf

        from components.devices.keras_build import keras_model

        try:
            model = keras_model(item, module)
        except ValueError as exc:
            raise BackendError(f"tflite: cannot rebuild {item.kind} item {item.key} in Keras: {exc}") from exc
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        if calibration is None:
            converter.optimizations = []  # float32 as trained: no quantisation
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # LiteRT runs no TF (Flex) ops
        else:
            samples = np.ascontiguousarray(calibration, dtype=np.float32)

            def representative():
                for i in range(len(samples)):
                    yield [samples[i : i + 1]]

            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = representative
            if activations == "int8":
                converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]  # integer kernels only
            else:
                converter.target_spec.supported_ops = [
                    tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
            converter.inference_input_type = converter.inference_output_type = getattr(tf, activations)
        try:
            return converter.convert()
        except Exception as exc:  # the converter raises its own ConverterError and others
            raise BackendError(f"tflite: converting {item.kind} item {item.key} failed: {exc}") from exc


class _TfliteRunner:
    """Runs one interpreter; an int8 model's input is quantised and its output dequantised with its own scales."""

    def __init__(self, interpreter, channels_last: bool):
        self.interpreter = interpreter
        (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
        self.input_index, self.output_index = inp["index"], out["index"]
        self.input_dtype = inp["dtype"]
        self.input_quant, self.output_quant = inp["quantization"], out["quantization"]
        self.channels_last = channels_last

    def _to_runtime(self, x: np.ndarray) -> np.ndarray:
        if self.channels_last:
            x = x.transpose(_CHANNELS_LAST)
        if np.issubdtype(self.input_dtype, np.integer):
            scale, zero = self.input_quant
            info = np.iinfo(self.input_dtype)
            return np.ascontiguousarray(np.clip(np.round(x / scale) + zero, info.min, info.max), self.input_dtype)
        return np.ascontiguousarray(x, dtype=np.float32)

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self.input_index, self._to_runtime(x))
        self.interpreter.invoke()
        y = self.interpreter.get_tensor(self.output_index)  # a copy
        if np.issubdtype(y.dtype, np.integer):
            scale, zero = self.output_quant
            y = (y.astype(np.float32) - zero) * scale
        return np.ascontiguousarray(y.transpose(_CHANNELS_LAST)) if self.channels_last else y

    def bind(self, x: np.ndarray):
        interpreter, index, feed = self.interpreter, self.input_index, self._to_runtime(x)

        def run():
            interpreter.set_tensor(index, feed)
            interpreter.invoke()

        return run


class TfliteBackend(Backend):
    runtime = "tflite"
    artifact_suffix = ".tflite"
    formats = ("tflite", "tflite_int8", "tflite_int16x8")
    calibrated = ("tflite_int8", "tflite_int16x8")
    int8_format = "tflite_int8"  # full-integer, recurrent layers unrolled and quantized with the rest

    def convert(self, item: Item, artifact_path: Path) -> None:
        from components.devices.reference import reference_module

        Path(artifact_path).write_bytes(tflite_bytes(item, reference_module(item)))

    def write(self, model, fmt: str, target: Path, calibration: np.ndarray | None) -> None:
        if fmt not in self.formats:
            raise BackendError(f"tflite writes {' or '.join(self.formats)} files only, not {fmt}")
        quantised = fmt in self.calibrated
        Path(target).write_bytes(tflite_bytes(Item(model=model.spec), model, calibration if quantised else None,
                                              activations=_ACTIVATIONS.get(fmt, "int8")))

    def load(self, item: Item, artifact_path: Path | None, threads: int) -> _TfliteRunner:
        if artifact_path is None:
            raise BackendError(f"tflite: item {item.key} has no converted .tflite file to load")
        return _interpreter(Path(artifact_path), threads,
                            channels_last=item.layer is not None and item.layer.kind == "conv1d")

    def load_file(self, path: Path, fmt: str, threads: int) -> _TfliteRunner:
        if fmt not in self.formats:
            raise BackendError(f"tflite loads {' or '.join(self.formats)} files only, not {fmt}")
        return _interpreter(path, threads, channels_last=False)  # whole models take the torch layout

    def version(self) -> str:
        return f"ai-edge-litert {metadata.version('ai-edge-litert')}"


def _interpreter(path: Path, threads: int, channels_last: bool) -> _TfliteRunner:
    from ai_edge_litert.interpreter import Interpreter

    try:
        interpreter = Interpreter(model_path=str(path), num_threads=threads)
        interpreter.allocate_tensors()
    except Exception as exc:  # LiteRT raises ValueError or RuntimeError depending on what is wrong
        raise BackendError(f"tflite cannot load {path.name}: {exc}") from exc
    return _TfliteRunner(interpreter, channels_last)


def graph_memory(path: Path) -> dict:
    """Weights and peak activation bytes of a .tflite file, from its graph (what a microcontroller must hold).

    Constant tensors (read by an operator, written by none, not a graph input)
    are the weights, in flash. An activation lives from the operator that
    writes it (or the start, for the input) to the last one that reads it (or
    the end, for the output); the peak is the most bytes alive at once over
    the operators in execution order, the arena a TFLite Micro planner needs
    at best (kernel scratch buffers not counted). The graph is read without
    delegates, so every operator is seen.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(model_path=str(path),
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    sizes = {t["index"]: int(np.prod(t["shape"])) * np.dtype(t["dtype"]).itemsize
             for t in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()  # the only way LiteRT lists the operators and their tensors
    inputs = {d["index"] for d in interpreter.get_input_details()}
    outputs = {d["index"] for d in interpreter.get_output_details()}
    first = {t: -1 for t in inputs}
    last: dict[int, int] = {}
    for i, op in enumerate(ops):
        for t in op["outputs"]:
            first.setdefault(int(t), i)
        for t in op["inputs"]:
            if t >= 0:
                last[int(t)] = i
    for t in outputs:
        last[t] = len(ops)
    weights = sum(sizes[t] for t in last if t not in first and t in sizes)
    peak = max((sum(sizes[t] for t, start in first.items() if start <= i <= last.get(t, start))
                for i in range(len(ops))), default=0)
    return {"weights_bytes": int(weights), "peak_activation_bytes": int(peak), "operators": len(ops)}
