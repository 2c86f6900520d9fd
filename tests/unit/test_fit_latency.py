"""The latency model: split search, non-negative leaves, JSON round trip, bad tables, the stage."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components import fit_latency
from components.artifacts.seals import DamagedArtifact, seal
from components.config import ConfigError
from components.latency import fit as fitting
from components.latency.model import LatencyModel, Overhead, load
from components.latency.tree import LinearTree
from components.models.spec import LayerSpec
from components.profiling.items import item_explanatory
from components.profiling.sampler import sample_items
from components.profiling.table import SCHEMA
from components.stages import execute

SPLIT_VARS = ["in_features", "out_features", "flops"]


def _tree_params(project_params, **changes):
    return project_params.fit_latency.tree.model_copy(update=changes)


def _step_data(n=320, seed=0, noise=0.01):
    """Latency with a known step: widths that are not multiples of 4 pay 30 % more per FLOP plus 20 µs."""
    rng = np.random.default_rng(seed)
    out = rng.integers(4, 257, n)
    inp = rng.integers(16, 513, n)
    flops = 2.0 * out * inp
    y = np.where(out % 4 == 0, 1e-6 * flops + 0.01, 1.3e-6 * flops + 0.03)
    y *= 1 + noise * rng.standard_normal(n)
    return np.column_stack([inp, out, flops]), np.column_stack([flops]), y


def test_split_search_finds_the_multiple_of_4_step_exactly(project_params):
    split_x, leaf_x, y = _step_data()
    tree = LinearTree.fit(split_x, leaf_x, y, SPLIT_VARS, ["flops"], _tree_params(project_params, max_depth=1))
    assert tree.nodes[0]["split"] == ["out_features", "mod", 4]
    yes, no = tree.nodes[tree.nodes[0]["yes"]]["leaf"], tree.nodes[tree.nodes[0]["no"]]["leaf"]
    assert yes["weights"][0] == pytest.approx(1e-6, rel=0.03) and yes["intercept"] == pytest.approx(0.01, rel=0.2)
    assert no["weights"][0] == pytest.approx(1.3e-6, rel=0.03)
    assert "if out_features % 4 == 0:" in tree.rules()[0]


def test_interval_split_lands_between_the_two_sizes_where_time_jumps(project_params):
    rng = np.random.default_rng(1)
    out = rng.integers(4, 257, 200)
    flops = 1000.0 * out
    y = np.where(out < 100, 1e-5 * flops, 2e-5 * flops + 0.5)
    x = np.column_stack([out, out, flops])
    tree = LinearTree.fit(x, flops[:, None], y, SPLIT_VARS, ["flops"], _tree_params(project_params, max_depth=1))
    variable, op, value = tree.nodes[0]["split"]
    assert op == "lt" and variable in ("in_features", "out_features")
    assert out[out < 100].max() < value <= out[out >= 100].min()


def test_leaves_are_non_negative_even_where_least_squares_would_go_negative(project_params):
    rng = np.random.default_rng(2)
    a, b = rng.uniform(1, 100, 200), rng.uniform(1, 100, 200)
    y = 0.5 * a - 0.2 * b + 30  # ordinary least squares would give b a negative weight
    tree = LinearTree.fit(np.column_stack([a, b, a]), np.column_stack([a, b]), y, SPLIT_VARS, ["a", "b"],
                          _tree_params(project_params, max_depth=3, min_leaf=10), rng.random(200) < 0.25)
    for node in tree.nodes:
        if "leaf" in node:
            assert min(node["leaf"]["weights"]) >= 0 and node["leaf"]["intercept"] >= 0
    grid = np.column_stack([np.linspace(0, 200, 50), np.linspace(200, 0, 50)])
    assert (tree.predict(np.column_stack([grid, grid[:, 0]]), grid) >= 0).all()


def test_pruning_on_held_out_rows_removes_splits_fitted_to_noise(project_params):
    rng = np.random.default_rng(3)
    x = rng.uniform(1, 100, (240, 3))
    y = (0.1 * x[:, 2] + 1) * (1 + 0.05 * rng.standard_normal(240))  # one straight line plus noise
    grown = LinearTree.fit(x, x[:, 2:], y, SPLIT_VARS, ["flops"], _tree_params(project_params, min_gain=0.0))
    pruned = LinearTree.fit(x, x[:, 2:], y, SPLIT_VARS, ["flops"], _tree_params(project_params, min_gain=0.0),
                            prune_mask=rng.random(240) < 0.3)
    assert grown.leaves > 1
    assert pruned.leaves < grown.leaves


def test_single_and_vectorised_predictions_agree_on_unseen_rows_and_after_a_json_round_trip(project_params):
    rng = np.random.default_rng(5)
    out, inp = rng.integers(4, 257, 400), rng.integers(16, 513, 400)
    flops = 2.0 * out * inp
    half_full = (out % 32 != 0) & (out % 32 < 17)
    y = np.where(half_full, 1.8e-8, 1e-8) * flops + np.where(inp < 200, 1e-3, 3e-3)
    y *= 1 + 0.03 * rng.standard_normal(400)
    x = np.column_stack([inp, out, flops])
    tree = LinearTree.fit(x, flops[:, None], y, SPLIT_VARS, ["flops"], project_params.fit_latency.tree,
                          prune_mask=rng.random(400) < 0.25, modular={"in_features", "out_features"})
    ops = {node["split"][1] for node in tree.nodes if "split" in node}
    assert {"lt", "rem"} <= ops
    again = LinearTree.from_dict(json.loads(json.dumps(tree.to_dict())))
    unseen_out, unseen_in = rng.integers(1, 400, 300), rng.integers(1, 800, 300)
    unseen = np.column_stack([unseen_in, unseen_out, 2.0 * unseen_out * unseen_in])
    batch = tree.predict(unseen, unseen[:, 2:])
    single = [again.predict_one(list(s), [s[2]]) for s in unseen]
    np.testing.assert_allclose(batch, single, rtol=1e-12)
    np.testing.assert_array_equal(again.predict(unseen, unseen[:, 2:]), batch)


def test_a_tree_file_with_bad_links_is_refused(project_params):
    split_x, leaf_x, y = _step_data()
    d = LinearTree.fit(split_x, leaf_x, y, SPLIT_VARS, ["flops"], _tree_params(project_params, max_depth=1)).to_dict()
    d["nodes"][0]["yes"] = 0  # a cycle: prediction would never end
    with pytest.raises(ValueError, match="children must come after"):
        LinearTree.from_dict(d)


# ---- a synthetic profile table: the sampler's configurations with a known latency function ---------


def _latency(layer: LayerSpec) -> float:
    flops = 2 * layer.macs
    per_flop = 2e-8 if layer.out_features % 4 == 0 else 2.6e-8
    return per_flop * flops + 2e-3 + (1e-4 * layer.length if layer.kind in ("gru", "lstm") else 0.0)


def synthetic_rows(params, per_kind=40, models=10, scaled_share=None) -> list[dict]:
    from components.profiling.sampler import sampler_params

    sampler = sampler_params(params).model_copy(update=dict(configs_per_kind=per_kind, models=models))
    if scaled_share is not None:
        sampler = sampler.model_copy(update=dict(scaled_share=scaled_share))
    rows = []
    for item in sample_items(sampler, params.train):
        row = {"device": "ort-1t", "runtime": "onnxruntime", "method": "timed", "kind": item.kind,
               "sweep": item.sweep, "config_id": item.key, "config": item.to_json(), "status": "ok",
               "layers": len(item.layers), **item_explanatory(item)}
        if item.layer is not None:
            layer = item.layer
            row |= {k: getattr(layer, k) for k in ("in_features", "out_features", "kernel", "stride", "length",
                                                   "instances")}
            row["latency_ms"] = _latency(layer)
        else:
            row["latency_ms"] = 1.15 * sum(_latency(layer) for layer in item.model.layers) + 0.01
        rows.append(row)
    return rows


def write_table(rows: list[dict], folder):
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist([{n: r.get(n) for n in SCHEMA.names} for r in rows], schema=SCHEMA)
    pq.write_table(table, folder / "profile.parquet")
    seal(folder, ["profile.parquet"])  # as the profile stage does
    return folder


def test_model_survives_a_json_round_trip_and_predicts_the_same(project_params, tmp_path):
    rows = fitting.usable_rows(synthetic_rows(project_params, per_kind=24, models=4), "ort-1t", "synthetic")
    model = fitting.fit(rows, project_params.fit_latency, "ort-1t", "onnxruntime")
    model.save(tmp_path / "m.json")
    again = load(tmp_path / "m.json")
    spec = rows.models[0][0]
    assert isinstance(again, LatencyModel) and again.rules() == model.rules()
    assert again.predict_model(spec) == model.predict_model(spec)
    np.testing.assert_array_equal(again.predict_layers(spec.layers), model.predict_layers(spec.layers))
    assert [again.predict(layer) for layer in spec.layers] == pytest.approx(list(model.predict_layers(spec.layers)))
    (tmp_path / "bad.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="format"):
        load(tmp_path / "bad.json")


# ---- bad input ---------------------------------------------------------------------------------


def test_empty_failed_and_tiny_tables_are_refused_with_what_to_do(project_params):
    cfg = project_params.fit_latency
    with pytest.raises(fitting.LatencyDataError, match="no rows; run `python -m components profile"):
        fitting.usable_rows([], "ort-1t", "t.parquet")
    failed = [{"status": "failed", "error": "WorkerFailed: SIGSEGV", "kind": "gru"}] * 3
    with pytest.raises(fitting.LatencyDataError, match="all 3 rows .* failed .*SIGSEGV"):
        fitting.usable_rows(failed, "ort-1t", "t.parquet")
    rows = synthetic_rows(project_params, per_kind=40, models=0)
    with pytest.raises(fitting.LatencyDataError, match="max_failed_share"):
        fitting.usable_rows(rows[:10] + failed * 2, "ort-1t", "t.parquet", max_failed_share=0.2)
    tiny = fitting.usable_rows(rows[:3], "ort-1t", "t.parquet")
    with pytest.raises(fitting.LatencyDataError, match="too few usable layer rows .*configs_per_kind"):
        fitting.fit(tiny, cfg, "ort-1t", "onnxruntime")


def test_nan_and_negative_latencies_are_left_out_and_counted(project_params, caplog):
    rows = synthetic_rows(project_params, per_kind=16, models=0)
    rows[0]["latency_ms"], rows[1]["latency_ms"], rows[2]["latency_ms"] = math.nan, -0.5, None
    usable = fitting.usable_rows(rows, "ort-1t", "t.parquet")
    assert len(usable.invalid) == 3
    assert sum(len(v) for v in usable.layers.values()) == len(rows) - 3
    assert "not a positive number" in caplog.text and rows[0]["config_id"] in caplog.text


def test_a_kind_without_rows_gets_the_conservative_fallback_and_says_so(project_params):
    rows = [r for r in synthetic_rows(project_params, per_kind=24, models=2) if r["kind"] != "lstm"]
    usable = fitting.usable_rows(rows, "ort-1t", "t.parquet")
    model = fitting.fit(usable, project_params.fit_latency, "ort-1t", "onnxruntime")
    assert model.fallback_kinds == ["lstm"]
    assert "lstm  (FALLBACK, not fitted: 0 usable rows" in model.rules()
    measured = [r for r in rows if r["kind"] in ("conv1d", "gru", "linear")]
    predicted = fitting.fallback_tree(measured).predict(np.array([[]] * len(measured)),
                                                        np.array([[r["flops"]] for r in measured]))
    assert (predicted >= np.array([r["latency_ms"] for r in measured]) * (1 - 1e-9)).all()
    lstm = LayerSpec("x", "lstm", 64, 64, length=8)
    assert model.predict(lstm) > 0


# ---- the stage ---------------------------------------------------------------------------------


def test_unknown_variables_and_missing_kinds_in_params_are_refused(project_params):
    cfg = project_params.fit_latency.model_copy(update=dict(split_variables=("out_features", "widht")))
    with pytest.raises(ConfigError, match="widht"):
        fit_latency.check_params(cfg)
    leaves = {k: v for k, v in project_params.fit_latency.leaf_variables.items() if k != "gru"}
    with pytest.raises(ConfigError, match="needs exactly the layer kinds"):
        fit_latency.check_params(project_params.fit_latency.model_copy(update=dict(leaf_variables=leaves)))


def test_a_corrupt_profile_table_is_refused_not_a_traceback(make_params, tmp_path):
    folder = tmp_path / "out" / "profile" / "ort-1t"
    folder.mkdir(parents=True)
    (folder / "profile.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DamagedArtifact, match=r"ort-1t/checksums.json: missing: .* profile --device ort-1t"):
        execute("fit_latency", make_params(), "ort-1t")  # not sealed: not the profile stage's file
    seal(folder, ["profile.parquet"])  # sealed, yet unreadable (e.g. written by another pyarrow)
    with pytest.raises(fitting.LatencyDataError, match="not a readable profile table"):
        execute("fit_latency", make_params(), "ort-1t")
    (folder / "profile.parquet").write_bytes(b"changed since")
    with pytest.raises(DamagedArtifact, match=r"profile.parquet: sha256 .*changed or damaged since"):
        execute("fit_latency", make_params(), "ort-1t")


def test_missing_profile_table_names_the_command_to_run(make_params):
    with pytest.raises(fitting.LatencyDataError, match="no profile table .* profile --device ort-2t"):
        execute("fit_latency", make_params(), "ort-2t")


def test_remainder_split_finds_a_half_full_tile(project_params):
    """Widths whose last 32-wide tile is at most half full are slow: `out mod 32 < 17`, then `mod 32 == 0`."""
    rng = np.random.default_rng(4)
    out = rng.integers(4, 257, 400)
    flops = 1536.0 * out
    slow = (out % 32 != 0) & (out % 32 < 17)
    y = np.where(slow, 1.8e-8, 1e-8) * flops + 1e-3
    x = np.column_stack([out, out, flops])
    tree = LinearTree.fit(x, flops[:, None], y, SPLIT_VARS, ["flops"], _tree_params(project_params, max_depth=2),
                          modular={"in_features", "out_features"})
    splits = [node["split"][1:] for node in tree.nodes if "split" in node]
    assert ["rem", [32, 17]] in splits and ["mod", 32] in splits
    np.testing.assert_allclose(tree.predict(x, flops[:, None]), y, rtol=1e-6)
    assert any("% 32 < 17" in line for line in tree.rules())


def test_the_negative_whole_model_offset_never_predicts_a_small_model_below_a_tenth_of_its_layers():
    overhead = Overhead("per_kind", scale=1.0, kind_scales={"gru": 1.0}, offset=-0.2, models=10)
    assert overhead.apply({"gru": 0.5, "linear": 0.1}) == pytest.approx(0.4)  # far from the floor: as fitted
    assert overhead.apply({"gru": 0.15, "linear": 0.05}) == pytest.approx(0.02)  # 0.2 - 0.2 = 0: floored


def test_a_fixed_cost_per_layer_is_fitted_where_the_whole_models_differ_in_depth(project_params):
    """Whole models of 10 to 17 layers, timed as 1.2 x their GRU layers + their convolutions + 0.4 ms - 0.05 ms per
    layer (each layer timed alone paid a call the model does not): the fit finds the per-layer term, and with
    every model at one depth it leaves it out (it cannot be told from the offset)."""
    rng = np.random.default_rng(0)
    sums, depths, y = [], [], []
    for _ in range(24):
        gru, conv, depth = rng.uniform(0.5, 3.0), rng.uniform(0.2, 2.0), int(rng.integers(10, 18))
        sums.append({"gru": gru, "conv1d": conv})
        depths.append(depth)
        y.append(1.2 * gru + 1.0 * conv + 0.4 - 0.05 * depth)
    cfg = project_params.fit_latency
    overhead = fitting.fit_overhead(sums, np.array(y), cfg, layers=depths)
    assert overhead.per_layer == pytest.approx(-0.05, abs=1e-6) and overhead.offset == pytest.approx(0.4, abs=1e-5)
    assert overhead.kind_scales["gru"] == pytest.approx(1.2, abs=1e-6)
    assert overhead.apply(sums[0], depths[0]) == pytest.approx(y[0])
    assert "0.05 * layers" in overhead.formula()
    same_depth = fitting.fit_overhead(sums, np.array(y), cfg, layers=[14] * len(y))
    assert same_depth.per_layer == 0.0
    assert Overhead(**json.loads(json.dumps(overhead.__dict__))) == overhead  # saved and read back as the model is
