"""The TFLite backend: every layer kind and every architecture, converted via Keras, matches PyTorch.

Each item is converted once (TensorFlow's import is paid once per test
session, ~6 s; a conversion takes ~0.3-3 s) and run with the LiteRT
interpreter against the torch reference module's output.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from components.devices.base import BackendError, get_backend
from components.devices.reference import example_input, reference_module, run_reference
from components.devices.tflite import TfliteBackend, tflite_bytes
from components.models.deepsense import deepsense_spec
from components.models.plain import cnn_spec, mlp_spec
from components.models.spec import LayerSpec
from components.profiling.items import Item, layer_input_shape
from tests.conftest import PROJECT_ROOT

ATOL, RTOL = 1e-4, 1e-3
CLASSES = ("bike", "sit", "stairsdown", "stairsup", "stand", "walk")
SHAPE_SA = (8, 1, 3, 2, 16)  # 8 intervals, one sensor, 3 axes, real/imaginary, 16 bins
SHAPE_TWO_SENSORS = (4, 2, 3, 2, 10)

LAYERS = {
    "conv1d-k3-s1": LayerSpec("sensor0.conv1", "conv1d", 6, 16, kernel=3, stride=1, length=16, instances=8),
    "conv1d-k5-s2": LayerSpec("sensor0.conv1", "conv1d", 12, 8, kernel=5, stride=2, length=21, instances=3),
    "conv1d-k1-s1": LayerSpec("merge.conv3", "conv1d", 10, 4, kernel=1, stride=1, length=3, instances=4),
    "gru": LayerSpec("rnn1", "gru", 20, 24, length=8),
    "lstm": LayerSpec("rnn1", "lstm", 20, 24, length=8),
    "linear": LayerSpec("output", "linear", 30, 6, instances=3),
}

MODELS = {
    # merge kernels (2, 1, 1) leave 2 positions x 8 channels: the [C, L] flattening order matters
    "deepsense-gru": deepsense_spec(SHAPE_SA, CLASSES, sensor_filters=8, sensor_kernels=(3, 3, 3), first_stride=2,
                                    merge_filters=8, merge_kernels=(2, 1, 1), rnn="gru", rnn_units=12,
                                    rnn_layers=2, dropout=0.2),
    "deepsense-lstm-two-sensors": deepsense_spec(SHAPE_TWO_SENSORS, CLASSES, sensor_filters=6,
                                                 sensor_kernels=(3, 2, 2), first_stride=2, merge_filters=7,
                                                 merge_kernels=(1, 1, 1), rnn="lstm", rnn_units=10, rnn_layers=1,
                                                 dropout=0.2),
    "cnn": cnn_spec(SHAPE_SA, CLASSES, filters=(16, 8), kernel=3, dropout=0.2),
    "mlp": mlp_spec(SHAPE_TWO_SENSORS, CLASSES, units=(32, 16), dropout=0.2),
}


@pytest.fixture(scope="module")
def backend() -> TfliteBackend:
    return TfliteBackend()


@pytest.fixture(scope="module")
def converted(tmp_path_factory, backend):
    """The .tflite file of an item, converted on first use."""
    folder = tmp_path_factory.mktemp("tflite")
    paths = {}

    def convert(item: Item):
        if item.key not in paths:
            paths[item.key] = folder / f"{item.key}{backend.artifact_suffix}"
            backend.convert(item, paths[item.key])
        return paths[item.key]

    return convert


def assert_matches_reference(backend, path, item: Item, x: np.ndarray | None = None) -> np.ndarray:
    x = example_input(item) if x is None else x
    expected = run_reference(item, x)
    got = backend.load(item, path, threads=1).predict(x)
    assert got.shape == expected.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=RTOL)
    return got


@pytest.mark.parametrize("name", list(LAYERS))
def test_each_layer_kind_matches_pytorch(name, backend, converted):
    item = Item(layer=LAYERS[name])
    assert_matches_reference(backend, converted(item), item)


@pytest.mark.parametrize("name", list(MODELS))
def test_each_architecture_matches_pytorch(name, backend, converted):
    item = Item(model=MODELS[name])
    out = assert_matches_reference(backend, converted(item), item)
    assert out.shape == (1, len(CLASSES))


def test_models_standardise_their_input_with_the_stored_statistics(backend, tmp_path):
    item = Item(model=MODELS["deepsense-lstm-two-sensors"])
    module = reference_module(item)
    generator = torch.Generator().manual_seed(3)
    shape = item.model.input_shape
    module.set_input_stats(torch.randn(shape, generator=generator), torch.rand(shape, generator=generator) + 0.5)
    path = tmp_path / "standardised.tflite"
    path.write_bytes(tflite_bytes(item, module))

    x = 3 * example_input(item)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    got = backend.load(item, path, threads=1).predict(x)
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=RTOL)
    assert not np.allclose(got, run_reference(item, x), atol=ATOL, rtol=RTOL)  # the statistics made a difference


def test_bound_call_runs_the_input_transposed_once(backend, converted):
    item = Item(layer=LAYERS["conv1d-k5-s2"])
    runner = backend.load(item, converted(item), threads=2)
    x = example_input(item)
    run = runner.bind(x)
    x[:] = 0  # the bound input is the runtime's own copy
    run()
    channels_last = runner.interpreter.get_tensor(runner.output_index)
    np.testing.assert_allclose(channels_last.transpose(0, 2, 1), run_reference(item, example_input(item)),
                               atol=ATOL, rtol=RTOL)


def test_a_corrupt_or_missing_file_is_a_backend_error(backend, tmp_path):
    item = Item(layer=LAYERS["linear"])
    corrupt = tmp_path / "corrupt.tflite"
    corrupt.write_bytes(b"not a flatbuffer" * 64)
    with pytest.raises(BackendError, match="corrupt.tflite"):
        backend.load(item, corrupt, threads=1)
    with pytest.raises(BackendError, match="missing.tflite"):
        backend.load(item, tmp_path / "missing.tflite", threads=1)
    with pytest.raises(BackendError, match="no converted"):
        backend.load(item, None, threads=1)


def test_running_a_converted_file_needs_no_tensorflow(converted):
    item = Item(layer=LAYERS["gru"])
    code = (
        "import sys, numpy as np\n"
        "from components.devices.base import get_backend\n"
        "from components.profiling.items import Item\n"
        "from components.models.spec import LayerSpec\n"
        f"item = Item(layer=LayerSpec(**{LAYERS['gru'].__dict__!r}))\n"
        f"runner = get_backend('tflite').load(item, {str(converted(item))!r}, threads=1)\n"
        f"assert runner.predict(np.zeros({layer_input_shape(item.layer)!r}, np.float32)).shape == (1, 8, 24)\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'TensorFlow was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr


def test_registry_and_version(backend):
    assert isinstance(get_backend("tflite"), TfliteBackend)
    assert backend.runtime == "tflite" and backend.artifact_suffix == ".tflite"
    assert backend.version().startswith("ai-edge-litert ")
