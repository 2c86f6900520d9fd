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


def tflite_bytes(item: Item, module) -> bytes:
    """The float32 TFLite flatbuffer of `module`, the item's eval-mode torch module."""
    with _quiet_tensorflow():
        import tensorflow as tf

        from components.devices.keras_build import keras_model

        try:
            model = keras_model(item, module)
        except ValueError as exc:
            raise BackendError(f"tflite: cannot rebuild {item.kind} item {item.key} in Keras: {exc}") from exc
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        converter.optimizations = []  # float32 as trained: no quantisation
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # LiteRT runs no TF (Flex) ops
        try:
            return converter.convert()
        except Exception as exc:  # the converter raises its own ConverterError and others
            raise BackendError(f"tflite: converting {item.kind} item {item.key} failed: {exc}") from exc


class _TfliteRunner:
    def __init__(self, interpreter, channels_last: bool):
        self.interpreter = interpreter
        self.input_index = interpreter.get_input_details()[0]["index"]
        self.output_index = interpreter.get_output_details()[0]["index"]
        self.channels_last = channels_last

    def _to_runtime(self, x: np.ndarray) -> np.ndarray:
        if self.channels_last:
            x = x.transpose(_CHANNELS_LAST)
        return np.ascontiguousarray(x, dtype=np.float32)

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self.input_index, self._to_runtime(x))
        self.interpreter.invoke()
        y = self.interpreter.get_tensor(self.output_index)  # a copy
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

    def convert(self, item: Item, artifact_path: Path) -> None:
        from components.devices.reference import reference_module

        Path(artifact_path).write_bytes(tflite_bytes(item, reference_module(item)))

    def load(self, item: Item, artifact_path: Path | None, threads: int) -> _TfliteRunner:
        from ai_edge_litert.interpreter import Interpreter

        if artifact_path is None:
            raise BackendError(f"tflite: item {item.key} has no converted .tflite file to load")
        try:
            interpreter = Interpreter(model_path=str(artifact_path), num_threads=threads)
            interpreter.allocate_tensors()
        except Exception as exc:  # LiteRT raises ValueError or RuntimeError depending on what is wrong
            raise BackendError(f"tflite cannot load {Path(artifact_path).name}: {exc}") from exc
        return _TfliteRunner(interpreter, channels_last=item.layer is not None and item.layer.kind == "conv1d")

    def version(self) -> str:
        return f"ai-edge-litert {metadata.version('ai-edge-litert')}"
