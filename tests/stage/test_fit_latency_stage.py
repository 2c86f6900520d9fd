"""fit_latency as a stage (its table, reports and MLflow run) and the fits too slow for the unit tier."""

from __future__ import annotations

import json

import pytest

from components.devices import mcu
from components.devices.pool import load_pool
from components.latency import fit as fitting
from components.latency.model import AnalyticLatencyModel, load
from components.models.spec import LayerSpec
from components.stages import execute
from tests.unit.test_fit_latency import synthetic_rows, write_table


@pytest.mark.slow
def test_on_a_known_function_the_tree_beats_linear_on_flops_and_sums_to_whole_models(project_params):
    cfg = project_params.fit_latency
    # random widths only: the common scale (no offset) would lean on the 0.01 ms offset of tiny scaled baselines
    rows = fitting.usable_rows(synthetic_rows(project_params, per_kind=64, scaled_share=0.0), "ort-1t", "synthetic")
    evaluation = fitting.evaluate(rows, cfg)
    scores = {(r["kind"], r["predictor"]): r for r in evaluation.table}
    for kind in ("conv1d", "gru", "lstm", "linear"):
        assert scores[(kind, "tree")]["mape_pct"] < 3.0
        assert scores[(kind, "tree")]["mape_pct"] < scores[(kind, "linear_flops")]["mape_pct"]
    assert scores[("model", "tree")]["within_pct"] == 100.0
    model = fitting.fit(rows, cfg, "ort-1t", "onnxruntime")
    assert model.overhead.form == "per_kind"
    assert model.overhead.kind_scales == pytest.approx({"conv1d": 1.15, "gru": 1.15}, rel=0.05)
    assert model.overhead.scale == pytest.approx(1.15, rel=0.05)  # the output layer: too small for its own


def test_stage_writes_model_rules_report_and_logs_them_to_mlflow(make_params, tmp_path):
    params = make_params()
    write_table(synthetic_rows(params, per_kind=16, models=6), tmp_path / "out" / "profile" / "ort-1t")
    result = execute("fit_latency", params, "ort-1t")
    out = tmp_path / "out" / "fit_latency" / "ort-1t"
    reports = tmp_path / "reports" / "fit_latency" / "ort-1t"
    assert result.model_path == out / "latency_model.json" and (out / "rules.txt").read_text().startswith("#")
    for name in ("metrics.json", "evaluation.csv", "evaluation.md", "tree.png", "predicted_vs_measured.png",
                 "sweeps.png"):
        assert (reports / name).stat().st_size > 0, name
    metrics = json.loads((reports / "metrics.json").read_text())
    assert set(metrics["configurations"]) == {"conv1d", "gru", "lstm", "linear"}
    assert set(metrics["configurations"]["gru"]) == {"tree", "linear_flops", "boosted", "forest"}
    assert metrics["fallback_kinds"] == [] and metrics["method"] == "tree"
    import mlflow

    client = mlflow.MlflowClient()
    run = client.get_run(result.run_id)
    assert run.info.run_name == "fit_latency/ort-1t" and run.data.tags["fallback_kinds"] == "none"
    assert "configurations.gru.tree.mape_pct" in run.data.metrics
    logged = {a.path for a in client.list_artifacts(result.run_id, "fit_latency/ort-1t")}
    assert {"fit_latency/ort-1t/latency_model.json", "fit_latency/ort-1t/rules.txt",
            "fit_latency/ort-1t/tree.png"} <= logged


def test_microcontroller_passes_its_analytic_model_through(make_params, tmp_path):
    params = make_params()
    device = load_pool(params.path(params.profile.devices_file))["cortex-m4"]
    rows = synthetic_rows(params, per_kind=4, models=1)
    for r in rows:  # what the mcu profile computed
        from components.profiling.items import Item

        item = Item.from_json(r["config"])
        r["latency_ms"] = mcu.McuBackend().compute(item, device)["latency_ms"]
    write_table(rows, tmp_path / "out" / "profile" / "cortex-m4")
    result = execute("fit_latency", params, "cortex-m4")
    model = load(result.model_path)
    assert isinstance(model, AnalyticLatencyModel)
    layer = LayerSpec("x", "conv1d", 6, 32, 3, 1, 16, 8)
    assert model.predict(layer) == mcu.latency_ms(layer.macs, 1, device.mcu)
    assert model.pool_entry == device and "5000) / 6.4e+07 Hz" in model.rules()  # the saved entry, its formula
    assert result.metrics["analytic_max_rel_error"] < 1e-12 and result.metrics["method"] == "analytic"


@pytest.mark.slow
def test_a_kind_too_small_to_evaluate_is_still_fitted_and_used_for_whole_models(project_params):
    rows = synthetic_rows(project_params, per_kind=24, models=6)
    gru = [r for r in rows if r["kind"] == "gru"][:7]  # >= min_rows (6), but a fold would leave 5
    usable = fitting.usable_rows([r for r in rows if r["kind"] != "gru"] + gru, "ort-1t", "t.parquet")
    evaluation = fitting.evaluate(usable, project_params.fit_latency)
    assert "gru" in evaluation.not_evaluated
    assert fitting.fit(usable, project_params.fit_latency, "ort-1t", "onnxruntime").fallback_kinds == []
    predictors = fitting.layer_predictors(usable, project_params.fit_latency)  # what predicts whole models
    assert not isinstance(predictors["gru"]["tree"], fitting._Fallback)
    assert predictors["gru"]["tree"].tree.leaf_variables == list(project_params.fit_latency.leaf_variables["gru"])
    assert any(r["kind"] == "model" for r in evaluation.table)
