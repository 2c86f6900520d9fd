"""The one module that talks to MLflow.

Default store: SQLite and a local artifact folder under `pipeline.state_dir`
(ignored by git), so a run needs no server. `MLFLOW_TRACKING_URI` in the
environment switches to a server. One run per stage execution, named after the
stage; when a pipeline key is given (the Airflow run id, or the one
`python -m components pipeline` makes), the stage run is nested under one
parent run per key.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from components.config import Params

log = logging.getLogger(__name__)
PIPELINE_KEY_TAG = "pipeline_run_key"  # on every run of one pipeline execution
PARENT_TAG = "pipeline_parent"  # only on its parent run


def tracking_uri(params: Params) -> str:
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    db = params.path(params.pipeline.state_dir).resolve() / "mlflow" / "mlflow.db"
    return f"sqlite:///{db}"


def _mlflow(params: Params):
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    uri = tracking_uri(params)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    # mlflow also exports the URI to the environment; undo that, so that the
    # environment keeps meaning "the user chose a server" (and a later call
    # with other params, or a child process, is not silently pointed here).
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    return mlflow


def configured_mlflow(params: Params):
    """The mlflow module, pointed at this pipeline's tracking store (for registry calls outside a stage run)."""
    return _mlflow(params)


def _experiment_id(mlflow, params: Params) -> str:
    name = params.pipeline.experiment
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if mlflow.get_tracking_uri().startswith("sqlite:"):  # the embedded default: artifacts beside the DB
        location = (params.path(params.pipeline.state_dir).resolve() / "mlflow" / "artifacts").as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


def git_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if out.returncode != 0:
        return "unknown"
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


class StageRun:
    """What a stage may record; wraps the active MLflow run."""

    def __init__(self, mlflow, run):
        self._mlflow, self.run = mlflow, run

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        flat = {k: (json.dumps(v) if isinstance(v, (list, tuple)) else v) for k, v in flatten(params).items()}
        items = list(flat.items())
        for i in range(0, len(items), 100):
            self._mlflow.log_params(dict(items[i : i + 100]))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        clean = {_metric_key(k): float(v) for k, v in metrics.items()}
        self._mlflow.log_metrics(clean, step=step)

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self._mlflow.set_tags(dict(tags))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self._mlflow.log_artifact(str(path), artifact_path=artifact_path)

    def log_torch_model(self, model, input_example, name: str = "model") -> str:
        """Log a torch model as an MLflow model (ready to register) with its signature; return its URI.

        The pip requirements are explicit: inference would take ~11 s and drop torch's `+cpu`.
        """
        import numpy
        import torch
        from mlflow.models import infer_signature

        with torch.no_grad():
            output = model(torch.from_numpy(input_example)).numpy()
        info = self._mlflow.pytorch.log_model(
            model, name=name, input_example=input_example, signature=infer_signature(input_example, output),
            pip_requirements=[f"torch=={torch.__version__}", f"numpy=={numpy.__version__}"],
        )
        return info.model_uri


def _metric_key(key: str) -> str:
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in key)


def _pipeline_run_id(mlflow, experiment_id: str, key: str, commit: str) -> str:
    """The parent run for `key`, created on first use (so retried tasks reuse it)."""
    found = mlflow.search_runs(
        [experiment_id], filter_string=f"tags.{PARENT_TAG} = '{key}'", max_results=1, output_format="list"
    )
    if found:
        return found[0].info.run_id
    client = mlflow.MlflowClient()
    run = client.create_run(experiment_id, run_name="pipeline", tags={PARENT_TAG: key, PIPELINE_KEY_TAG: key, "git_commit": commit})
    return run.info.run_id


@contextmanager
def stage_run(params: Params, stage: str, pipeline_key: str | None = None, device: str | None = None
              ) -> Iterator[StageRun]:
    """Open the MLflow run of one stage execution (`stage/device` for per-device stages); FAILED if it raises."""
    mlflow = _mlflow(params)
    experiment_id = _experiment_id(mlflow, params)
    commit = git_commit(params.root)
    parent = _pipeline_run_id(mlflow, experiment_id, pipeline_key, commit) if pipeline_key else None
    tags = {"stage": stage, "git_commit": commit}
    if pipeline_key:
        tags[PIPELINE_KEY_TAG] = pipeline_key
    if device:
        tags["device"] = device
    with mlflow.start_run(run_name=f"{stage}/{device}" if device else stage, experiment_id=experiment_id, parent_run_id=parent,
                          nested=parent is not None, tags=tags) as run:
        log.info("MLflow run %s (%s) in %s", run.info.run_id, stage, tracking_uri(params))
        yield StageRun(mlflow, run)


def end_pipeline_run(params: Params, pipeline_key: str, status: str = "FINISHED") -> None:
    """Mark the parent run of `pipeline_key` as ended."""
    mlflow = _mlflow(params)
    experiment_id = _experiment_id(mlflow, params)
    run_id = _pipeline_run_id(mlflow, experiment_id, pipeline_key, git_commit(params.root))
    mlflow.MlflowClient().set_terminated(run_id, status=status)
