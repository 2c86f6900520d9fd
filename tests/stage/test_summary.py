"""The night's summary read back from an MLflow store: two nights of stage runs (faked: the tags, metrics and
artifacts the summary reads, logged through components.tracking.runs as the stages log them), the registry, the
trend across both nights, `python -m components report`, and the Airflow task's verdict."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from components.config import load_params
from components.stages import STAGES
from components.tracking import runs as tracking
from components.tracking import server
from tests.conftest import components_cli
from tests.night_reports import compress_metrics, validate_report

DEVICES = ["ort-1t", "tflite-1t"]
NIGHT_1, NIGHT_2 = "nightly-1", "nightly-2"


def _stage(params, key: str, name: str, device: str | None, folder: Path, artifact: dict | None = None,
           fail: str | None = None) -> str:
    """One stage run as the stage logs it: nested under the key's parent run, its report as an artifact."""
    try:
        with tracking.stage_run(params, name, key, device=device) as run:
            if name == "ingest":  # the windows it produced, as ingest declares them (components/tracking/lineage.py)
                _declare_produced(params)
            if name == "compress":  # its model, as a logged model is the run's output
                _log_model(params, run.run_id, f"compressed-{device}")
            if artifact is not None:
                path = folder / name / (device or "") / ("report.json" if name == "validate" else "metrics.json")
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(artifact))
                run.log_artifact(path, f"{name}/{device}")
            if fail:
                raise RuntimeError(fail)
            return run.run_id
    except RuntimeError:
        return ""


def _declare_produced(params) -> None:
    from mlflow.data.http_dataset_source import HTTPDatasetSource
    from mlflow.data.meta_dataset import MetaDataset

    dataset = MetaDataset(HTTPDatasetSource("http://127.0.0.1/hhar_sa"), name="hhar_sa", digest="0123456789abcdef")
    server.configured_mlflow(params).log_input(dataset, context="produced", tags={"data_hash": "0123456789abcdef"})


def _log_model(params, run_id: str, name: str) -> None:
    from mlflow.entities import LoggedModelOutput

    client = server.configured_mlflow(params).MlflowClient()
    experiment_id = client.get_run(run_id).info.experiment_id
    model = client.create_logged_model(experiment_id, name=name, source_run_id=run_id)
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, 0)])


def _night(params, key: str, folder: Path, outcomes: dict[str, dict]) -> None:
    """Every stage of the table for each device; `outcomes[device]`: its validate report, or the stage that fails."""
    client = server.configured_mlflow(params).MlflowClient()
    for stage in STAGES:
        for device in DEVICES if stage.per_device else [None]:
            outcome = outcomes.get(device, {})
            if device and outcome.get("fail") and STAGES.index(stage) > outcome["fail_index"]:
                continue  # the stages after the one that failed never start
            if stage.name == "register":
                if outcome.get("report", {}).get("passed"):
                    _register(params, client, key, folder, device, outcome)
                continue
            artifact = {"compress": compress_metrics(device or ""), "validate": outcome.get("report")}.get(stage.name)
            _stage(params, key, stage.name, device, folder, artifact,
                   outcome.get("fail") if device and stage.name == outcome.get("fail_stage") else None)


def _register(params, client, key: str, folder: Path, device: str, outcome: dict) -> None:
    from mlflow.exceptions import MlflowException

    report = outcome["report"]
    name = f"iot-compress-{report['dataset']}-{device}"
    run_id = _stage(params, key, "register", device, folder)
    try:
        client.create_registered_model(name)
    except MlflowException:
        pass
    version = client.create_model_version(name, f"runs:/{run_id}/model", run_id=run_id, tags={
        "validation_id": report["validation_id"], "champion_decision": outcome["decision"],
        "promoted": str("champion" in outcome["aliases"]).lower(), "pipeline_run": key,
        "accuracy": str(report["models"]["compressed"]["onnx"]["accuracy"]), "latency_ms": "0.3"}).version
    for alias in outcome["aliases"]:
        client.set_registered_model_alias(name, alias, version)


@pytest.fixture
def two_nights(tmp_path, params_file):
    """Night 1: both devices pass and are registered. Night 2 (compress.budget.latency=0.33): ort-1t passes again
    (a candidate, not champion); tflite-1t's compress fails."""
    path = params_file()
    params = load_params(path)
    _night(params, NIGHT_1, tmp_path / "n1", {
        d: {"report": validate_report(d, validation_id=f"{d}-1"), "decision": "no champion yet",
            "aliases": ["candidate", "champion"]} for d in DEVICES})
    time.sleep(0.01)  # the nights' parent runs start in order
    _night(load_params(path, ["compress.budget.latency=0.33"]), NIGHT_2, tmp_path / "n2", {
        "ort-1t": {"report": validate_report("ort-1t", accuracy=0.905, validation_id="ort-1t-2"),
                   "decision": "does not beat the champion", "aliases": ["candidate"]},
        "tflite-1t": {"fail": "ModelConfigError: no layer left to prune", "fail_stage": "compress",
                      "fail_index": [s.name for s in STAGES].index("compress")}})
    return path


def test_the_summary_of_a_night_reads_every_device_from_mlflow_and_writes_the_parent_run(tmp_path, two_nights):
    from components.tracking.night import summarise

    params = load_params(two_nights, ["compress.budget.latency=0.33"])
    started = time.perf_counter()
    night = summarise(params, NIGHT_2, file_params=load_params(two_nights), devices=DEVICES, out=tmp_path / "summary")
    took = time.perf_counter() - started
    ort, tfl = night.devices
    assert (ort.verdict, tfl.verdict) == ("PASSED", "FAILED in compress")
    assert tfl.error == "RuntimeError: ModelConfigError: no layer left to prune"  # stage_run's `error` tag
    assert ort.registered == {"name": "iot-compress-hhar_sa-ort-1t", "version": "2", "aliases": ["candidate"],
                              "decision": "does not beat the champion"}
    assert ort.champion["version"] == "1"

    client = server.configured_mlflow(params).MlflowClient()
    parent = client.get_run(night.run_id)
    assert parent.data.tags[tracking.PARENT_TAG] == NIGHT_2
    note = parent.data.tags["mlflow.note.content"]
    assert "### Night nightly-2: 1 of 2 devices passed" in note and "**tflite-1t: FAILED in compress**" in note
    metrics = parent.data.metrics
    assert metrics["ort-1t.accuracy"] == 0.905 and metrics["ort-1t.passed"] == 1.0
    assert metrics["tflite-1t.passed"] == 0.0 and metrics["ort-1t.champion_version"] == 1.0
    assert 0 < metrics["summary_s"] <= took < 30
    assert parent.data.params == {"compress.budget.latency": "0.33"}  # only what the night changed
    logged = {f.path for f in client.list_artifacts(night.run_id, "summary")}
    assert {"summary/summary.html", "summary/pareto.png", "summary/trend.png", "summary/summary.json"} <= logged

    [declared] = parent.inputs.dataset_inputs  # the data the night's ingest produced, on the parent run's page
    assert (declared.dataset.name, declared.dataset.digest) == ("hhar_sa", "0123456789abcdef")
    assert {t.key: t.value for t in declared.tags} == {"mlflow.data.context": "pipeline",
                                                        "data_hash": "0123456789abcdef"}

    made = {client.get_logged_model(m.model_id).name for m in parent.outputs.model_outputs}
    assert made == {"compressed-ort-1t"}  # night 2's compress of tflite-1t failed: no model

    # night 1 has no summary metrics: the registry tells what passed then (tflite-1t's version 1), and the champion
    kept = json.loads((tmp_path / "summary" / "summary.json").read_text())
    assert [(r["accuracy"], r["from_registry"]) for r in kept["trend"]["ort-1t"]] == [(0.9, 1.0), (0.905, None)]
    assert [r["champion_accuracy"] for r in kept["trend"]["ort-1t"]] == [0.9, 0.9]
    assert [(r["passed"], r["from_registry"]) for r in kept["trend"]["tflite-1t"]] == [(1.0, 1.0), (0.0, None)]
    assert "`@candidate`" in note and " @candidate" not in note  # not a link to a GitHub user in the UI
    page = (tmp_path / "summary" / "summary.html").read_text()
    assert page.count("src='data:image/png;base64,") == 2


def test_the_trend_reads_the_earlier_nights_summary_and_the_report_command_prints_the_table(tmp_path, two_nights):
    from components.tracking.night import summarise

    file_params = load_params(two_nights)
    first = summarise(file_params, NIGHT_1, file_params=file_params, devices=DEVICES, out=tmp_path / "s1")
    assert first.passed and first.params_changed == {}
    second = summarise(load_params(two_nights, ["compress.budget.latency=0.33"]), NIGHT_2, file_params=file_params,
                       devices=DEVICES, out=tmp_path / "s2")
    trend = json.loads((tmp_path / "s2" / "summary.json").read_text())["trend"]
    assert [(r["accuracy"], r["from_registry"]) for r in trend["ort-1t"]] == [(0.9, None), (0.905, None)]
    assert [r["champion_accuracy"] for r in trend["ort-1t"]] == [0.9, 0.9]
    assert [r["passed"] for r in trend["tflite-1t"]] == [1.0, 0.0]

    latest = components_cli(tmp_path, "report", "--params", str(two_nights), timeout=120)
    assert latest.returncode == 1, latest.stderr[-2000:]
    lines = latest.stdout.splitlines()
    assert lines[0] == "Night nightly-2: 1 of 2 devices passed"
    assert lines[2].split() == ["device", "verdict", "accuracy", "(95", "%", "CI)", "baseline", "drop", "per", "user",
                                "latency", "ratio", "size", "ratio", "energy", "mJ", "registered"]
    assert lines[3].split()[:2] == ["ort-1t", "PASSED"] and "iot-compress-hhar_sa-ort-1t v2 @candidate" in lines[3]
    assert lines[4].split()[:4] == ["tflite-1t", "FAILED", "in", "compress"]
    assert "  tflite-1t: compress: RuntimeError: ModelConfigError: no layer left to prune" in lines
    assert lines[-1] == f"MLflow run {second.run_id}"

    earlier = components_cli(tmp_path, "report", "--params", str(two_nights), "--run", first.run_id, timeout=120)
    assert earlier.returncode == 0, earlier.stdout + earlier.stderr[-2000:]
    assert earlier.stdout.startswith("Night nightly-1: 2 of 2 devices passed")

    missing = components_cli(tmp_path, "report", "--params", str(two_nights), "--run", "0" * 32, timeout=120)
    assert missing.returncode == 2 and missing.stderr.startswith(f"error: --run {'0' * 32}: no such MLflow run")
    child = components_cli(tmp_path, "report", "--params", str(two_nights), "--run",
                           _child_run(file_params), timeout=120)
    assert child.returncode == 2 and "not a pipeline run" in child.stderr


def _child_run(params) -> str:
    client = server.configured_mlflow(params).MlflowClient()
    experiment = client.get_experiment_by_name(params.pipeline.experiment)
    return client.search_runs([experiment.experiment_id], "attributes.run_name = 'ingest'")[0].info.run_id


def test_report_without_any_pipeline_run_is_a_user_error(tmp_path, params_file):
    out = components_cli(tmp_path, "report", "--params", str(params_file()), timeout=120)
    assert out.returncode == 2 and out.stderr.startswith("error: no MLflow experiment 'compress_nightly'")
    assert "Traceback" not in out.stderr


def test_the_airflow_summary_task_ends_the_parent_run_and_fails_when_a_device_failed(tmp_path, two_nights,
                                                                                      monkeypatch):
    from airflow.sdk.exceptions import AirflowFailException

    from components.drivers import airflow_tasks

    monkeypatch.setenv("IOT_COMPRESS_PARAMS", str(two_nights))
    conf = {"devices": DEVICES, "overrides": ["compress.budget.latency=0.33"]}
    with pytest.raises(AirflowFailException, match=r"devices that failed a stage: tflite-1t \(compress\)"):
        airflow_tasks.summarise_in_airflow({"params": conf, "run_id": NIGHT_2})
    params = load_params(two_nights)
    client = server.configured_mlflow(params).MlflowClient()
    experiment = client.get_experiment_by_name(params.pipeline.experiment)
    [parent] = client.search_runs([experiment.experiment_id], f"tags.{tracking.PARENT_TAG} = '{NIGHT_2}'")
    assert parent.info.status == "FAILED" and parent.data.params == {"compress.budget.latency": "0.33"}
    assert (tmp_path / ".state" / "runs" / NIGHT_2 / "reports" / "summary" / "summary.html").exists()
    conf = {"devices": DEVICES, "overrides": []}
    assert airflow_tasks.summarise_in_airflow({"params": conf, "run_id": NIGHT_1}).endswith("summary")


def test_the_summary_command_writes_and_ends_the_night_as_kubeflows_exit_handler_runs_it(tmp_path, two_nights):
    """`python -m components summary`, as the Kubeflow pipeline's exit handler (components/drivers/kfp_tasks.py) calls it."""
    out = components_cli(tmp_path, "summary", "--params", str(two_nights), "-p", "compress.budget.latency=0.33",
                         "--pipeline-key", NIGHT_2, *(arg for d in DEVICES for arg in ("--device", d)), "--report",
                         str(tmp_path / "kfp-report"), timeout=120)
    assert out.returncode == 1, out.stdout + out.stderr[-2000:]
    assert out.stdout.startswith("Night nightly-2: 1 of 2 devices passed")
    assert out.stderr.strip().endswith("error: devices that failed a stage: tflite-1t (compress)")
    assert (tmp_path / "kfp-report" / "summary.html").exists()
    params = load_params(two_nights)
    client = server.configured_mlflow(params).MlflowClient()
    experiment = client.get_experiment_by_name(params.pipeline.experiment)
    [parent] = client.search_runs([experiment.experiment_id], f"tags.{tracking.PARENT_TAG} = '{NIGHT_2}'")
    assert parent.info.status == "FAILED" and parent.data.params == {"compress.budget.latency": "0.33"}

    bad = components_cli(tmp_path, "summary", "--params", str(two_nights), "--pipeline-key", NIGHT_1, "--device",
                         "ort-1tt", timeout=120)  # a typo is refused, not reported as a device that failed
    assert bad.returncode == 2 and "unknown device 'ort-1tt'" in bad.stderr
    keyless = components_cli(tmp_path, "summary", "--params", str(two_nights), timeout=120)
    assert keyless.returncode == 2 and "summary needs --pipeline-key" in keyless.stderr


def test_a_summary_written_again_declares_nothing_twice_and_a_failing_one_still_ends_the_night(tmp_path, two_nights,
                                                                                                monkeypatch):
    from components.tracking import night as summary_run

    params = load_params(two_nights, ["compress.budget.latency=0.33"])
    for attempt in ("a", "b"):  # an Airflow clear, a rerun
        night = summary_run.summarise(params, NIGHT_2, file_params=load_params(two_nights), devices=DEVICES,
                                      out=tmp_path / attempt)
    client = server.configured_mlflow(params).MlflowClient()
    parent = client.get_run(night.run_id)
    assert len(parent.inputs.dataset_inputs) == 1 and len(parent.outputs.model_outputs) == 1

    def broken(*args, **kwargs):
        raise RuntimeError("the figures could not be drawn")

    monkeypatch.setattr(summary_run, "summarise", broken)
    with pytest.raises(RuntimeError, match="could not be drawn"):
        summary_run.close_night(load_params(two_nights), NIGHT_1, file_params=load_params(two_nights),
                                devices=DEVICES, out=tmp_path / "c")
    experiment = client.get_experiment_by_name(params.pipeline.experiment)
    [first] = client.search_runs([experiment.experiment_id], f"tags.{tracking.PARENT_TAG} = '{NIGHT_1}'")
    assert first.info.status == "FAILED"  # not left RUNNING by the step that was to end it


def test_the_figures_render_headless_with_failed_devices_and_empty_trends(tmp_path):
    from components.reports.night import night_metrics, trend
    from components.reports.night_plots import pareto_png, trend_png
    from tests.e2e.browser import png_size
    from tests.unit.test_summary import night

    pareto = pareto_png(night(), tmp_path / "pareto.png")
    rows = trend([(1000, night_metrics(night())), (2000, {"ort-1t.accuracy": 0.92, "ort-1t.passed": 1.0})],
                 [d.device for d in night().devices])
    trend_file = trend_png(rows, tmp_path / "trend.png", 14)
    for path in (pareto, trend_file):
        width, height = png_size(path)
        assert width >= 1000 and height >= 400 and path.stat().st_size > 10_000
