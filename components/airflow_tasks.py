"""What the Airflow tasks call: find params, pick a run-keyed output folder, run a stage.

Kept here, in the importable package, so the DAG file holds no logic; this
module does not import Airflow.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from components.config import PARAMS_ENV, load_params

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def params_path() -> Path:
    return Path(os.environ.get(PARAMS_ENV, PROJECT_ROOT / "params.yaml"))


def run_output_dir(runs_dir: Path, run_id: str, stage: str) -> Path:
    """A folder per Airflow run and stage, so a retried or re-run task overwrites only its own output."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id).strip("_") or "run"
    return runs_dir / safe / stage


def run_stage(stage: str, run_id: str, input_dir: str | None = None) -> str:
    """Run `stage` for the Airflow run `run_id` on the previous stage's output; return its output folder."""
    params = load_params(params_path())
    output_dir = run_output_dir(params.path(params.pipeline.runs_dir), run_id, stage)
    if stage == "ingest":
        from components import ingest

        return str(ingest.run(params, output_dir, pipeline_key=run_id).output_dir)
    if stage == "train":
        from components import train

        return str(train.run(params, output_dir, Path(input_dir), pipeline_key=run_id).output_dir)
    raise ValueError(f"unknown stage {stage!r}")


def device_routes() -> list[dict[str, str]]:
    """One entry per device to profile: its name, Celery queue and Airflow pool, in pool-file order.

    The DAG maps `profile` over this list and the cluster policy in
    infra/airflow/airflow_local_settings.py reads it again to route each
    mapped task instance (Airflow cannot map `queue`/`pool` per instance).
    """
    from components.devices.pool import load_pool, select

    params = load_params(params_path())
    pool = load_pool(params.path(params.profile.devices_file))
    return [{"device": d.name, "queue": d.queue, "pool": d.pool} for d in select(pool, params.profile.devices)]


def run_profile(device: str, run_id: str) -> str:
    """Profile one device for the Airflow run `run_id`; return its output folder.

    Retries of the task resume the device's append-only log in the run-keyed folder.
    """
    from components import profile

    params = load_params(params_path())
    output_dir = run_output_dir(params.path(params.pipeline.runs_dir), run_id, "profile") / device
    report_dir = output_dir / "report"
    return str(profile.run(params, device, output_dir, report_dir, pipeline_key=run_id).table_path.parent)


def run_compress(device: str, run_id: str, ingest_dir: str, train_dir: str) -> str:
    """Compress this run's baseline for one device with this run's latency model of it; return the model folder.

    The search checkpoints into the run-keyed folder, so a retried task resumes it.
    """
    from components import compress

    params = load_params(params_path())
    runs_dir = params.path(params.pipeline.runs_dir)
    output_dir = run_output_dir(runs_dir, run_id, "compress") / device
    result = compress.run(params, device, Path(train_dir) / "model", Path(ingest_dir),
                          run_output_dir(runs_dir, run_id, "fit_latency") / device, output_dir,
                          output_dir / "report", pipeline_key=run_id)
    return str(result.model_dir)


def run_fit_latency(device: str, run_id: str) -> str:
    """Fit one device's latency model from this run's profile of it; return the model's folder.

    The profile folder is the run-keyed one `run_profile` wrote, so each
    device's fit reads only its own table and runs even when another device's
    profile failed (the DAG gives this task trigger rule `all_done`).
    """
    from components import fit_latency

    params = load_params(params_path())
    runs_dir = params.path(params.pipeline.runs_dir)
    profile_dir = run_output_dir(runs_dir, run_id, "profile") / device
    output_dir = run_output_dir(runs_dir, run_id, "fit_latency") / device
    result = fit_latency.run(params, device, profile_dir, output_dir, output_dir / "report", pipeline_key=run_id)
    return str(result.model_path.parent)


def run_validate(device: str, run_id: str, ingest_dir: str, train_dir: str) -> str:
    """Export and validate this run's baseline and this run's compressed model on one device; return the report.

    Routed to the device's queue (the cluster policy), so the models run where they will be deployed.
    """
    from components import validate

    params = load_params(params_path())
    runs_dir = params.path(params.pipeline.runs_dir)
    output_dir = run_output_dir(runs_dir, run_id, "validate") / device
    result = validate.run(params, device, Path(train_dir) / "model",
                          run_output_dir(runs_dir, run_id, "compress") / device / "model", Path(ingest_dir),
                          run_output_dir(runs_dir, run_id, "fit_latency") / device, output_dir,
                          output_dir / "report", pipeline_key=run_id)
    return str(result.report_path)


def run_register(run_id: str) -> list[dict]:
    """Register every device of this run whose validation passed, then fail if any device could not be settled.

    Every device is tried: one without a report (its validate task failed),
    a registry that did not answer or a changed export fails this task at the
    end, after the others were registered, so a broken night is never green.
    """
    from components import register

    params = load_params(params_path())
    runs_dir = params.path(params.pipeline.runs_dir)
    outcomes, problems = [], []
    for route in device_routes():
        folder = run_output_dir(runs_dir, run_id, "validate") / route["device"] / "report"
        if not (folder / "report.json").exists():
            problems.append(f"{route['device']}: no validation report (its validate task failed or did not run)")
            continue
        try:
            outcomes.append(register.run(params, route["device"], folder, pipeline_key=run_id).to_dict())
        except Exception as exc:  # the next device is still registered; this one is reported below
            problems.append(f"{route['device']}: {type(exc).__name__}: {exc}")
    if problems:
        raise RuntimeError("register: " + "; ".join(problems) + f" (registered or refused: "
                           f"{', '.join(o['device'] for o in outcomes) or 'none'})")
    return outcomes
