"""The `compress` stage end to end on a small synthetic task: outputs, MLflow, budget not met, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from components import compress, models
from components.config import ConfigError
from components.stages import Place, execute
from tests.conftest import synthetic_task

QUICK = ("compress.search.max_steps=100", "compress.search.lambda_cost=10.0", "compress.search.eval_every=10", "compress.search.checkpoint_every=10",
         "compress.search.threshold={start: 0.0, step: 0.1, every: 5, limit: 0.6}", "compress.fine_tune.epochs=2",
         "compress.fine_tune.patience=1", "compress.cost=params", "compress.quantize=false")


@pytest.fixture
def inputs(tmp_path):
    """An ingest folder (users a, b train; c test) and a baseline DeepSense trained for a few steps."""
    return synthetic_task(tmp_path)


def _params(make_params, ingest, train, *more):
    return make_params(f"ingest.output_dir={ingest}", f"train.output_dir={train}", *QUICK, *more)


def test_compress_writes_a_smaller_model_the_comparison_and_figures(make_params, inputs, tmp_path):
    ingest, train = inputs
    params = _params(make_params, ingest, train, "compress.budget.params=0.5", "compress.max_accuracy_drop=1.0",
                     "compress.baselines=[l1, uniform]", "compress.quantize=true", "validate.calibration_windows=40",
                     "profile.timing.max_time_s=0.05", "profile.timing.max_repeats=5")
    result = execute("compress", params, "ort-1t", out=Place(tmp_path / "c", tmp_path / "r"))
    m = result.metrics
    assert m["budget_met"] and m["methods"]["deepiot"]["relative_cost"] <= 0.5
    assert set(m["methods"]) == {"baseline", "deepiot", "l1", "uniform"}
    for name in ("l1", "uniform"):
        assert m["methods"][name]["relative_cost"] <= 0.5
    smaller = models.load(result.model_dir)
    assert smaller.spec.params == m["methods"]["deepiot"]["params"] < m["methods"]["baseline"]["params"]
    for name in ("metrics.json", "comparison.md", "trajectory.png", "pareto.png"):
        assert (tmp_path / "r" / name).stat().st_size > 0
    import mlflow

    logged = {a.path for a in mlflow.MlflowClient().list_artifacts(result.run_id, "compress/ort-1t")}
    assert "compress/ort-1t/model.safetensors" in logged and "compress/ort-1t/pareto.png" in logged
    # the int8 form was a candidate: run on the validation users and timed against the baseline with the float one
    deploy = json.loads((tmp_path / "c" / "deploy.json").read_text())
    assert deploy == m["deployed"] and deploy["float_format"] == "onnx" and deploy["format"] in ("onnx", "onnx_int8")
    for fmt in ("onnx", "onnx_int8"):
        candidate = deploy["candidates"][fmt]
        assert candidate["ok"] and 0 <= candidate["val_accuracy"] <= 1 and candidate["measured_ratio"] > 0
        assert candidate["energy_source"].startswith("modelled")
    assert all(op.endswith("(GRU)") for op in deploy["candidates"]["onnx_int8"]["float_operators"])
    assert deploy["why"] and deploy["baseline"]["format"] == "onnx" and deploy["baseline"]["latency_ms"] > 0
    for candidate in deploy["candidates"].values():  # modelled energy: the same watts, so the latency ratio
        assert candidate["energy_ratio"] == pytest.approx(candidate["measured_ratio"])
    # the files stay, with their manifest, to be run on other users later
    assert {"model.onnx", "model.int8.onnx", "manifest.json"} <= {p.name for p in (tmp_path / "c" / "forms" /
                                                                                   "compressed").iterdir()}


def test_the_compressed_model_is_the_runs_logged_model_with_its_metrics_and_the_windows_it_read(make_params, inputs,
                                                                                                 tmp_path):
    import json

    import mlflow
    import numpy as np
    import torch

    ingest, train = inputs
    params = _params(make_params, ingest, train, "compress.budget.params=0.5", "compress.max_accuracy_drop=1.0",
                     "compress.baselines=[]", "compress.search.max_steps=20")
    result = execute("compress", params, "ort-1t", out=Place(tmp_path / "c", tmp_path / "r"))
    client = mlflow.MlflowClient()
    run = client.get_run(result.run_id)
    # the run's Models column: the compressed model, and its fallback
    outputs = {client.get_logged_model(o.model_id).name: o for o in run.outputs.model_outputs}
    assert set(outputs) == {"compressed-ort-1t", "compressed-ort-1t-fallback"}
    output = outputs["compressed-ort-1t"]
    model = client.get_logged_model(output.model_id)
    seal = json.loads((result.model_dir / "checksums.json").read_text())["files"]
    assert model.source_run_id == result.run_id and model.name == "compressed-ort-1t"
    assert model.tags["weights_sha256"] == seal["model.safetensors"]["sha256"] and model.tags["device"] == "ort-1t"
    linked = {m.key: m for m in model.metrics}  # logged with model_id, on the windows the run declared
    deepiot = result.metrics["methods"]["deepiot"]
    assert linked["methods.deepiot.test_accuracy"].value == pytest.approx(deepiot["test_accuracy"])
    assert linked["params_kept"].run_id == result.run_id and linked["params_kept"].dataset_digest == "synthetic-0"
    (entry,) = run.inputs.dataset_inputs
    assert entry.dataset.digest == "synthetic-0" and {t.key: t.value for t in entry.tags}["mlflow.data.context"] == \
        "training"
    # it loads as a pyfunc (description + safetensors, nothing unpickled) and computes what the saved model does
    x = np.load(ingest / "x.npy")[:4]
    with torch.no_grad():
        expected = models.load(result.model_dir)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(mlflow.pyfunc.load_model(f"models:/{output.model_id}").predict(x), expected, atol=1e-5)


def test_a_budget_that_cannot_be_met_ends_with_the_best_model_and_says_so(make_params, inputs, tmp_path, caplog):
    ingest, train = inputs
    params = _params(make_params, ingest, train, "compress.budget.params=0.001", "compress.max_accuracy_drop=0.0")
    result = execute("compress", params, "ort-1t", out=Place(tmp_path / "c", tmp_path / "r"))
    assert result.metrics["budget_met"] is False and result.model_dir.exists()
    assert "BUDGET NOT MET" in caplog.text
    # the one-line summary says why, not only that
    assert "BUDGET NOT MET: the compressed model is at" in compress.summary(result)
    # one element per layer still costs more than 0.001 of the baseline: said before the search starts
    assert result.metrics["cost_floor"] > 0.001 and "below what width pruning can reach" in caplog.text
    assert "NOT MET" in (tmp_path / "r" / "comparison.md").read_text()


def test_accuracy_is_judged_on_whole_validation_users_and_a_fallback_is_made_one_step_back(make_params, tmp_path):
    ingest, train = synthetic_task(tmp_path, users="abcdef")  # a-e train (one of them validates), f held out
    params = _params(make_params, ingest, train, "compress.budget.params=0.4", "compress.max_accuracy_drop=1.0",
                     "compress.baselines=[]")
    result = execute("compress", params, "ort-1t", out=Place(tmp_path / "c", tmp_path / "r"))
    m, deepiot = result.metrics, result.metrics["methods"]["deepiot"]
    validation = m["validation"]
    assert validation["by"] == "users" and len(validation["users"]) == 1 and validation["users"][0] in "abcde"
    assert validation["baseline_trained_on_them"]  # this baseline was trained on every user, and nothing says not
    assert set(deepiot["val_accuracy_per_user"]) == set(validation["users"])
    assert m["val_accuracy_change_ci"]["paired_users"] == validation["users"]
    fallback = m["fallback"]
    assert fallback["aim"] == pytest.approx(0.4 * 1.25)
    assert deepiot["relative_cost"] < fallback["relative_cost"] <= fallback["aim"]
    assert deepiot["params"] < models.load(tmp_path / "c" / "fallback").spec.params == fallback["params"]
    comparison = (tmp_path / "r" / "comparison.md").read_text()
    assert "## Fallback (one step back along the search's path)" in comparison
    assert f"judged on the validation users {validation['users'][0]} (" in comparison
    import mlflow

    names = {m.name for m in mlflow.MlflowClient().search_logged_models(
        experiment_ids=[mlflow.MlflowClient().get_run(result.run_id).info.experiment_id])}
    assert {"compressed-ort-1t", "compressed-ort-1t-fallback"} <= names
    execute("compress", _params(make_params, ingest, train, "compress.budget.params=0.4", "compress.fallback=0",
                                "compress.max_accuracy_drop=1.0", "compress.baselines=[]"),
            "ort-1t", out=Place(tmp_path / "c", tmp_path / "r"))
    assert not (tmp_path / "c" / "fallback").exists()  # none made: the earlier run's is not left for validate


def test_a_baseline_early_stopped_on_other_validation_users_is_refused(make_params, tmp_path):
    import json

    ingest, train = synthetic_task(tmp_path, users="abcdef")
    (train / "metrics.json").write_text(json.dumps({"validation": {"by": "users", "users": ["zz"]}}))
    with pytest.raises(ConfigError, match=r"early-stopped on validation users \['zz'\].*run `python -m components "
                                          "train` again"):
        execute("compress", _params(make_params, ingest, train), "ort-1t", out=Place(tmp_path / "c", tmp_path / "r"))


def test_a_baseline_trained_again_on_every_user_is_said_to_have_seen_the_validation_users(tmp_path):
    import json

    from components.models.training import ValidationSet
    from components.pruning.split import _baseline_saw

    split = ValidationSet(np.arange(3), np.arange(3, 5), ("b",))
    record = {"by": "users", "users": ["b"], "refit_epochs": 0}
    (tmp_path / "metrics.json").write_text(json.dumps({"validation": record}))
    assert _baseline_saw(split, tmp_path) is False
    (tmp_path / "metrics.json").write_text(json.dumps({"validation": record | {"refit_epochs": 7}}))
    assert _baseline_saw(split, tmp_path) is True


def test_the_microcontroller_is_compressed_against_its_own_resources(make_params, inputs, tmp_path):
    ingest, train = inputs
    params = _params(make_params, ingest, train, "compress.budget.mcu=0.5", "compress.max_accuracy_drop=1.0",
                     "compress.baselines=[]")
    result = execute("compress", params, "cortex-m4", out=Place(tmp_path / "c", tmp_path / "r"))
    deepiot = result.metrics["methods"]["deepiot"]
    assert result.metrics["cost"] == "mcu" and {"flash_bytes", "peak_sram_bytes", "macs"} <= set(deepiot)


def test_latency_cost_without_the_devices_latency_model_is_refused_up_front(make_params, inputs, tmp_path):
    ingest, train = inputs
    params = _params(make_params, ingest, train, "compress.cost=latency")
    with pytest.raises(ConfigError, match="no latency model .* fit_latency --device ort-2t"):
        execute("compress", params, "ort-2t", out=Place(tmp_path / "c", tmp_path / "r"))


def test_a_rerun_resumes_the_finished_search_from_its_checkpoint(make_params, inputs, tmp_path, caplog):
    ingest, train = inputs
    params = _params(make_params, ingest, train, "compress.budget.params=0.5", "compress.max_accuracy_drop=1.0",
                     "compress.baselines=[]")
    first = execute("compress", params, "ort-1t", out=Place(tmp_path / "c", tmp_path / "r"))
    assert (tmp_path / "c" / "checkpoint.pt").exists()
    caplog.clear()
    caplog.set_level("INFO")
    again = execute("compress", params, "ort-1t", out=Place(tmp_path / "c", tmp_path / "r"))
    assert "resuming the search" in caplog.text
    assert again.metrics["search_steps"] == first.metrics["search_steps"]
