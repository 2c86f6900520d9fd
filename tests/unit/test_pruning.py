"""Group-consistent slicing: the sliced model computes what the masked model computes, for every layer kind."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from components.devices.reference import randomize_batch_norm
from components.models import build
from components.models.base import run_recurrent
from components.models.deepsense import deepsense_spec
from components.models.plain import cnn_spec, mlp_spec
from components.models.spec import LayerSpec, ModelConfigError
from components.pruning.groups import groups
from components.pruning.masked import set_masks
from components.pruning.slicing import slice_model

CLASSES = ("a", "b", "c", "d")


def _deepsense(rnn: str, sensors: int = 2):
    return deepsense_spec((6, sensors, 3, 2, 12), CLASSES, sensor_filters=10, sensor_kernels=(3, 3), first_stride=1,
                          merge_filters=9, merge_kernels=(3, 2), rnn=rnn, rnn_units=11, rnn_layers=2, dropout=0.3)


SPECS = {
    "deepsense-gru": lambda: _deepsense("gru"),
    "deepsense-lstm": lambda: _deepsense("lstm"),
    "cnn": lambda: cnn_spec((6, 1, 3, 2, 12), CLASSES, filters=(12, 9), kernel=3, dropout=0.2),
    "mlp": lambda: mlp_spec((6, 1, 3, 2, 12), CLASSES, units=(20, 14), dropout=0.2),
}


def _model(spec, seed=0):
    torch.manual_seed(seed)
    model = build(spec)
    randomize_batch_norm(model)
    with torch.no_grad():  # and a non-trivial input scaling
        model.input_mean.uniform_(-0.1, 0.1)
        model.input_std.uniform_(0.8, 1.2)
    return model.eval()


def _random_keep(spec, rng):
    keep = {}
    for group in groups(spec):
        n = int(rng.integers(1, group.size))  # at least one element goes, at least one stays
        keep[group.layer] = np.sort(rng.choice(group.size, n, replace=False))
    return keep


@pytest.mark.parametrize("name", sorted(SPECS))
def test_sliced_model_equals_masked_model(name):
    spec = SPECS[name]()
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.standard_normal((5, *spec.input_shape)).astype(np.float32))
    for trial in range(3):
        model = _model(spec, seed=trial)
        keep = _random_keep(spec, rng)
        masks = {layer: np.isin(np.arange(spec.layer(layer).out_features), idx).astype(np.float32)
                 for layer, idx in keep.items()}
        with torch.no_grad():
            full = model(x)
            set_masks(model, masks)
            masked = model(x)
            set_masks(model, None)
            smaller = slice_model(model, keep)
            sliced = smaller(x)
        torch.testing.assert_close(sliced, masked, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(full, masked)  # the masks did change something
        assert smaller.spec.params < spec.params
        for layer, idx in keep.items():
            assert smaller.spec.layer(layer).out_features == len(idx)
        torch.testing.assert_close(model(x), full)  # masks removed: the original model is untouched


@pytest.mark.parametrize("cell", [nn.GRU, nn.LSTM])
def test_masked_recurrence_with_every_unit_kept_is_torchs_own(cell):
    torch.manual_seed(0)
    rnn = cell(7, 5, batch_first=True)
    x = torch.randn(3, 6, 7)
    with torch.no_grad():
        torch.testing.assert_close(run_recurrent(rnn, x, torch.ones(5)), rnn(x)[0], rtol=1e-5, atol=1e-6)


def test_the_gates_of_a_recurrent_unit_are_sliced_together():
    spec = _deepsense("gru")
    model = _model(spec)
    smaller = slice_model(model, {"rnn1": [0, 4, 7]})
    rnn = smaller.rnns[0]
    assert rnn.hidden_size == 3 and tuple(rnn.weight_ih_l0.shape) == (9, spec.layer("rnn1").in_features)
    assert tuple(rnn.weight_hh_l0.shape) == (9, 3) and tuple(smaller.rnns[1].weight_ih_l0.shape) == (33, 3)
    old = model.rnns[0].weight_hh_l0
    hidden = 11
    for gate in range(3):  # row gate*3 + j is old row gate*11 + kept[j]; columns are the kept units
        torch.testing.assert_close(rnn.weight_hh_l0[gate * 3 + 1], old[gate * hidden + 4, [0, 4, 7]])


def test_pruning_the_classifier_an_empty_layer_or_an_unknown_kind_is_refused():
    spec = SPECS["mlp"]()
    model = _model(spec)
    with pytest.raises(ModelConfigError, match="classes"):
        slice_model(model, {"output": [0, 1]})
    with pytest.raises(ModelConfigError, match="at least one"):
        slice_model(model, {"dense1": []})
    with pytest.raises(ModelConfigError, match="distinct indices below 20"):
        slice_model(model, {"dense1": [3, 20]})
    odd = replace(spec, layers=(LayerSpec("dense1", "attention", 432, 20), *spec.layers[1:]))
    with pytest.raises(ModelConfigError, match="does not know layer kind 'attention'"):
        groups(odd)
    with pytest.raises(ValueError, match="mask of 3 for 20"):
        set_masks(model, {"dense1": [1, 0, 1]})
