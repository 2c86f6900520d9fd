"""The night's summary on the pipeline's parent run, read back from MLflow.

Every device's results come from the night's child runs (the pipeline key
tag, their `stage` and `device`): validate's `report.json`, compress's
`metrics.json`, the stage runs that failed and their `error` tag, and the
registry (the version holding the validation, its aliases, the champion). So
the summary reads the same in the command line's layout, an Airflow run's
run-keyed folders, or on a reviewer's machine that only reaches the tracking
server. It writes onto the parent run: its description (`mlflow.note.content`),
`<device>.<key>` metrics, the settings that differ from the params file as
params, and `summary/` (HTML with the figures inside, the PNGs, JSON, Markdown),
also kept in `reports/summary/` (or the run's reports folder in an Airflow run).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from components import stages
from components.artifacts.atomic import write_text_atomic
from components.config import ConfigError, Params
from components.reports.night import (
    DeviceNight,
    Night,
    description_markdown,
    night_metrics,
    params_diff,
    summary_html,
    table_text,
    trend,
)
from components.tracking import registry, server
from components.tracking import runs as tracking

log = logging.getLogger(__name__)
ARTIFACT_DIR = "summary"  # on the parent run
DEVICES_TAG = "summary.devices"  # the devices the night covered, in pool order (JSON)
NOTE_TAG = "mlflow.note.content"  # what the MLflow UI shows as the run's description
ENDED = ("FAILED", "KILLED")


def summarise(params: Params, pipeline_key: str, *, file_params: Params, devices: Sequence[str] | None = None,
              out: Path | None = None, table: Sequence[stages.Stage] | None = None) -> Night:
    """Write the night's summary onto the parent run of `pipeline_key` (and into `out`); return it.

    `devices`: those the night covered (default: every device its runs name); `file_params`: the params file
    as written, so that the parent run's params are only what this night changed.
    """
    started = time.perf_counter()
    mlflow, client = _client(params)
    out = Path(out) if out is not None else stages.Layout(params).summary()
    with server.reachable(mlflow, f"summarise the pipeline run {pipeline_key}"):
        experiment_id = server.experiment_id(mlflow, params, create=False)
        parent, night = read_night(client, experiment_id, pipeline_key, params, devices, table)
        night = dataclasses.replace(night, params_changed=params_diff(params.to_dict(), file_params.to_dict()))
        metrics = night_metrics(night)
        count = params.pipeline.summary_nights
        nights = _trend_nights(client, experiment_id, count, parent.info.run_id, metrics)
        since = nights[-1][1] if len(nights) >= count else 0  # older versions would fall out of the chart
        nights += _registry_nights(client, night, params, {key: m for key, _, m in nights}, since)
        rows = trend([(started, m) for _, started, m in nights], [d.device for d in night.devices], last=count)
        paths = write_summary(night, rows, out, count)
        _log(client, parent.info.run_id, night, metrics, paths)
        _declare_lineage(client, experiment_id, pipeline_key, parent.info.run_id)
        took = time.perf_counter() - started
        client.log_metric(parent.info.run_id, "summary_s", round(took, 3))
    log.info("summary of %s on MLflow run %s in %.1f s", pipeline_key, parent.info.run_id, took)
    return night


def close_night(params: Params, pipeline_key: str, *, file_params: Params, devices: Sequence[str] | None,
                out: Path, table: Sequence[stages.Stage] | None = None) -> Night:
    """A scheduler's last step (the Airflow DAG's `summary` task, Kubeflow's exit handler): the night's summary on
    its parent run, which it then ends, FAILED when a device failed a stage (failing gates are a result) or when
    the summary itself could not be written: a night is never left RUNNING by its last step."""
    try:
        night = summarise(params, pipeline_key, file_params=file_params, devices=devices, out=out, table=table)
    except BaseException:
        tracking.end_pipeline_run(params, pipeline_key, "FAILED")  # best effort: the summary's error is raised
        raise
    tracking.end_pipeline_run(params, pipeline_key, "FAILED" if stage_failures(night) else "FINISHED")
    return night


def stage_failures(night: Night) -> list[str]:
    """`device (stage)` for every device whose stage failed or did not run."""
    return [f"{d.device} ({d.failed_stage})" for d in night.devices if d.failed_stage]


def _client(params: Params):
    """The tracking client and mlflow, without the download progress bars a summary's few small files would draw."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    mlflow = server.configured_mlflow(params)
    return mlflow, mlflow.MlflowClient()


def read_night(client, experiment_id: str, key: str, params: Params, devices: Sequence[str] | None = None,
               table: Sequence[stages.Stage] | None = None):
    """(the parent run, the Night) of pipeline run `key`, from its runs, their artifacts and the registry."""
    runs = client.search_runs([experiment_id], f"tags.{tracking.PIPELINE_KEY_TAG} = '{key}'", max_results=5000,
                              order_by=["attributes.start_time ASC"])
    parents = [r for r in runs if r.data.tags.get(tracking.PARENT_TAG) == key]
    if not parents:
        raise ConfigError(f"no pipeline run {key!r} in experiment {params.pipeline.experiment!r}")
    latest = {r.info.run_name: r for r in runs if tracking.PARENT_TAG not in r.data.tags}  # a retry's last word
    if devices is None:
        tagged = json.loads(parents[0].data.tags.get(DEVICES_TAG) or "[]")
        devices = tagged or sorted({r.data.tags["device"] for r in latest.values() if r.data.tags.get("device")})
    table = table or stages.STAGES
    nights = tuple(_device_night(client, latest, device, params, table) for device in devices)
    return parents[0], Night(key, parents[0].info.run_id, nights, dict(parents[0].data.params))


def _device_night(client, runs: dict, device: str, params: Params, table) -> DeviceNight:
    failed, error = _failed_stage(runs, device, table)
    validated = runs.get(tracking.run_name("validate", device))
    compressed = runs.get(tracking.run_name("compress", device))
    report = _artifact(client, validated, stages.artifact("validate", "report.json", device))
    metrics = _artifact(client, compressed, stages.artifact("compress", "metrics.json", device))
    night = DeviceNight(device, report, metrics, failed_stage=failed, error=error)
    if report is None:
        return night
    name = registry.registered_model_name(params, report["dataset"], device)
    registered = _registered(client, name, report["validation_id"]) if report["passed"] else None
    if report["passed"] and registered is None and failed is None:
        failed, error = "register", "no registered version holds this validation (see register's log)"
    return dataclasses.replace(night, registered=registered, champion=_champion(client, name), model_name=name,
                               failed_stage=failed, error=error)


def _failed_stage(runs: dict, device: str, table) -> tuple[str | None, str]:
    """The first stage of the table whose run for `device` failed or is missing (register opens a run only when
    it makes a version: its absence is judged against the registry instead)."""
    for stage in table:
        run = runs.get(tracking.run_name(stage.name, device if stage.per_device else None))
        if run is None:
            if stage.name == "register":
                continue
            return stage.name, ""
        if run.info.status in ENDED:
            return stage.name, run.data.tags.get(tracking.ERROR_TAG, f"its run ended {run.info.status}")
    return None, ""


def _artifact(client, run, path: str) -> dict | None:
    from mlflow.exceptions import MlflowException

    if run is None or run.info.status in ENDED:
        return None
    with tempfile.TemporaryDirectory(prefix="summary-") as tmp:
        try:
            local = client.download_artifacts(run.info.run_id, path, tmp)
        except (MlflowException, OSError) as exc:  # a missing artifact is a gap in the summary, said in the log
            if server.transient(exc):  # the server is down: `reachable` says so once
                raise
            log.warning("run %s has no artifact %s (%s)", run.info.run_id, path, exc)
            return None
        return json.loads(Path(local).read_text())


def _registered(client, name: str, validation_id: str) -> dict | None:
    version = registry.version_of_validation(client, name, validation_id)
    if version is None:
        return None
    v = client.get_model_version(name, version)  # a search's answer leaves the aliases out
    return {"name": name, "version": str(v.version), "aliases": sorted(v.aliases or ()),
            "decision": v.tags.get(registry.DECISION_TAG, "")}


def _champion(client, name: str) -> dict | None:
    v = registry.alias_version(client, name, registry.CHAMPION)
    if v is None:
        return None
    return {"version": str(v.version), "accuracy": v.tags.get("accuracy"), "latency_ms": v.tags.get("latency_ms")}


def _trend_nights(client, experiment_id: str, count: int, run_id: str, metrics: dict
                  ) -> list[tuple[str, float, dict]]:
    """(pipeline key, start time, metrics) of the last `count` parent runs, newest first; this night's metrics are
    not logged yet."""
    runs = client.search_runs([experiment_id], f"tags.{tracking.PARENT_TAG} LIKE '%'", max_results=count,
                              order_by=["attributes.start_time DESC"])
    return [(r.data.tags[tracking.PARENT_TAG], r.info.start_time,
             metrics if r.info.run_id == run_id else dict(r.data.metrics)) for r in runs]


def _registry_nights(client, night: Night, params: Params, summarised: dict[str, dict], since_ms: float
                     ) -> list[tuple[str, float, dict]]:
    """The nights the parent runs cannot tell (from before the summary existed, or whose summary was never
    written), as the registry recorded them: each version since `since_ms` whose pipeline run's metrics
    (`summarised`: pipeline key -> its parent run's metrics) say nothing of its device is a night that device
    passed, with its accuracy (tag) and the champion after it (replaying each version's `champion_decision`).
    Their metrics carry `<device>.from_registry`."""
    from mlflow.exceptions import MlflowException

    found: dict[str, tuple[float, dict]] = {}
    for d in night.devices:
        name = d.model_name or registry.registered_model_name(params, params.ingest.dataset, d.device)
        try:
            versions = client.search_model_versions(f"name = '{name}'", max_results=1000)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                continue
            raise
        champion: tuple[float | None, float | None] = (None, None)  # (version, accuracy)
        for v in sorted(versions, key=lambda v: int(v.version)):
            accuracy = _tag_number(v.tags, "accuracy")
            if registry.was_promoted(v.tags):
                champion = (float(v.version), accuracy)
            key = v.tags.get("pipeline_run", "")
            if f"{d.device}.passed" in summarised.get(key, {}) or v.creation_timestamp < since_ms:
                continue
            when, metrics = found.setdefault(key or f"{name} v{v.version}", (v.creation_timestamp, {}))
            metrics |= {f"{d.device}.accuracy": accuracy, f"{d.device}.passed": 1.0,
                        f"{d.device}.champion_version": champion[0], f"{d.device}.champion_accuracy": champion[1],
                        f"{d.device}.from_registry": 1.0}
    return [(key, when, {k: v for k, v in m.items() if v is not None}) for key, (when, m) in found.items()]


def _tag_number(tags: dict, key: str) -> float | None:
    try:
        return float(tags[key])
    except (KeyError, ValueError):
        return None


def _declare_lineage(client, experiment_id: str, key: str, run_id: str) -> None:
    """On the parent run too, so that its page says what the night read and made: the windows the night's ingest
    produced, as an input (context `pipeline`), and the models its train and compress runs logged, as outputs.
    Once: a summary written again (an Airflow clear, a rerun) adds nothing the parent already declares. Best
    effort: the verdicts and figures are logged already, and a missing link is said in the log."""
    from mlflow.entities import DatasetInput, InputTag, LoggedModelOutput
    from mlflow.exceptions import MlflowException
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    try:
        runs = client.search_runs([experiment_id], f"tags.{tracking.PIPELINE_KEY_TAG} = '{key}' and "
                                  "attributes.status = 'FINISHED'", max_results=5000)
        parent = client.get_run(run_id)
        stage = {r.info.run_id: r.data.tags.get("stage") for r in runs}
        declared = {(i.dataset.name, i.dataset.digest) for i in parent.inputs.dataset_inputs}
        produced = [i for r in runs if stage[r.info.run_id] == "ingest" for i in r.inputs.dataset_inputs
                    if any(t.key == MLFLOW_DATASET_CONTEXT and t.value == "produced" for t in i.tags)
                    and (i.dataset.name, i.dataset.digest) not in declared]
        if produced:
            client.log_inputs(run_id, [DatasetInput(i.dataset, [InputTag(MLFLOW_DATASET_CONTEXT, "pipeline")]
                                                    + [t for t in i.tags if t.key != MLFLOW_DATASET_CONTEXT])
                                       for i in produced[-1:]])
        made = {m.model_id for r in runs if stage[r.info.run_id] in ("train", "compress") and r.outputs
                for m in r.outputs.model_outputs}
        made -= {m.model_id for m in (parent.outputs.model_outputs if parent.outputs else ())}
        if made:
            client.log_outputs(run_id, [LoggedModelOutput(model_id, 0) for model_id in sorted(made)])
    except MlflowException as exc:
        if server.transient(exc):  # the server is down: `reachable` says so once
            raise
        log.warning("the night's data and models could not be declared on its parent run %s: %s", run_id, exc)


def write_summary(night: Night, trend_rows: dict, out: Path, nights: int) -> list[Path]:
    """summary.html (the figures embedded), pareto.png, trend.png, summary.md, summary.json in `out`."""
    from components.reports.night_plots import pareto_png, trend_png

    out.mkdir(parents=True, exist_ok=True)
    figures = {"Accuracy against latency and size, every device": pareto_png(night, out / "pareto.png"),
               f"The last {nights} nights": trend_png(trend_rows, out / "trend.png", nights)}
    images = {caption: "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
              for caption, path in figures.items()}
    write_text_atomic(out / "summary.html", summary_html(night, images))
    write_text_atomic(out / "summary.md", description_markdown(night))
    write_text_atomic(out / "summary.json", json.dumps({"key": night.key, "run_id": night.run_id,
                                                        "passed": night.passed, "metrics": night_metrics(night),
                                                        "params_changed": night.params_changed,
                                                        "devices": [_device_json(d) for d in night.devices],
                                                        "trend": trend_rows}, indent=2))
    return [out / "summary.html", *figures.values(), out / "summary.md", out / "summary.json"]


def _device_json(d: DeviceNight) -> dict:
    return {"device": d.device, "verdict": d.verdict, "passed": d.passed, "failed_stage": d.failed_stage,
            "error": d.error, "failed_gates": d.failed_gates, "registered": d.registered, "champion": d.champion}


def _log(client, run_id: str, night: Night, metrics: dict, paths: list[Path]) -> None:
    from mlflow.entities import Metric, Param, RunTag

    now = int(time.time() * 1000)
    tags = [RunTag(NOTE_TAG, description_markdown(night)),
            RunTag(DEVICES_TAG, json.dumps([d.device for d in night.devices])),
            RunTag("summary.passed", str(night.passed).lower())]
    client.log_batch(run_id, metrics=[Metric(tracking.metric_key(k), v, now, 0) for k, v in metrics.items()],
                     tags=tags)
    params = [Param(k, v[:6000]) for k, v in night.params_changed.items()]
    for i in range(0, len(params), 100):
        client.log_batch(run_id, params=params[i: i + 100])
    for path in paths:
        client.log_artifact(run_id, str(path), ARTIFACT_DIR)


# ---- the terminal: python -m components report [--run RUN_ID] ---------------------------------------------------


def report(params: Params, run_id: str | None = None) -> int:
    """Print the per-device table of the latest night (or parent run `run_id`): 0 if every device passed, else 1."""
    from mlflow.exceptions import MlflowException

    mlflow, client = _client(params)
    with server.reachable(mlflow, "read the night's runs"):
        experiment_id = server.experiment_id(mlflow, params, create=False)
        if run_id:
            try:
                run = client.get_run(run_id)
            except MlflowException as exc:
                raise ConfigError(f"--run {run_id}: no such MLflow run ({exc.error_code})") from None
            if tracking.PARENT_TAG not in run.data.tags:
                raise ConfigError(f"--run {run_id}: not a pipeline run (its `{tracking.PARENT_TAG}` tag is missing); "
                                  "pass the parent run named `pipeline`")
        else:
            found = client.search_runs([experiment_id], f"tags.{tracking.PARENT_TAG} LIKE '%'", max_results=1,
                                       order_by=["attributes.start_time DESC"])
            if not found:
                raise ConfigError(f"no pipeline run in experiment {params.pipeline.experiment!r}; run "
                                  "`python -m components pipeline` first")
            run = found[0]
        _, night = read_night(client, run.info.experiment_id, run.data.tags[tracking.PARENT_TAG], params)
    print(table_text(night), end="")
    print(f"MLflow run {night.run_id}")
    return 0 if night.passed else 1
