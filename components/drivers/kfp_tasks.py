"""What a Kubeflow task runs: the body of each lightweight component infra/kfp/pipeline.py generates.

Each component is a Python function whose arguments are the run's parameters
(pipeline key, params overrides, tracking URI, the device) and its artifacts;
it calls one function here, which runs the same command line as DVC, the
Makefile and the Airflow tasks (`python -m components <stage>`, in-process)
with `--input`/`--output`/`--report` pointing at the artifacts' local paths.
So the stage code is the same in every driver, and Kubeflow stays a shell:
a stage that fails raises here, which fails the task.

The tracking URI is a run parameter rather than a compile-time setting: it
becomes this process's MLFLOW_TRACKING_URI, which components.tracking.runs reads
before the params file. In a cluster, the tracking server's credentials
arrive as MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD from a
Kubernetes secret (see infra/kfp/README.md), never as arguments.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence


class TaskFailed(RuntimeError):
    """A stage (or the summary) exited with an error status; its error is in the task's log above."""


def pipeline_key(run_key: str, job_id: str) -> str:
    """The key every MLflow run of this pipeline run is nested under: the given run key, else the KFP job's id."""
    return run_key or job_id


def run_stage(stage: str, *, pipeline_key: str, overrides: Sequence[str] = (), tracking_uri: str = "",
              device: str = "", inputs: Mapping[str, str] | None = None, output: str | None = None,
              report: str) -> None:
    """`python -m components <stage>` on the task's artifacts: `inputs` maps each upstream stage to the local path
    of its output artifact; `output` and `report` are this task's own artifacts' paths."""
    argv = [stage, "--pipeline-key", pipeline_key, "--report", report]
    argv += ["--device", device] if device else []
    argv += [arg for up, path in (inputs or {}).items() for arg in ("--input", f"{up}={path}")]
    argv += ["--output", output] if output else []
    _main(argv, overrides, tracking_uri, f"{stage}" + (f" on {device}" if device else ""))


def summarise(*, pipeline_key: str, devices: Sequence[str], overrides: Sequence[str] = (), tracking_uri: str = "",
              report: str | None = None) -> None:
    """`python -m components summary`: the night's summary on its MLflow parent run, which it ends."""
    argv = ["summary", "--pipeline-key", pipeline_key, *(arg for d in devices for arg in ("--device", d))]
    argv += ["--report", report] if report else []
    _main(argv, overrides, tracking_uri, "the night's summary")


def placement(device: str, overrides: Sequence[str] = ()) -> tuple[dict[str, str], list[dict[str, str]]]:
    """(nodeSelector, tolerations) of the device's on-device tasks, from the pool file (`kubernetes` of its entry);
    an unknown device fails here, before any of its stages starts."""
    from components.config import default_params_path, load_params
    from components.devices.pool import chosen

    (entry,) = chosen(load_params(default_params_path(), list(overrides)), [device])
    return entry.kubernetes.to_kubernetes()


def _main(argv: list[str], overrides: Sequence[str], tracking_uri: str, what: str) -> None:
    from components.__main__ import main

    if tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    argv += [arg for item in overrides for arg in ("-p", item)]
    code = main(argv)
    if code:
        raise TaskFailed(f"{what} failed (exit status {code}); its error is above")
