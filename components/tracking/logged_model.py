"""What a logged model of a saved model folder loads: the torch model rebuilt from its description and weights.

MLflow executes this file (a "model from code") when a LoggedModel that
components/tracking/lineage.py logged (`models:/m-...`) is loaded with
`mlflow.pyfunc.load_model`; nothing is unpickled. The model's artifacts hold
the folder `components.models.save` wrote (model.json, model.safetensors and
their seal), and `components.models.load` rebuilds it after checking the seal.
`predict` takes windows shaped like ingest's output (one window or a batch)
and returns the logits. The code of `components` travels with the model
(`code_paths`).
"""

from __future__ import annotations

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class SavedModel(PythonModel):
    def load_context(self, context):
        from components import models

        self.model = models.load(context.artifacts["model"])
        self.input_rank = len(self.model.spec.input_shape)

    def predict(self, context, model_input, params=None):
        import torch

        x = np.asarray(model_input, dtype=np.float32)
        if x.ndim == self.input_rank:
            x = x[None]
        with torch.no_grad():
            return self.model(torch.from_numpy(np.ascontiguousarray(x))).numpy()


mlflow.models.set_model(SavedModel())
