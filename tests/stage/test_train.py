"""The train stage on the real HHAR_SA windows, and its refusals of bad input."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from components import models, train
from components.artifacts.seals import DamagedArtifact, seal
from components.data.errors import DataError
from components.models.spec import ModelConfigError
from components.stages import Place, execute

FAST = ("train.epochs=4", "train.patience=2", "train.classical.n_estimators=30")


@pytest.fixture
def ingested(make_params):
    params = make_params(*FAST)
    execute("ingest", params)
    return params


def _dataset_inputs(client, run_id: str) -> dict:
    """context -> (dataset, the input's tags) of a run's dataset inputs."""
    found = {}
    for entry in client.get_run(run_id).inputs.dataset_inputs:
        tags = {t.key: t.value for t in entry.tags}
        found[tags["mlflow.data.context"]] = (entry.dataset, tags)
    return found


def test_short_real_training_beats_chance_by_a_clear_margin(ingested):
    result = execute("train", ingested)
    out = result.output_dir
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_users"] == ["c"] and metrics["test"]["per_user"]["c"]["windows"] == 475
    # early stopping judged one whole training user (a fifth of a, b, d, e) that the model never trained on
    validation = metrics["validation"]
    assert validation["by"] == "users" and len(validation["users"]) == 1 and validation["users"][0] in "abde"
    # three users left to fit on (below train.refit_below_users): trained again on all four for the chosen epochs
    assert validation["refit_epochs"] == metrics["best_epoch"] > 0 and "trained again on every" in validation["said"]
    assert result.accuracy > 0.4 and metrics["classical"]["accuracy"] > 0.4  # chance is 1/6; 4 epochs only
    assert np.array(metrics["test"]["confusion_matrix"]).sum() == 475
    # one held-out user: the mean over users is that user's accuracy, and there is no interval
    assert metrics["test"]["users"]["accuracy"]["users"] == 1 and result.accuracy_ci["low"] == result.accuracy
    assert "one user: no interval" in (out / "users.md").read_text()
    for name in ("confusion_matrix.png", "learning_curve.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    history = json.loads((out / "history.json").read_text())
    assert 1 <= len(history["epochs"]) <= 4 and 1 <= history["best_epoch"] <= len(history["epochs"])
    model = models.load(out / "model")  # the saved model reproduces the reported accuracy
    windows = train.load_windows(ingested.path(ingested.ingest.output_dir))
    test = np.flatnonzero(windows.meta["split"] == "test")
    from components.models.training import predict
    predicted = predict(model, windows.x[test])
    assert np.isclose((predicted == windows.meta["label"].to_numpy()[test]).mean(), result.accuracy)


@pytest.mark.slow
def test_training_is_deterministic(ingested, tmp_path):
    first = execute("train", ingested, out=Place(tmp_path / "one", tmp_path / "one-report"))
    second = execute("train", ingested, out=Place(tmp_path / "two", tmp_path / "two-report"))
    assert first.accuracy == second.accuracy
    one = (tmp_path / "one" / "model" / "model.safetensors").read_bytes()
    assert one == (tmp_path / "two" / "model" / "model.safetensors").read_bytes()


def test_mlflow_gets_epochs_users_plots_and_a_loadable_model(ingested):
    import mlflow

    from components.tracking import server

    result = execute("train", ingested)
    mlflow.set_tracking_uri(server.tracking_uri(ingested))
    client = mlflow.MlflowClient()
    run = client.get_run(result.run_id)
    assert run.info.run_name == "train"
    assert run.data.metrics["test.accuracy"] == pytest.approx(result.accuracy)
    assert "test.user.c.macro_f1" in run.data.metrics and "classical.accuracy" in run.data.metrics
    assert "test.accuracy_ci_low" in run.data.metrics and "deep_minus_classical.accuracy" in run.data.metrics
    assert len(client.get_metric_history(result.run_id, "val_loss")) >= 1
    files = {f.path for f in client.list_artifacts(result.run_id, "train")}
    assert {"train/confusion_matrix.png", "train/learning_curve.png", "train/metrics.json", "train/users.md"} <= files
    logged = mlflow.pyfunc.load_model(f"runs:/{result.run_id}/baseline")
    assert logged.metadata.get_input_schema() is not None
    # a LoggedModel of the saved folder (nothing pickled), its held-out scores linked to it
    [model] = client.search_logged_models([run.info.experiment_id])
    assert model.source_run_id == result.run_id and model.tags["role"] == "baseline"
    linked = {m.key: m.value for m in model.metrics}
    assert linked["test.accuracy"] == pytest.approx(result.accuracy) and "val_loss" not in linked
    x = train.load_windows(ingested.path(ingested.ingest.output_dir)).x[:3].astype(np.float32)
    assert np.asarray(logged.predict(x)).shape == (3, 6)
    # the windows it read, as an MLflow dataset: the data set, its data hash, the ingest folder and run
    folder = ingested.path(ingested.ingest.output_dir).resolve()
    data_hash = json.loads((folder / "data_card.json").read_text())["data_hash"]
    (ingest_run,) = client.search_runs([run.info.experiment_id], "tags.stage = 'ingest'")
    dataset, tags = _dataset_inputs(client, result.run_id)["training"]
    assert (dataset.name, dataset.digest, dataset.source_type) == ("hhar_sa", data_hash[:16], "local")
    assert json.loads(dataset.source)["uri"] == str(folder)
    assert tags["data_hash"] == data_hash and tags["ingest_run_id"] == ingest_run.info.run_id
    profile = json.loads(dataset.profile)
    assert profile["windows"] == 2426 and profile["held_out_users"] == ["c"] and len(profile["x_shape"]) == 6
    assert {"x", "label", "user", "split"} <= {c["name"] for c in json.loads(dataset.schema)["mlflow_colspec"]}
    # ingest declares the same dataset, as what it produced
    produced, tags = _dataset_inputs(client, ingest_run.info.run_id)["produced"]
    assert (produced.name, produced.digest) == (dataset.name, dataset.digest)


def test_window_file_with_the_wrong_shape_is_refused(ingested):
    out = ingested.path(ingested.ingest.output_dir)
    np.save(out / "x.npy", np.zeros((10, 8, 1, 3, 16), dtype=np.float32))
    with pytest.raises(DamagedArtifact, match=r"x\.npy: sha256 .*changed or damaged since .* run the ingest stage"):
        execute("train", ingested)  # not the file ingest wrote
    seal(out)  # as if ingest itself had written it so: its own checks name what is wrong
    with pytest.raises(DataError, match=r"x\.npy: shape \(10, 8, 1, 3, 16\) is not \[windows, intervals"):
        execute("train", ingested)
    np.save(out / "x.npy", np.zeros((10, 8, 1, 3, 2, 16), dtype=np.float32))
    seal(out)
    with pytest.raises(DataError, match=r"x\.npy: has 10 windows but windows\.parquet has 2426"):
        execute("train", ingested)


def test_label_outside_the_models_classes_is_refused(ingested):
    out = ingested.path(ingested.ingest.output_dir)
    meta = pd.read_parquet(out / "windows.parquet")
    meta.loc[7, "label"] = 9
    meta.to_parquet(out / "windows.parquet")
    seal(out)  # as if ingest had written it so
    with pytest.raises(DataError, match=r"windows\.parquet, window 7: label 9 is outside the model's 6 classes"):
        execute("train", ingested)


def test_held_out_user_without_windows_is_refused(make_params):
    params = make_params(*FAST, "train.test_users=[z]")
    execute("ingest", params)
    with pytest.raises(DataError, match=r"held-out user\(s\) \['z'\] have no windows"):
        execute("train", params)


def test_no_held_out_user_is_refused(ingested):
    out = ingested.path(ingested.ingest.output_dir)
    meta = pd.read_parquet(out / "windows.parquet")
    meta["split"] = "train"  # as ingest writes it for a data set with a single user
    meta.to_parquet(out / "windows.parquet")
    seal(out)
    with pytest.raises(DataError, match="fold split: no held-out windows"):
        execute("train", ingested)


@pytest.mark.parametrize("override, message", [
    ("train.deepsense.sensor_filters=0", "0 units"),
    ("train.deepsense.sensor_kernels=[20, 3, 3]", "kernel 20 is longer than its input"),
])
def test_bad_model_config_fails_before_training_starts(make_params, override, message, monkeypatch):
    from components.models import training

    params = make_params(*FAST, override)
    execute("ingest", params)
    monkeypatch.setattr(training, "fit", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(ModelConfigError, match=message):
        execute("train", params)


@pytest.mark.slow
def test_kfold_holds_every_user_out_once_and_reports_means_with_intervals(make_params):
    params = make_params(*FAST, "train.arch=mlp", "train.evaluation=kfold", "train.class_weights=true",
                         "train.bootstrap=500")
    execute("ingest", params)
    result = execute("train", params)
    report = json.loads((params.path(params.train.output_dir) / "metrics.json").read_text())
    k = report["kfold"]
    assert sorted(k["folds"]) == ["fold0", "fold1", "fold2", "fold3", "fold4"]
    assert sorted(k["per_user"]) == ["a", "b", "c", "d", "e"]  # every user scored once, by a model that never saw them
    assert all(isinstance(u["deep_errors"], dict) for u in k["per_user"].values())  # why a user scores low
    assert sorted(u for f in k["folds"].values() for u in f["users"]) == ["a", "b", "c", "d", "e"]
    # the nightly model is fold 0's (user c): trained once, not twice
    assert k["per_user"]["c"]["deep_accuracy"] == pytest.approx(report["test"]["per_user"]["c"]["accuracy"])
    deep = k["deep"]["accuracy"]
    assert deep["mean"] == pytest.approx(np.mean([u["deep_accuracy"] for u in k["per_user"].values()]))
    assert deep["low"] <= deep["mean"] <= deep["high"] and deep["users"] == 5
    diff = k["deep_minus_classical"]["accuracy"]
    assert diff["mean"] == pytest.approx(deep["mean"] - k["classical"]["accuracy"]["mean"])
    dvc_metrics = json.loads((params.path(params.train.report_dir) / "metrics.json").read_text())
    assert dvc_metrics["kfold_deep_accuracy"] == pytest.approx(deep["mean"])
    assert dvc_metrics["accuracy"] == pytest.approx(result.accuracy)
    users_md = (params.path(params.train.output_dir) / "users.md").read_text()
    assert "Every user, held out once (5 folds of users)" in users_md and "| e |" in users_md


@pytest.mark.slow
def test_several_held_out_users_give_a_mean_over_users_with_an_interval(make_params):
    params = make_params(*FAST, "ingest.split.test_users=[a, b, d]")
    execute("ingest", params)
    result = execute("train", params)
    report = json.loads((params.path(params.train.output_dir) / "metrics.json").read_text())
    per_user = [report["test"]["per_user"][u]["accuracy"] for u in ("a", "b", "d")]
    assert result.accuracy == pytest.approx(np.mean(per_user))  # each user counts once, not each window
    assert result.accuracy_ci["users"] == 3 and result.accuracy_ci["low"] < result.accuracy_ci["high"]
