"""Compression that measures what it picks: the front, distillation while searching, swapping the cost,
the floor said up front, the measured selection and the candidate refit loop."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from components.devices.pool import chosen
from components.models import build
from components.models.plain import mlp_spec
from components.pruning.costs import ParamsCost, resized_spec
from components.pruning.deepiot import (
    Candidate,
    DeepIoTSearch,
    Schedule,
    SearchSettings,
    front,
)
from components.pruning.floor import floor_check
from components.pruning.selection import select
from tests.unit.test_deepiot import _spec, _task


def _settings(**kw):
    base = dict(budget=0.3, accuracy_floor=0.0, lambda_cost=2.0, critic_decay=0.9,
                schedule=Schedule(0.0, 0.1, 10, 0.6), max_steps=120, batch_size=64, learning_rate=0.003,
                compressor_learning_rate=0.02, compressor_hidden=16, init_keep=0.9, eval_every=10, seed=0)
    return SearchSettings(**(base | kw))


def _search(cost_of=ParamsCost, **kw):
    torch.manual_seed(0)
    model = build(_spec())
    x, y = _task(1600)
    teacher = build(_spec()) if kw.get("distill") else None
    return DeepIoTSearch(model, cost_of(model.spec), x[:1200], y[:1200], x[1200:], y[1200:], _settings(**kw),
                         teacher=teacher)


def _candidate(step, cost, accuracy, width):
    return Candidate(step, {"dense1": list(range(width))}, cost, accuracy, width)


def test_the_front_keeps_only_candidates_no_other_beats_on_cost_and_accuracy():
    cands = [_candidate(10, 0.8, 0.90, 40), _candidate(20, 0.5, 0.92, 30), _candidate(30, 0.3, 0.85, 20),
             _candidate(40, 0.3, 0.80, 19), _candidate(50, 0.2, 0.70, 10)]
    assert [c.step for c in front(cands)] == [50, 30, 20]  # cheapest first; 10 and 40 are beaten
    # a structure met twice counts once, with its later accuracy
    again = _candidate(60, 0.3, 0.95, 20)
    assert [c.step for c in front([*cands, again])] == [50, 60]


def test_the_search_distills_the_teacher_and_records_its_candidates():
    with pytest.raises(ValueError, match="needs the baseline as teacher"):
        DeepIoTSearch(build(_spec()), ParamsCost(_spec()), *_task()[:2], *_task()[:2], _settings(distill=0.5))
    search = _search(distill=0.5)
    search.run()
    assert search.candidates and all(c.step % 10 == 0 for c in search.candidates)
    assert search.candidates[-1].widths == {k: len(v) for k, v in search.kept().items()}
    assert search.front()[0].cost == min(c.cost for c in search.candidates)
    state = search.state()  # candidates survive a checkpoint
    again = _search(distill=0.5)
    again.restore(state)
    assert [c.kept for c in again.candidates] == [c.kept for c in search.candidates]


class _DoubleParams(ParamsCost):
    """A cost that says the first layer is much dearer than the parameter count does (a refitted model)."""

    def value(self, spec):
        return float(spec.params + 20 * spec.layer("dense1").out_features * spec.layer("dense1").in_features)


def test_a_swapped_cost_that_puts_the_kept_structure_over_budget_prunes_on():
    search = _search(budget=0.5, schedule=Schedule(0.0, 0.1, 10, 0.9))
    search.run()
    assert search.kept_cost() <= 0.5
    steps = search.step_index
    search.run(until=steps + 50)
    assert search.step_index == steps  # finished under its cost: nothing more to do
    harder = _DoubleParams(search.spec)
    search.s = SearchSettings(**{**search.s.__dict__, "budget": 0.2})
    search.set_cost(harder)
    before = search.kept_cost()
    assert before > 0.2
    search.run(until=steps + 200)
    assert search.step_index > steps and search.kept_cost() < before


class _FakeBench:
    """Times specs by a rule of its own: the 'device' the latency model does not know."""

    def __init__(self, ratio_of):
        self.device = SimpleNamespace(name="fake-1t")
        self.ratio_of, self.timed = ratio_of, []

    def time(self, specs, baseline):
        self.timed.append(dict(specs))
        return {name: {"ratio": self.ratio_of(name, spec), "latency_ms": self.ratio_of(name, spec),
                       "reference_ms": 1.0} for name, spec in specs.items()}


def _latency_search():
    from components.pruning.costs import Cost

    class Predicted(Cost):
        name, unit = "latency", "ms"

        def value(self, spec):
            return float(spec.macs)

    return _search(cost_of=Predicted, budget=0.3)


def _cfg(candidates=3, nudge=0):
    return SimpleNamespace(select=SimpleNamespace(candidates=candidates), nudge_radius=nudge)


def test_the_fastest_measured_candidate_at_the_floor_is_taken_not_the_cheapest_predicted():
    search = _latency_search()
    search.run()
    # the device disagrees with the model: the last kept structure is measured slow, every other one fast
    bench = _FakeBench(lambda name, spec: 0.9 if name == "last" else 0.2 + spec.params * 1e-6)
    selection = select(search, search.cost, bench, search.model, _cfg(), floor=0.0)
    keep = selection.keep
    rows = {r["name"]: r for r in selection.timed}
    chosen = [r for r in rows.values() if r["chosen"]]
    assert len(chosen) == 1 and chosen[0]["name"] != "last"
    assert chosen[0]["measured_ratio"] == min(r["measured_ratio"] for r in rows.values())
    assert {k: len(v) for k, v in keep.items()} == chosen[0]["widths"]
    assert "within_10_pct" in selection.prediction and selection.chosen is chosen[0]
    # above the floor only: with a floor nothing but the last structure reaches, the last is taken
    floor = rows["last"]["accuracy"]
    others = [r for r in rows.values() if r["name"] != "last"]
    if all(r["accuracy"] < floor for r in others):
        again = select(search, search.cost, bench, search.model, _cfg(), floor=floor)
        assert again.chosen["name"] == "last"


def test_a_nudge_is_kept_only_where_the_device_confirms_it():
    search = _latency_search()
    search.run()
    kept_width = {k: len(v) for k, v in search.kept().items()}

    class Stepped(type(search.cost)):
        """Predicts widths of a multiple of 8 no slower than one less: the nudge moves up to them."""

        def value(self, spec):
            return float(sum(-(-layer.out_features // 8) * 8 for layer in spec.layers))

    search.set_cost(Stepped(search.spec))
    nudged_is_slow = _FakeBench(lambda name, spec: 0.5 if name.endswith("+nudge") else 0.3)
    selection = select(search, search.cost, nudged_is_slow, search.model, _cfg(candidates=0, nudge=8), floor=0.0)
    names = [r["name"] for r in selection.timed]
    if "last+nudge" in names:  # the model proposed a nudge; the device said it is slower: not taken
        assert selection.chosen["name"] == "last"
        nudged_is_fast = _FakeBench(lambda name, spec: 0.2 if name.endswith("+nudge") else 0.3)
        selection = select(search, search.cost, nudged_is_fast, search.model, _cfg(candidates=0, nudge=8), floor=0.0)
        assert selection.chosen["name"] == "last+nudge"
        assert {k: len(v) for k, v in selection.keep.items()} != kept_width
    else:
        pytest.fail(f"the stepped cost proposed no nudge for widths {kept_width}")


def test_a_budget_below_the_device_floor_is_said_up_front_and_the_search_aims_at_the_reachable(caplog):
    search = _latency_search()
    caplog.set_level(logging.WARNING)
    out = floor_check(search, None, search.model, 1e-4, search.cost)
    assert out.above_budget and out.predicted > 1e-4
    assert out.aim == pytest.approx(out.predicted + 1e-4 * (1 - out.predicted))
    assert "BUDGET CANNOT BE MET" in caplog.text and "best this device can reach" in caplog.text
    reachable = floor_check(search, None, search.model, 0.5, search.cost)
    assert not reachable.above_budget and reachable.aim == 0.5 and "measured" not in reachable.to_dict()
    # on a timed device the floor is measured too, and a device slower than its model says is warned about
    caplog.clear()
    slow = _FakeBench(lambda name, spec: 0.6)
    measured = floor_check(search, slow, search.model, 0.5, search.cost)
    assert measured.measured == 0.6 and "the device measures its floor at 0.600" in caplog.text
    assert resized_spec(search.model.spec, {"dense1": 1, "dense2": 1}).params == slow.timed[0]["floor"].params


def test_validate_judges_the_prediction_on_ratios_to_the_baseline_timed_together():
    from components.devices.scoring import add_ratios as _add_ratios

    # a slow phase doubled both measurements: the milliseconds are 100 % off, the ratio is right
    results = {"baseline": {"onnx": {"ok": True, "latency_ms": 2.0, "predicted_latency_ms": 1.0}},
               "compressed": {"onnx": {"ok": True, "latency_ms": 0.5, "predicted_latency_ms": 0.25,
                                       "latency_method": "timed"}}}
    _add_ratios(results)
    comp = results["compressed"]["onnx"]
    assert comp["measured_ratio"] == pytest.approx(0.25) and comp["predicted_ratio"] == pytest.approx(0.25)
    assert comp["latency_error"] == pytest.approx(0.0)


# ---- on a real timed device: the refit loop and the measured selection inside the stage ---------------------


def test_the_local_correction_fixes_what_the_formula_gets_wrong_near_timed_models_and_fades_far_away():
    from components.latency.fit import fit_residuals
    from components.latency.model import LatencyModel, Overhead, Residuals, from_dict

    base = _spec()

    def at(w1, w2):
        return resized_spec(base, {"dense1": w1, "dense2": w2})

    # timed models around (8, 6) run 30 % slower than the formula says; wide ones are right
    near = [at(w1, w2) for w1 in (6, 7, 8, 9, 10) for w2 in (5, 6, 7)]
    wide = [at(w1, w2) for w1 in (40, 44, 48) for w2 in (28, 32)]
    specs = near + wide
    formula = np.array([float(s.params) for s in specs])
    measured = formula * np.array([1.3] * len(near) + [1.0] * len(wide))
    residuals = fit_residuals(specs, measured, formula)
    assert residuals.points and residuals.names == tuple(layer.name for layer in base.layers)
    assert residuals.factor(at(8, 6)) == pytest.approx(1.3, rel=0.05)
    assert residuals.factor(at(46, 30)) == pytest.approx(1.0, abs=0.05)
    other_arch = mlp_spec((4, 1, 2, 2, 4), ("a", "b", "c"), units=(8,), dropout=0.0)
    assert residuals.factor(other_arch) == 1.0  # another architecture: no correction
    # no structure in the residuals: no correction is chosen
    assert fit_residuals(specs, formula * 1.0, formula) == Residuals()
    # saved and read back as JSON
    model = LatencyModel("d", "onnxruntime", {}, Overhead("none"), {}, residuals)
    again = from_dict(model.to_dict())
    assert again.residuals == residuals


def test_a_measured_ratio_is_judged_within_its_timing_noise(project_params):
    """0.3004 measured at a 0.3 budget meets it (ratios repeat within ~1 %); 0.31 does not, and says by how much."""
    from components.compress import Compressed, _metrics
    from components.pruning.candidates import Tuned
    from components.pruning.floor import Floor
    from components.pruning.selection import Fallback, Selection

    cfg = project_params.compress
    search = SimpleNamespace(s=SimpleNamespace(accuracy_floor=0.9), cost_floor=0.1, step_index=10)
    cost = SimpleNamespace(name="latency")
    per_user = {"a": 0.95, "b": 0.93}

    (device,) = chosen(project_params, ["ort-1t"])

    def metrics(measured, budget=None, energy=None):
        model = {"measured_ratio": measured, "relative_cost": 0.29, "fits": True, "val_accuracy": 0.95,
                 "test_accuracy": 0.94, "test_accuracy_per_user": per_user, "params": 10,
                 "predicted_latency_ms": 0.29}
        base = {"test_accuracy": 0.95, "test_accuracy_per_user": per_user, "params": 100, "predicted_latency_ms": 1.0}
        done = Compressed({"deepiot": Tuned(None, model), "baseline": Tuned(None, base)}, search,
                          Floor(0.1, 0.3, False), [], Selection({}, "last kept structure"), Fallback("none"), None, {})
        return _metrics(done, cost, cfg, device, budget or cfg.budget["latency"], energy or {}, 1.0)

    budget = cfg.budget["latency"]
    assert metrics(budget * 1.001)["budget_met"] and metrics(budget * 0.99)["budget_met"]
    assert not metrics(budget * (1 + cfg.measured_tolerance) * 1.01)["budget_met"]
    # energy, modelled from the pool's declared watts: the baseline's 1 ms at 6 W, the model's x its measured ratio
    m = metrics(0.25)
    assert m["energy"]["baseline_mj"] == pytest.approx(6.0) and m["energy"]["ratio"] == pytest.approx(0.25)
    assert m["energy"]["source"].startswith("modelled: 6 W active (declared)")
    assert m["methods"]["deepiot"]["energy_mj"] == pytest.approx(1.5)
    # an energy budget of 1.2 mJ (0.2 of the baseline's) is the aim; 0.25 measured misses it and says why
    tight = metrics(0.25, 0.2, {"budget_mj": 1.2, "aim": 0.2})
    assert not tight["budget_met"] and not tight["energy"]["met"]
    assert metrics(0.19, 0.2, {"budget_mj": 1.2, "aim": 0.2})["energy"]["met"]


def test_an_energy_budget_tightens_the_aim_and_needs_a_latency_cost(project_params):
    from components.compress import _budget
    from components.config import ConfigError

    (device,) = chosen(project_params, ["ort-1t"])
    spec = _spec()
    cfg = project_params.compress.model_copy(update={"energy_budget_mj": {"ort-1t": 0.6}})
    latency = SimpleNamespace(name="latency", value=lambda s: 1.0)  # 1 ms at 6 W: 6 mJ; 0.6 mJ is 0.1 of it
    assert _budget(cfg, device, latency, spec) == (pytest.approx(0.1), {"budget_mj": 0.6, "aim": pytest.approx(0.1)})
    assert _budget(project_params.compress, device, latency, spec) == (cfg.budget["latency"], {})
    with pytest.raises(ConfigError, match="steers by latency"):
        _budget(cfg, device, ParamsCost(spec), spec)
