"""Removing a layer whole: which may go, and the shallower model computes what the masked search model computes.

A removed layer is a `BYPASS`: its reader reads what it read, cut to the
length it made. The search signals a removal by keeping none of a layer's
elements; the sliced model then has the layer as a bypass, with every other
layer's kept rows and columns. (Its exports: tests/stage/test_removed_layer_exports.py.)
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from components.devices.reference import randomize_batch_norm
from components.models import ModelSpec, build, load, save
from components.models.deepsense import deepsense_spec, removable_layers
from components.models.plain import cnn_spec, mlp_spec
from components.models.spec import BYPASS, ModelConfigError
from components.pruning.costs import resized_spec
from components.pruning.groups import groups, removable
from components.pruning.masked import set_masks
from components.pruning.slicing import slice_model

CLASSES = ("a", "b", "c", "d")


def _deepsense(rnn: str = "gru", rnn_layers: int = 3):
    return deepsense_spec((6, 2, 3, 2, 16), CLASSES, sensor_filters=8, sensor_kernels=(3, 3, 3), first_stride=1,
                          merge_filters=7, merge_kernels=(3, 3, 3), rnn=rnn, rnn_units=9, rnn_layers=rnn_layers,
                          dropout=0.3)


SPECS = {
    "deepsense-gru": _deepsense,
    "deepsense-lstm": lambda: _deepsense("lstm", 2),
    "cnn": lambda: cnn_spec((8, 1, 3, 2, 4), CLASSES, filters=(12, 12, 12), kernel=3, dropout=0.2),
    "mlp": lambda: mlp_spec((6, 1, 3, 2, 4), CLASSES, units=(20, 20, 14), dropout=0.2),
}
# what each may lose whole: the layers reading as many features as they give, never the first of a stack
REMOVABLE = {
    "deepsense-gru": ["sensor0.conv2", "sensor0.conv3", "sensor1.conv2", "sensor1.conv3", "merge.conv2",
                      "merge.conv3", "rnn2", "rnn3"],
    "deepsense-lstm": ["sensor0.conv2", "sensor0.conv3", "sensor1.conv2", "sensor1.conv3", "merge.conv2",
                       "merge.conv3", "rnn2"],
    "cnn": ["conv2", "conv3"],
    "mlp": ["dense2"],
}


def _model(spec, seed=0):
    torch.manual_seed(seed)
    model = build(spec)
    randomize_batch_norm(model)
    with torch.no_grad():
        model.input_mean.uniform_(-0.1, 0.1)
        model.input_std.uniform_(0.8, 1.2)
    return model.eval()


def _keep(spec, rng, removed):
    keep = {}
    for group in groups(spec):
        n = int(rng.integers(1, group.size))
        keep[group.layer] = [] if group.layer in removed else np.sort(rng.choice(group.size, n, replace=False))
    return keep


def _masks(spec, keep):
    return {layer: np.isin(np.arange(spec.layer(layer).out_features), idx).astype(np.float32)
            for layer, idx in keep.items()}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_removable_layers_are_those_passing_on_their_width(name):
    assert removable(SPECS[name]()) == REMOVABLE[name]
    if name.startswith("deepsense"):  # the architecture's own list (the profile sampler's) says the same
        assert removable_layers(SPECS[name]()) == REMOVABLE[name]


@pytest.mark.parametrize("name", sorted(SPECS))
def test_sliced_shallower_model_equals_the_masked_model(name):
    """Every removable layer alone, then several together (a whole stack's tail, chains of removed layers)."""
    spec = SPECS[name]()
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.standard_normal((5, *spec.input_shape)).astype(np.float32))
    choices = [[layer] for layer in REMOVABLE[name]] + [REMOVABLE[name], REMOVABLE[name][::2]]
    for trial, removed in enumerate(choices):
        model = _model(spec, seed=trial)
        keep = _keep(spec, rng, removed)
        with torch.no_grad():
            full = model(x)
            set_masks(model, _masks(spec, keep))
            masked = model(x)
            set_masks(model, None)
            smaller = slice_model(model, keep)
            sliced = smaller(x)
        torch.testing.assert_close(sliced, masked, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(full, masked)
        assert set(smaller.spec.removed) == set(removed)
        assert smaller.spec.params < spec.params
        torch.testing.assert_close(model(x), full)  # the search model itself is untouched


def test_a_shallower_description_keeps_every_later_shape_and_costs_nothing_for_what_went():
    spec = _deepsense()
    widths = {g.layer: g.size for g in groups(spec)}
    shallower = resized_spec(spec, {**widths, "merge.conv2": 0, "rnn2": 0, "sensor1.conv3": 0})
    assert shallower.removed == ("sensor1.conv3", "merge.conv2", "rnn2")
    for before, after in zip(spec.layers, shallower.layers):
        assert after.out_length == before.out_length  # the bypass cuts what the convolution cut
        if after.kind == BYPASS:
            assert after.params == after.macs == 0 and after.in_features == after.out_features
    assert shallower.layer("rnn1").in_features == spec.layer("rnn1").in_features
    assert len(shallower.computing) == len(spec.layers) - 3
    assert spec.params - shallower.params == sum(spec.layer(n).params for n in ("sensor1.conv3", "merge.conv2",
                                                                                 "rnn2"))
    assert ModelSpec.from_json(shallower.to_json()) == shallower


def test_removing_a_layer_that_cannot_go_is_refused_naming_it():
    spec = _deepsense()
    model = _model(spec)
    with pytest.raises(ModelConfigError, match="sensor0.conv1: cannot be removed whole"):
        slice_model(model, {"sensor0.conv1": []})
    with pytest.raises(ModelConfigError, match="merge.conv1: cannot be removed whole"):
        resized_spec(spec, {"merge.conv1": 0})
    with pytest.raises(ModelConfigError, match="rnn1"):
        resized_spec(spec, {"rnn1": 0})


def test_a_shallower_model_saves_and_loads(tmp_path):
    spec = _deepsense()
    model = _model(spec)
    keep = _keep(spec, np.random.default_rng(0), ["merge.conv3", "rnn3", "sensor0.conv2"])
    smaller = slice_model(model, keep).eval()
    save(smaller, tmp_path / "m")
    again = load(tmp_path / "m")
    x = torch.randn(3, *spec.input_shape)
    with torch.no_grad():
        torch.testing.assert_close(again(x), smaller(x))


def test_the_cost_models_charge_nothing_for_a_removed_layer():
    """Parameters, MACs, the microcontroller's flash and its per-layer overhead all fall with the layer."""
    from components.devices.mcu import model_resources
    from components.devices.pool import McuSpec

    spec = _deepsense()
    shallower = resized_spec(spec, {"merge.conv3": 0, "rnn3": 0})
    mcu = McuSpec(clock_hz=80_000_000, flash_bytes=1 << 20, sram_bytes=1 << 18, cycles_per_mac=1.0,
                  layer_overhead_cycles=5000, weight_bytes=1, bias_bytes=4, activation_bytes=2)
    full, less = model_resources(spec, mcu), model_resources(shallower, mcu)
    assert less["macs"] == spec.macs - spec.layer("merge.conv3").macs - spec.layer("rnn3").macs
    assert less["flash_bytes"] < full["flash_bytes"]
    overhead_ms = 2 * 5000.0 / 80e6 * 1000
    assert less["latency_ms"] == pytest.approx(full["latency_ms"] - overhead_ms
                                               - (spec.macs - shallower.macs) / 80e6 * 1000)


def test_a_latency_model_predicts_a_shallower_model_without_the_removed_layers_time():
    from components.latency.model import KindModel, LatencyModel, Overhead
    from components.latency.tree import LinearTree

    spec = _deepsense()

    def constant(ms):  # every layer of the kind takes `ms`: the fixed per-layer cost a removal saves
        return KindModel(LinearTree([], ["macs"], [{"leaf": {"weights": [0.0], "intercept": ms, "rows": 1}}]))

    model = LatencyModel("d", "onnxruntime", {"conv1d": constant(0.5), "gru": constant(2.0), "linear": constant(0.1)},
                         Overhead("scale", scale=1.0, offset=0.0))
    shallower = resized_spec(spec, {"merge.conv3": 0, "sensor0.conv2": 0, "rnn3": 0})
    assert model.predict_model(spec) - model.predict_model(shallower) == pytest.approx(0.5 + 0.5 + 2.0)
    assert model.predict(shallower.layer("rnn3")) == 0.0
