"""The exports (ONNX, TFLite) of a model with layers removed whole compute what the torch model computes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from components.devices.base import get_backend
from components.pruning.slicing import slice_model
from tests.unit.test_removed_layers import _deepsense, _keep, _model


@pytest.mark.parametrize("runtime", ["onnxruntime", "tflite"])
def test_exports_of_a_shallower_model_agree_with_it(tmp_path, runtime):
    """The float file of each timed runtime computes what the torch model computes (eval mode)."""
    spec = _deepsense("gru", 2)
    model = _model(spec)
    keep = _keep(spec, np.random.default_rng(5), ["sensor1.conv3", "merge.conv3", "merge.conv2", "rnn2"])
    smaller = slice_model(model, keep).eval()
    backend = get_backend(runtime)
    fmt = backend.formats[0]
    target = tmp_path / f"model.{fmt}"
    backend.write(smaller, fmt, target, None)
    runner = backend.load_file(target, fmt, 1)
    x = np.random.default_rng(1).standard_normal((1, *spec.input_shape)).astype(np.float32)
    with torch.no_grad():
        expected = smaller(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(runner.predict(x), expected, rtol=1e-3, atol=1e-4)
