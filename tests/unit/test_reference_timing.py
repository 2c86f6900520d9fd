"""Timing relative to a reference model: ratios that survive the machine's speed phases, rows, fitting, sampler."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from components.devices.base import get_backend
from components.devices.timing import measure_many
from components.latency import fit as fitting
from components.models.deepsense import deepsense_spec
from components.models.spec import BYPASS
from components.profiling.items import Item
from components.profiling.sampler import reference_item, sample_items, sampler_params
from components.settings.profile import TimingParams
from tests.unit.test_fit_latency import synthetic_rows

UNIT_S = 2e-4  # one unit of work at full speed


class Clock:
    """A fake perf_counter that moves only when a fake run works: the tests are exact on a busy machine."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    from types import SimpleNamespace

    from components.devices import timing

    fake = Clock()
    monkeypatch.setattr(timing, "time", SimpleNamespace(perf_counter=fake.perf_counter))
    return fake


class Machine:
    """A shared speed every fake run pays: `slowdown(now)` x its units of work, on the fake clock."""

    def __init__(self, clock: Clock, slowdown=lambda now: 1.0):
        self.clock, self.slowdown = clock, slowdown

    def run(self, units: float):
        def work() -> None:
            self.clock.now += units * UNIT_S * self.slowdown(self.clock.now)

        return work


def _params(**changes) -> TimingParams:
    base = dict(warmup_runs=0, min_sample_s=0.002, samples_per_round=1, min_rounds=4, max_repeats=12,
                max_time_s=1.0, rel_tolerance=0.02, reference_every=2)
    return TimingParams(**(base | changes))


def test_the_ratio_holds_across_speed_phases_where_milliseconds_double(clock):
    fast, slow = Machine(clock, lambda now: 1.0), Machine(clock, lambda now: 2.0)
    timed = {}
    for name, machine in (("fast", fast), ("slow", slow)):
        timed[name] = measure_many([machine.run(1), machine.run(3)], _params(), reference=machine.run(2))
    for f, s, units in zip(timed["fast"], timed["slow"], (1, 3)):
        assert s.latency_ms / f.latency_ms == pytest.approx(2.0, rel=0.2)  # the milliseconds follow the phase
        assert s.ratio == pytest.approx(f.ratio, rel=0.1)  # the ratio does not
        assert f.ratio == pytest.approx(units / 2, rel=0.15)
        assert f.ratio_q1 <= f.ratio <= f.ratio_q3
    assert timed["slow"][0].reference_ms / timed["fast"][0].reference_ms == pytest.approx(2.0, rel=0.2)


def test_within_one_batch_phases_spread_the_milliseconds_but_not_the_ratio(clock):
    machine = Machine(clock, lambda now: 1.0 if int(now / 0.08) % 2 == 0 else 2.0)
    p = _params(min_rounds=40, max_repeats=40)
    small, large = measure_many([machine.run(1), machine.run(3)], p, reference=machine.run(2))
    for t in (small, large):
        assert t.iqr_ms / t.latency_ms > 0.3  # samples from both phases
        assert (t.ratio_q3 - t.ratio_q1) / t.ratio < 0.15
    assert large.ratio / small.ratio == pytest.approx(3.0, rel=0.15)


def test_the_stop_rule_watches_the_ratio_when_the_machine_drifts(clock):
    machine = Machine(clock, lambda now: 1.0 + 30.0 * now)  # slower and slower
    p = _params(min_rounds=4, max_repeats=20, rel_tolerance=0.01)
    (plain,) = measure_many([machine.run(1)], p)
    clock.now = 0.0
    (relative,) = measure_many([machine.run(1)], p, reference=machine.run(1))
    assert not plain.stable and plain.repeats == 20  # the median of milliseconds never settles
    assert relative.stable and relative.repeats < 20
    assert plain.ratio is None and plain.reference_ms is None


def test_without_a_reference_or_with_a_bad_setting(clock):
    machine = Machine(clock)
    (t,) = measure_many([machine.run(1)], _params())
    assert t.ratio is None and t.to_dict()["ratio"] is None
    with pytest.raises(ValueError, match="reference_every must be at least 1"):
        measure_many([machine.run(1)], _params().model_copy(update={"reference_every": 0}), reference=machine.run(1))


# ---- a real runtime: the profiler's rows, and validate's worker --------------------------------------------------


def _small_deepsense(filters: int, units: int):
    return deepsense_spec((4, 1, 3, 2, 8), ("a", "b", "c"), sensor_filters=filters, sensor_kernels=(3,),
                          first_stride=1, merge_filters=filters, merge_kernels=(3,), rnn="gru", rnn_units=units,
                          rnn_layers=1, dropout=0.0)


def test_validate_worker_times_models_against_the_one_named_reference(tmp_path, project_params):
    from components.devices.worker import _validate_files

    backend = get_backend("onnxruntime")
    models = []
    for name, spec in (("baseline", _small_deepsense(16, 24)), ("compressed", _small_deepsense(2, 3))):
        path = tmp_path / f"{name}.onnx"
        backend.convert(Item(model=spec), path)
        models.append({"path": str(path), "format": "onnx", "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                       "outputs": str(tmp_path / f"{name}.npy")})
    np.save(tmp_path / "windows.npy", np.zeros((2, 4, 1, 3, 2, 8), np.float32))
    timing = _params(min_rounds=3, max_repeats=6).model_dump()
    request = {"windows": str(tmp_path / "windows.npy"), "models": models, "predict": False, "timing": timing}
    plain = _validate_files(backend, 1, request)["results"]
    relative = _validate_files(backend, 1, request | {"reference_index": 0})["results"]
    assert plain[1]["timing"]["ratio"] is None
    baseline, compressed = (r["timing"] for r in relative)
    assert 0 < compressed["ratio"] < baseline["ratio"] and compressed["reference_ms"] > 0


# ---- the profile stage's reference, the sampler ------------------------------------------------------------------


def test_the_reference_is_the_baseline_deepsense_on_the_data_sets_input(project_params):
    ref = reference_item(project_params)
    d = project_params.train.deepsense
    assert ref.model.input_shape == sampler_params(project_params).model_input_shape
    widths = {layer.name: layer.out_features for layer in ref.model.layers}
    assert widths["sensor0.conv1"] == d.sensor_filters and widths["merge.conv1"] == d.merge_filters
    assert widths["rnn1"] == d.rnn_units and ref.model.options["dropout"] == 0.0
    assert reference_item(project_params).key == ref.key  # the same params, the same reference


def test_half_the_whole_models_are_compressed_looking_baselines_down_to_a_few_percent(project_params):
    sampler = sampler_params(project_params)
    baseline = reference_item(project_params).model
    models = [i for i in sample_items(sampler, project_params.train) if i.model is not None]
    scaled = [i.model for i in models if i.sweep == "scaled"]
    assert len(models) == sampler.models and len(scaled) == int(sampler.models * sampler.scaled_share)
    shares = sorted(spec.params / baseline.params for spec in scaled)
    assert shares[0] < 0.1  # where compression ends
    for spec in scaled:  # the baseline's layers, each no wider than the baseline's, at least one unit, or removed
        assert [layer.name for layer in spec.layers] == [layer.name for layer in baseline.layers]
        for layer, base in zip(spec.layers, baseline.layers):
            assert layer.kind == BYPASS or (layer.kind, layer.kernel) == (base.kind, base.kernel)
            assert layer.kind == BYPASS or 1 <= layer.out_features <= base.out_features
            assert layer.out_length == base.out_length  # removed or not, every later layer keeps its shape
    more = sampler.model_copy(update=dict(models=8))
    shares = [i.model.params / baseline.params for i in sample_items(more, project_params.train)
              if i.sweep == "scaled"]
    assert len(shares) == 4 and min(shares) < 0.05 and max(shares) > 0.2  # spread over the keep range


def test_a_share_of_the_scaled_baselines_are_shallower_as_the_compressor_can_leave_them(project_params):
    """Whole models of several depths: what lets the latency model fit a fixed cost per layer."""
    from components.pruning.groups import removable

    sampler = sampler_params(project_params).model_copy(update=dict(models=16, scaled_share=1.0, removed_share=0.5))
    baseline = reference_item(project_params).model
    scaled = [i.model for i in sample_items(sampler, project_params.train) if i.sweep == "scaled"]
    shallower = [spec for spec in scaled if spec.removed]
    assert 3 <= len(shallower) <= 13  # about half of 16
    for spec in shallower:  # only what the compressor may remove, and a description it could have left
        assert set(spec.removed) <= set(removable(baseline))
        assert len(spec.computing) < len(baseline.layers)
    none = sampler.model_copy(update=dict(removed_share=0.0))
    assert not any(i.model.removed for i in sample_items(none, project_params.train) if i.model is not None)


# ---- fitting on the ratio ---------------------------------------------------------------------------------------


def _phased(rows: list[dict], reference_ms: float = 2.0) -> list[dict]:
    """The synthetic rows as measured in alternating phases: ms x1 or x1.5, the ratio to the reference intact."""
    out = []
    for i, row in enumerate(rows):
        slowdown = 1.5 if i % 2 else 1.0
        out.append(row | {"latency_ms": row["latency_ms"] * slowdown, "ratio": row["latency_ms"] / reference_ms,
                          "reference_ms": reference_ms * slowdown, "reference_id": "ref"})
    return out


def test_fitting_on_the_ratio_undoes_the_phases_and_saves_r(project_params):
    cfg = project_params.fit_latency.model_copy(update=dict(target="ratio"))
    truth = synthetic_rows(project_params, per_kind=32, models=8, scaled_share=0.0)
    rows = _phased(truth)
    rows[0] = rows[0] | {"ratio": None, "reference_ms": None, "reference_id": None}  # one without: its ms
    usable = fitting.usable_rows(rows, "ort-1t", "t.parquet", target="ratio")
    r = float(np.median([row["reference_ms"] for row in rows[1:]]))
    assert usable.reference_ms == pytest.approx(r) and usable.with_ratio == len(rows) - 1
    fitted = {row["config_id"]: row["fit_ms"] for rs in usable.layers.values() for row in rs}
    assert fitted[rows[0]["config_id"]] == rows[0]["latency_ms"]
    assert fitted[rows[1]["config_id"]] == pytest.approx(rows[1]["ratio"] * r)
    model = fitting.fit(usable, cfg, "ort-1t", "onnxruntime", {"rows": 1})
    assert model.info["rows"] == 1  # the caller's info is kept
    assert model.info["target"] == "ratio" and model.info["reference_id"] == "ref"
    assert model.info["reference_ms"] == pytest.approx(r)
    # the ratio target sees one phase, so whole models are predicted better than from the phased ms
    by_ratio = fitting.whole_model_scores(usable, cfg)
    by_ms = fitting.whole_model_scores(fitting.usable_rows(rows, "ort-1t", "t.parquet", target="ms"), cfg)
    assert by_ratio["within_pct"] > by_ms["within_pct"] and by_ratio["mape_pct"] < by_ms["mape_pct"]
