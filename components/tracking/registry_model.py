"""The model a registered version loads: the device's deployed file, run by the device's runtime.

MLflow executes this file (a "model from code") when `models:/<name>@<alias>`
is loaded with `mlflow.pyfunc.load_model`; nothing is unpickled. The version's
artifacts hold the deployed file (ONNX, TFLite or the torch safetensors), and
its `model_config` names the format, the runtime that loads it and the file's
sha256, which is checked before the file is loaded. `predict` takes windows
shaped like ingest's output (one window or a batch) and returns the logits.
The code of `components` travels with the model (`code_paths`).
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class DeviceModel(PythonModel):
    def load_context(self, context):
        from components.artifacts.seals import verify
        from components.devices.base import get_backend

        config = context.model_config
        path = Path(context.artifacts["deployed"])
        verify(path, config["sha256"])
        self.input_rank = len(config["input_shape"])
        self.runner = get_backend(config["runtime"]).load_file(path, config["format"], 1)

    def predict(self, context, model_input, params=None):
        x = np.asarray(model_input, dtype=np.float32)
        if x.ndim == self.input_rank:
            x = x[None]
        return np.concatenate([self.runner.predict(np.ascontiguousarray(x[i : i + 1])) for i in range(len(x))])


mlflow.models.set_model(DeviceModel())
