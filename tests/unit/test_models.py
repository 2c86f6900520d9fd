"""Models: built from a description, described back, saved and loaded without pickles."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from components import models
from components.artifacts.seals import DamagedArtifact, seal
from components.config import load_params
from components.models.spec import LayerSpec, ModelConfigError, ModelSpec
from tests.conftest import PROJECT_ROOT

SHAPE_SA = (8, 1, 3, 2, 16)  # HHAR_SA: 8 intervals, accelerometer only, 16 bins
SHAPE_RAW = (20, 2, 3, 2, 10)  # raw HHAR with DeepSense's tau/T: accelerometer + gyroscope, 10 bins
CLASSES = ("bike", "sit", "stairsdown", "stairsup", "stand", "walk")


def spec_for(arch: str, shape=SHAPE_SA, *overrides: str) -> ModelSpec:
    params = load_params(PROJECT_ROOT / "params.yaml", list(overrides))
    return models.spec_from_params(arch, params.train, shape, CLASSES)


@pytest.mark.parametrize("arch", ["deepsense", "cnn", "mlp"])
def test_every_architecture_builds_runs_and_counts_its_parameters(arch):
    spec = spec_for(arch)
    model = models.build(spec)
    out = model(torch.randn(3, *SHAPE_SA))
    assert out.shape == (3, len(CLASSES))
    assert spec.params == sum(p.numel() for p in model.parameters())
    assert spec.macs > 0 and all(layer.kind in ("conv1d", "gru", "lstm", "linear") for layer in spec.layers)


def test_deepsense_follows_the_papers_structure():
    spec = spec_for("deepsense")
    names = [layer.name for layer in spec.layers]
    assert names == ["sensor0.conv1", "sensor0.conv2", "sensor0.conv3", "merge.conv1", "merge.conv2", "merge.conv3",
                     "rnn1", "rnn2", "output"]
    assert spec.layer("sensor0.conv1").in_features == 6  # 3 axes x (real, imaginary)
    assert {spec.layer(n).out_features for n in names[:6]} == {64}
    assert spec.layer("rnn1").kind == "gru" and spec.layer("rnn2").out_features == 120
    assert spec.layer("sensor0.conv1").instances == 8  # runs once per interval


def test_deepsense_on_the_nightly_data_set_has_a_stack_per_sensor():
    from components.data.shape import input_shape

    params = load_params(PROJECT_ROOT / "params.yaml")
    shape = input_shape(params)
    assert shape == (8, 2, 3, 2, 16)  # UCI HAPT: accelerometer + gyroscope, 8 intervals of 16 bins
    spec = models.spec_from_params("deepsense", params.train, shape, CLASSES)
    assert [layer.name for layer in spec.layers][:6] == [
        "sensor0.conv1", "sensor0.conv2", "sensor0.conv3", "sensor1.conv1", "sensor1.conv2", "sensor1.conv3"]
    assert spec.layer("merge.conv1").in_features == 2 * 64 and spec.layer("rnn1").in_features == 64 * 4
    model = models.build(spec).eval()
    x = torch.randn(2, *shape)
    moved = x.clone()
    moved[:, :, 1] += 1.0  # the gyroscope only
    with torch.no_grad():
        acc_stack = model.sensor_convs[0]
        assert torch.equal(acc_stack(x[:, :, 0].reshape(16, 6, 16)), acc_stack(moved[:, :, 0].reshape(16, 6, 16)))
        assert not torch.allclose(model(x), model(moved))  # ... yet the output sees it


def test_two_sensor_variant_with_lstm_for_raw_hhar():
    spec = spec_for("deepsense", SHAPE_RAW, "train.deepsense.sensor_kernels=[2, 2, 2]",
                    "train.deepsense.merge_kernels=[2, 2, 2]", "train.deepsense.rnn=lstm")
    assert [layer.name for layer in spec.layers][:6] == [
        "sensor0.conv1", "sensor0.conv2", "sensor0.conv3", "sensor1.conv1", "sensor1.conv2", "sensor1.conv3"]
    assert spec.layer("merge.conv1").in_features == 128  # both sensors' filters, stacked
    model = models.build(spec)
    assert isinstance(model.rnns[0], torch.nn.LSTM)
    assert model(torch.randn(2, *SHAPE_RAW)).shape == (2, 6)


def test_averaging_over_real_intervals_ignores_padding():
    torch.manual_seed(0)
    model = models.build(spec_for("deepsense")).eval()
    x = torch.randn(1, *SHAPE_SA)
    padded = x.clone()
    padded[:, 5:] = 100.0  # garbage after the 5 real intervals
    lengths = torch.tensor([5])
    a, b = model(x, lengths), model(padded, lengths)
    torch.testing.assert_close(a, b)  # a GRU never looks ahead, so padding after the end changes nothing
    assert not torch.allclose(model(x), model(padded))


def test_a_narrower_description_builds_a_smaller_dense_model():
    spec = spec_for("deepsense")
    layers = list(spec.layers)
    layers[0] = dataclasses.replace(layers[0], out_features=17)
    layers[1] = dataclasses.replace(layers[1], in_features=17)
    small = spec.with_layers(layers)
    model = models.build(small)
    assert model.sensor_convs[0][0][0].weight.shape == (17, 6, 3)
    assert small.params < spec.params and small.params == sum(p.numel() for p in model.parameters())


def test_save_and_load_round_trip_is_exact_and_pickle_free(tmp_path):
    torch.manual_seed(1)
    model = models.build(spec_for("deepsense")).eval()
    model.set_input_stats(torch.full(SHAPE_SA, 0.5), torch.full(SHAPE_SA, 2.0))
    models.save(model, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["checksums.json", "model.json", "model.safetensors"]
    assert (tmp_path / "m" / "model.safetensors").read_bytes()[:8] != b"PK\x03\x04"  # not a torch zip pickle
    loaded = models.load(tmp_path / "m")
    x = torch.randn(4, *SHAPE_SA)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert loaded.spec == model.spec


def test_loading_weights_that_do_not_match_the_description_fails(tmp_path):
    models.save(models.build(spec_for("mlp")), tmp_path / "m")
    text = (tmp_path / "m" / "model.json").read_text().replace('"out_features": 256', '"out_features": 255', 1)
    (tmp_path / "m" / "model.json").write_text(text)
    with pytest.raises(DamagedArtifact, match=r"model\.json: sha256 .*changed or damaged since"):
        models.load(tmp_path / "m")
    seal(tmp_path / "m", ["model.json", "model.safetensors"])  # as if its stage had written them so
    with pytest.raises(DamagedArtifact, match=r"model\.safetensors: its weights do not match model\.json"):
        models.load(tmp_path / "m")


@pytest.mark.parametrize("override, message", [
    ("train.deepsense.sensor_filters=0", r"sensor0\.conv1: 6 -> 0 units"),
    ("train.deepsense.rnn_units=0", r"rnn1: .* -> 0 units"),
    ("train.deepsense.merge_kernels=[3, 3, 9]", r"merge\.conv3: kernel 9 is longer than its input \(6 "),
    ("train.deepsense.sensor_kernels=[17, 3, 3]", r"sensor0\.conv1: kernel 17 is longer than its input \(16 "),
    ("train.mlp.units=[0]", r"dense1: .* -> 0 units"),
])
def test_impossible_configs_fail_before_any_training(override, message):
    arch = override.split(".")[1]
    with pytest.raises(ModelConfigError, match=message):
        spec_for(arch, SHAPE_SA, override)


def test_layer_spec_counts_match_torch_for_each_kind():
    for layer, module in [
        (LayerSpec("c", "conv1d", 6, 10, 3, 1, 16), torch.nn.Sequential(torch.nn.Conv1d(6, 10, 3),
                                                                        torch.nn.BatchNorm1d(10))),
        (LayerSpec("g", "gru", 20, 30, length=8), torch.nn.GRU(20, 30)),
        (LayerSpec("l", "lstm", 20, 30, length=8), torch.nn.LSTM(20, 30)),
        (LayerSpec("d", "linear", 20, 30), torch.nn.Linear(20, 30)),
    ]:
        assert layer.params == sum(p.numel() for p in module.parameters()), layer.kind
    assert LayerSpec("c", "conv1d", 6, 10, 3, 1, 16, instances=8).macs == 8 * 10 * 14 * 6 * 3
    assert np.isclose(LayerSpec("g", "gru", 20, 30, length=8).macs, 8 * 3 * (30 * 20 + 30 * 30))
