"""DeepIoT's compressor-critic: the schedule, the critic, the costs and a small run that meets its budget."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from components.devices.base import get_backend
from components.devices.pool import load_pool
from components.latency.model import AnalyticLatencyModel
from components.models import build
from components.models.plain import mlp_spec
from components.models.spec import ModelConfigError
from components.pruning.baselines import l1_keep, nudge_widths, uniform_widths
from components.pruning.costs import ComputedCost, LatencyCost, ParamsCost, resized_spec
from components.pruning.deepiot import (
    Critic,
    DeepIoTSearch,
    Schedule,
    SearchSettings,
    cost_floor,
    layer_costs,
    marginal_costs,
    sample_masks,
)
from components.pruning.finetune import FineTuneSettings, _val_loss, accuracy, fine_tune
from components.pruning.slicing import slice_model
from tests.conftest import PROJECT_ROOT


def test_threshold_rises_on_its_schedule_and_stops_at_its_limit():
    schedule = Schedule(start=0.0, step=0.1, every=50, limit=0.35)
    assert [schedule.threshold(s) for s in (0, 49, 50, 149, 150, 1000)] == pytest.approx([0, 0, 0.1, 0.2, 0.3, 0.35])


def test_critic_is_a_moving_average_baseline():
    critic = Critic(decay=0.9)
    assert critic.update(1.0) == 1.0  # the first reward is its own baseline
    assert critic.update(2.0) == pytest.approx(1.0)
    assert critic.update(0.0) == pytest.approx(0.9 * 1.0 + 0.1 * 2.0)


def test_sampled_masks_keep_removed_elements_off_and_never_empty_a_group():
    generator = torch.Generator().manual_seed(0)
    probs = [torch.tensor([0.9, 0.9, 0.9]), torch.tensor([0.0, 0.0])]
    alive = [torch.tensor([1.0, 0.0, 1.0]), torch.tensor([1.0, 1.0])]
    for _ in range(20):
        first, second = sample_masks(probs, alive, generator)
        assert first[1] == 0 and second.sum() == 1


def _spec():
    return mlp_spec((4, 1, 2, 2, 4), ("a", "b", "c"), units=(48, 32), dropout=0.0)


def test_costs_are_relative_to_the_baseline_and_check_their_device_and_limits():
    spec = _spec()
    params = ParamsCost(spec)
    half = resized_spec(spec, {"dense1": 24, "dense2": 16})
    assert params.relative(spec) == 1.0 and half.layer("dense2").in_features == 24
    assert params.relative(half) == pytest.approx(half.params / spec.params)
    part = load_pool(PROJECT_ROOT / "infra" / "devices.yaml")["cortex-m4"]
    latency = LatencyCost(spec, AnalyticLatencyModel(part), "cortex-m4")
    assert latency.relative(half) < 1.0
    with pytest.raises(ModelConfigError, match="latency model is for device 'cortex-m4', not 'ort-1t'"):
        LatencyCost(spec, AnalyticLatencyModel(part), "ort-1t")
    computed = ComputedCost(spec, get_backend("mcu"), part)
    assert computed.relative(half) == pytest.approx(latency.relative(half))  # the backend's milliseconds
    assert set(computed.describe(half)) == {"macs", "flash_bytes", "peak_sram_bytes", "latency_ms"}
    tiny = part.model_copy(update={"mcu": part.mcu.model_copy(update={"flash_bytes": 1000})})
    assert not ComputedCost(spec, get_backend("mcu"), tiny).fits(spec) and computed.fits(spec)


def _task(n=3000, seed=0):
    """Three classes decided by two of the 64 input values: most hidden units are not needed."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 4, 1, 2, 2, 4)).astype(np.float32)
    flat = x.reshape(n, -1)
    y = (flat[:, 0] > 0).astype(np.int64) + (flat[:, 5] > 0.5).astype(np.int64)
    return torch.from_numpy(x), torch.from_numpy(y)


def test_a_small_search_meets_its_parameter_budget_above_the_accuracy_floor():
    torch.manual_seed(0)
    model = build(_spec())
    x, y = _task()
    settings = SearchSettings(budget=0.3, accuracy_floor=0.8, lambda_cost=2.0, critic_decay=0.9,
                              schedule=Schedule(0.0, 0.05, 40, 0.5), max_steps=1500, batch_size=64,
                              learning_rate=0.003, compressor_learning_rate=0.01, compressor_hidden=16,
                              init_keep=0.9, eval_every=20, seed=0)
    search = DeepIoTSearch(model, ParamsCost(model.spec), x[:2400], y[:2400], x[2400:], y[2400:], settings)
    history = search.run()
    last = history[-1]
    assert search.done(last), (last, len(history))
    assert last.kept_cost <= 0.3 and last.accuracy >= 0.8
    assert history[0].kept_cost == 1.0 and last.step < settings.max_steps


def test_l1_pruning_meets_the_budget_and_keeps_the_largest_weights():
    torch.manual_seed(0)
    model = build(_spec())
    with torch.no_grad():
        model.hidden[0][0].weight[7].mul_(100)  # one dense1 unit with by far the largest weights
    keep = l1_keep(model, ParamsCost(model.spec), 0.25)
    kept_spec = resized_spec(model.spec, {k: len(v) for k, v in keep.items()})
    assert ParamsCost(model.spec).relative(kept_spec) <= 0.25
    assert 7 in keep["dense1"].tolist() and all(len(v) >= 1 for v in keep.values())


def test_uniform_scaling_is_the_widest_that_meets_the_budget():
    spec = _spec()
    cost = ParamsCost(spec)
    widths = uniform_widths(spec, cost, 0.25)
    assert cost.relative(resized_spec(spec, widths)) <= 0.25
    wider = {k: v + 1 for k, v in widths.items()}
    assert cost.relative(resized_spec(spec, wider)) > 0.25
    assert widths["dense1"] / 48 == pytest.approx(widths["dense2"] / 32, abs=0.05)


class _StepLatency:
    """A latency model with FastDeepIoT's shape: widths that are multiples of 8 are fast."""

    device = "test"

    def predict_model(self, spec):
        return sum(layer.out_features * (1.0 if layer.out_features % 8 == 0 else 1.5) for layer in spec.layers)


def test_nudge_moves_widths_up_to_a_faster_multiple_only_within_its_radius():
    spec = _spec()
    cost = LatencyCost(spec, _StepLatency(), "test")
    nudged = nudge_widths(spec, {"dense1": 13, "dense2": 21}, cost, radius=3)
    assert nudged == {"dense1": 16, "dense2": 24}  # 13 -> 16 (16 < 13 * 1.5), 21 -> 24
    assert nudge_widths(spec, {"dense1": 9, "dense2": 21}, cost, radius=3)["dense1"] == 9  # 16 is out of reach
    assert cost.value(resized_spec(spec, nudged)) < cost.value(resized_spec(spec, {"dense1": 13, "dense2": 21}))


def test_fine_tuning_keeps_the_best_validation_weights_and_can_distill_the_baseline():
    torch.manual_seed(0)
    teacher = build(_spec())
    x, y = _task()
    tuned, _ = fine_tune(teacher, x[:2400], y[:2400], x[2400:], y[2400:],
                         FineTuneSettings(epochs=8, patience=3, batch_size=64, learning_rate=0.003, distill=0.0,
                                          temperature=1.0, seed=0))
    assert accuracy(tuned, x[2400:], y[2400:]) > 0.85
    student = slice_model(tuned, {"dense1": list(range(0, 48, 3)), "dense2": list(range(0, 32, 2))})
    before = _val_loss(student, x[2400:], y[2400:])
    settings = FineTuneSettings(epochs=5, patience=2, batch_size=64, learning_rate=0.003, distill=0.5,
                                temperature=2.0, seed=0)
    student, epochs = fine_tune(student, x[:2400], y[:2400], x[2400:], y[2400:], settings, teacher=tuned)
    assert 1 <= epochs <= 5 and _val_loss(student, x[2400:], y[2400:]) <= before
    with pytest.raises(ValueError, match="teacher"):
        fine_tune(student, x[:100], y[:100], x[100:200], y[100:200], settings)


def test_an_interrupted_search_resumes_from_its_checkpoint_and_ends_where_an_uninterrupted_one_does(tmp_path):
    x, y = _task(n=800)
    settings = SearchSettings(budget=0.05, accuracy_floor=0.99, lambda_cost=2.0, critic_decay=0.9,
                              schedule=Schedule(0.0, 0.05, 10, 0.5), max_steps=60, batch_size=32,
                              learning_rate=0.003, compressor_learning_rate=0.01, compressor_hidden=8,
                              init_keep=0.9, eval_every=10, seed=0)

    def search():
        torch.manual_seed(0)
        model = build(_spec())
        return DeepIoTSearch(model, ParamsCost(model.spec), x[:600], y[:600], x[600:], y[600:], settings)

    straight = search()
    straight.run()
    first = search()
    first.s = replace(settings, max_steps=30)  # "interrupted" after step 30, its checkpoint on disk
    first.run(checkpoint=lambda state: torch.save(state, tmp_path / "checkpoint.pt"), checkpoint_every=10)
    resumed = search()
    resumed.restore(torch.load(tmp_path / "checkpoint.pt", weights_only=True))
    assert resumed.step_index == 30 and len(resumed.history) == 30
    resumed.run()
    assert [r.kept_cost for r in resumed.history] == [r.kept_cost for r in straight.history]
    assert all(torch.equal(a, b) for a, b in zip(resumed.alive, straight.alive))


class _OneLayerLatency:
    """A latency model where only dense1's units cost time (1 ms each) on top of a fixed 10 ms."""

    device = "test"

    def predict_model(self, spec):
        return 10.0 + spec.layer("dense1").out_features


def test_marginal_costs_charge_each_group_its_own_price_and_never_reward_keeping():
    spec = _spec()
    params = ParamsCost(spec)
    charges = dict(zip(["dense1", "dense2"], marginal_costs(params, spec, {"dense1": 48, "dense2": 32})))
    # a dense1 unit feeds from 64 inputs and into 32 units; a dense2 unit from 48 and into 3 outputs
    assert charges["dense1"] == pytest.approx((64 + 1 + 32) / spec.params, rel=0.01)
    assert charges["dense2"] == pytest.approx((48 + 1 + 3) / spec.params, rel=0.01)
    latency = LatencyCost(spec, _OneLayerLatency(), "test")
    one_layer = marginal_costs(latency, spec, {"dense1": 48, "dense2": 32})
    assert one_layer[0] == pytest.approx(1 / 58) and one_layer[1] == 0.0
    assert cost_floor(latency, spec) == pytest.approx(11 / 58)  # one unit left: the fixed 10 ms stay


def _steered(cost_of, budget: float):
    torch.manual_seed(0)
    model = build(_spec())
    x, y = _task(n=1200)
    settings = SearchSettings(budget=budget, accuracy_floor=0.0, lambda_cost=2.0, critic_decay=0.9,
                              schedule=Schedule(0.0, 0.05, 20, 0.5), max_steps=400, batch_size=64,
                              learning_rate=0.003, compressor_learning_rate=0.01, compressor_hidden=8,
                              init_keep=0.9, eval_every=20, seed=0)
    search = DeepIoTSearch(model, cost_of(model.spec), x[:1000], y[:1000], x[1000:], y[1000:], settings)
    search.run()
    return search


def test_the_latency_model_steers_pruning_to_the_layers_that_cost_time():
    by_latency = _steered(lambda spec: LatencyCost(spec, _OneLayerLatency(), "test"), budget=0.5)
    kept = {name: len(v) for name, v in by_latency.kept().items()}
    assert by_latency.kept_cost() <= 0.5
    assert kept["dense1"] <= 19 and kept["dense2"] >= 30  # only dense1 costs time: dense2 is left (nearly) whole


def test_pruning_stops_at_the_budget_and_then_only_trains_the_kept_structure():
    search = _steered(ParamsCost, budget=0.5)
    reached = next(r.step for r in search.history if r.kept_cost <= 0.5)
    after = [r for r in search.history if r.step >= reached]
    assert all(r.kept_cost == after[0].kept_cost for r in after)  # nothing removed past the budget
    assert after[0].kept_cost > 0.4  # removal stopped at the budget, did not overshoot it
    assert all(r.sampled_cost == r.kept_cost for r in after[1:])  # trained on the kept structure, no sampling


class _FixedPerLayerLatency:
    """A runtime where every layer that runs costs a fixed 5 ms, plus 0.1 ms per hidden unit."""

    device = "test"

    def predict_model(self, spec):
        return 5.0 * len(spec.computing) + 0.1 * sum(layer.out_features for layer in spec.computing
                                                     if layer.name != "output")


def _layered_search(remove_layers: bool, budget: float = 0.65):
    """A fresh MLP, two hidden layers of 32, on the toy task, steered by `_FixedPerLayerLatency`."""
    torch.manual_seed(0)
    model = build(mlp_spec((4, 1, 2, 2, 4), ("a", "b", "c"), units=(32, 32), dropout=0.0))
    x, y = _task(n=1600)
    settings = SearchSettings(budget=budget, accuracy_floor=0.8, lambda_cost=2.0, critic_decay=0.9,
                              schedule=Schedule(0.0, 0.05, 20, 0.6), max_steps=1500, batch_size=64,
                              learning_rate=0.003, compressor_learning_rate=0.01, compressor_hidden=8,
                              init_keep=0.9, eval_every=20, seed=0, remove_layers=remove_layers)
    return DeepIoTSearch(model, LatencyCost(model.spec, _FixedPerLayerLatency(), "test"), x[:1200], y[:1200],
                         x[1200:], y[1200:], settings)


def test_a_layer_whose_fixed_cost_outweighs_it_is_removed_whole_and_the_sliced_model_matches(caplog):
    """Full: 3 x 5 ms + 6.4 ms; one unit per layer still costs 15.2 ms (0.71 of it): only removing dense2 reaches
    the budget of 0.65, and the search finds it (the validation users confirming it adds little), above the
    accuracy floor; the sliced model is the masked one."""
    caplog.set_level("INFO", logger="components.pruning.deepiot")
    assert _layered_search(False).cost_floor > 0.65  # widths alone cannot get there
    search = _layered_search(True)
    assert search.removable == ["dense2"] and search.cost_floor < 0.5
    history = search.run()
    assert search.done(history[-1]), history[-1]
    kept = search.kept()
    assert len(kept["dense2"]) == 0 and len(kept["dense1"]) >= 1
    assert search.kept_spec().removed == ("dense2",)
    assert "layer dense2 removed whole (validation accuracy" in caplog.text
    sliced = slice_model(search.model, kept).eval()
    assert sliced.spec.removed == ("dense2",)
    assert accuracy(sliced, search.x_val, search.y_val) == pytest.approx(search.accuracy(), abs=1e-9)


def test_a_layer_gate_is_charged_what_the_layer_costs_whole_fixed_cost_included():
    spec = mlp_spec((4, 1, 2, 2, 4), ("a", "b", "c"), units=(32, 32), dropout=0.0)
    fixed = LatencyCost(spec, _FixedPerLayerLatency(), "test")
    base = 3 * 5.0 + 0.1 * 64
    assert layer_costs(fixed, spec, {"dense1": 32, "dense2": 10}, ["dense2"]) == [pytest.approx((5.0 + 1.0) / base)]
    # removed in this sample: priced at one element, never at nothing
    assert layer_costs(fixed, spec, {"dense1": 32, "dense2": 0}, ["dense2"]) == [pytest.approx((5.0 + 0.1) / base)]
    # where only dense1's units cost time, removing dense2 saves nothing and its gate is not pushed
    assert layer_costs(LatencyCost(spec, _OneLayerLatency(), "test"), spec, {"dense1": 32, "dense2": 10},
                       ["dense2"]) == [0.0]
    assert cost_floor(fixed, spec, ["dense2"]) == pytest.approx((2 * 5.0 + 0.1) / base)


def test_a_layer_the_validation_users_need_is_kept_whatever_its_cost(caplog):
    """The cost says go (the gate far under the threshold), but the trained network reads dense2's features:
    without it the validation accuracy falls by more than GATE_TOLERANCE, so the layer stays and its gate goes
    back to where it started."""
    caplog.set_level("INFO", logger="components.pruning.deepiot")
    search = _layered_search(True)
    model = search.model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    generator = torch.Generator().manual_seed(0)
    for _ in range(300):  # the network as the search finds it: trained, every layer in use
        batch = torch.randint(len(search.x_train), (64,), generator=generator)
        loss = torch.nn.functional.cross_entropy(model(search.x_train[batch]), search.y_train[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        search.gates.logits.fill_(-5.0)
    search._remove_below(0.5)
    assert search.gates_alive[0] == 1.0 and len(search.kept()["dense2"]) == 32
    assert "layer dense2 kept: validation accuracy" in caplog.text
    assert float(search.gates()[0]) == pytest.approx(0.9)
