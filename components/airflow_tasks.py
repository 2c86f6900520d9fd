"""What the Airflow tasks call: find params, pick a run-keyed output folder, run a stage.

Kept here, in the importable package, so the DAG file holds no logic; this
module does not import Airflow (the callbacks receive Airflow's context, a
mapping, and only read it).

Per-run settings come from the DAG run's params (the trigger's `conf`):
`devices`, a subset of the pool to run (empty: the params file's choice), and
`overrides`, `section.key=value` strings applied on top of the params file,
exactly as `python -m components -p` takes them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import urllib.request
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

from components.config import PARAMS_ENV, Params, load_params

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SENSING_DATA_ASSET = "iot-compress-sensing-data"  # the Airflow asset whose update triggers compress_nightly
ALERT_WEBHOOK_ENV = "IOT_COMPRESS_ALERT_WEBHOOK"  # optional: POST each failure alert here as JSON
log = logging.getLogger(__name__)


def params_path() -> Path:
    return Path(os.environ.get(PARAMS_ENV, PROJECT_ROOT / "params.yaml"))


def run_output_dir(runs_dir: Path, run_id: str, stage: str) -> Path:
    """A folder per Airflow run and stage, so a retried or re-run task overwrites only its own output."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", run_id).strip("_") or "run"
    return runs_dir / safe / stage


def run_params(overrides: Sequence[str] = ()) -> Params:
    """The params file with this run's `section.key=value` overrides applied."""
    return load_params(params_path(), list(overrides))


def run_stage(stage: str, run_id: str, input_dir: str | None = None, overrides: Sequence[str] = ()) -> str:
    """Run `stage` for the Airflow run `run_id` on the previous stage's output; return its output folder."""
    params = run_params(overrides)
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
    from components.devices.pool import chosen

    return [{"device": d.name, "queue": d.queue, "pool": d.pool} for d in chosen(load_params(params_path()))]


def selected(device: str, devices: Sequence[str] | None) -> bool:
    """Whether this run covers `device`: every mapped device unless the run named a subset."""
    return not devices or device in devices


def check_devices(devices: Sequence[str] | None) -> None:
    """Refuse a run whose device subset names a device the pool does not map (a typo would skip everything)."""
    known = [r["device"] for r in device_routes()]
    unknown = [d for d in devices or () if d not in known]
    if unknown:
        raise ValueError(f"devices {unknown} are not in the pool this DAG maps ({', '.join(known)})")


def run_profile(device: str, run_id: str, overrides: Sequence[str] = ()) -> str:
    """Profile one device for the Airflow run `run_id`; return its output folder.

    Retries of the task resume the device's append-only log in the run-keyed folder.
    """
    from components import profile

    params = run_params(overrides)
    output_dir = run_output_dir(params.path(params.pipeline.runs_dir), run_id, "profile") / device
    report_dir = output_dir / "report"
    return str(profile.run(params, device, output_dir, report_dir, pipeline_key=run_id).table_path.parent)


def run_compress(device: str, run_id: str, ingest_dir: str, train_dir: str, overrides: Sequence[str] = ()) -> str:
    """Compress this run's baseline for one device with this run's latency model of it; return the model folder.

    The search checkpoints into the run-keyed folder, so a retried task resumes it.
    """
    from components import compress

    params = run_params(overrides)
    runs_dir = params.path(params.pipeline.runs_dir)
    output_dir = run_output_dir(runs_dir, run_id, "compress") / device
    result = compress.run(params, device, Path(train_dir) / "model", Path(ingest_dir),
                          run_output_dir(runs_dir, run_id, "fit_latency") / device, output_dir,
                          output_dir / "report", pipeline_key=run_id,
                          profile_dir=run_output_dir(runs_dir, run_id, "profile") / device)
    return str(result.model_dir)


def run_fit_latency(device: str, run_id: str, overrides: Sequence[str] = ()) -> str:
    """Fit one device's latency model from this run's profile of it; return the model's folder.

    The profile folder is the run-keyed one `run_profile` wrote, so each
    device's fit reads only its own table and runs even when another device's
    profile failed (the DAG gives this task trigger rule `all_done`).
    """
    from components import fit_latency

    params = run_params(overrides)
    runs_dir = params.path(params.pipeline.runs_dir)
    profile_dir = run_output_dir(runs_dir, run_id, "profile") / device
    output_dir = run_output_dir(runs_dir, run_id, "fit_latency") / device
    result = fit_latency.run(params, device, profile_dir, output_dir, output_dir / "report", pipeline_key=run_id)
    return str(result.model_path.parent)


def run_validate(device: str, run_id: str, ingest_dir: str, train_dir: str, overrides: Sequence[str] = ()) -> str:
    """Export and validate this run's baseline and this run's compressed model on one device; return the report.

    Routed to the device's queue (the cluster policy), so the models run where they will be deployed.
    """
    from components import validate

    params = run_params(overrides)
    runs_dir = params.path(params.pipeline.runs_dir)
    output_dir = run_output_dir(runs_dir, run_id, "validate") / device
    result = validate.run(params, device, Path(train_dir) / "model",
                          run_output_dir(runs_dir, run_id, "compress") / device / "model", Path(ingest_dir),
                          run_output_dir(runs_dir, run_id, "fit_latency") / device, output_dir,
                          output_dir / "report", pipeline_key=run_id)
    return str(result.report_path)


def run_register(run_id: str, devices: Sequence[str] | None = None, overrides: Sequence[str] = ()) -> list[dict]:
    """Register every device of this run whose validation passed, then fail if any device could not be settled.

    Every device is tried: one without a report (its validate task failed),
    a registry that did not answer or a changed export fails this task at the
    end, after the others were registered, so a broken night is never green.
    """
    from components import register

    params = run_params(overrides)
    runs_dir = params.path(params.pipeline.runs_dir)
    outcomes, problems = [], []
    for route in device_routes():
        if not selected(route["device"], devices):
            continue
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


def data_fingerprint(overrides: Sequence[str] = ()) -> dict:
    """Names, sizes and modification times of every file under the data root: changes when new data lands."""
    root = run_params(overrides).data_root()
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
    digest = hashlib.sha256()
    for path in files:
        stat = path.stat()
        digest.update(f"{path.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return {"data_root": str(root), "files": len(files), "fingerprint": digest.hexdigest()}


def failure_alert(context: Mapping, event: str = "failed") -> dict:
    """Say which stage and which device failed, in which run and on which try, and why.

    Written to the task's log (ERROR), appended to the run's `alerts.jsonl`
    beside its stage folders, and POSTed as JSON to $IOT_COMPRESS_ALERT_WEBHOOK
    when set (a chat or paging hook). An alert that cannot be delivered is
    logged, never raised: it must not mask the failure it reports.
    """
    ti = context.get("ti") or context.get("task_instance")
    run_id = str(context.get("run_id") or getattr(ti, "run_id", "") or "")
    device = getattr(ti, "rendered_map_index", None) or None
    if device is None:
        kwargs = getattr(getattr(ti, "task", None), "op_kwargs", None) or {}
        device = kwargs.get("device") if isinstance(kwargs, Mapping) else None
    exception = context.get("exception")
    alert = {
        "event": event,
        "dag_id": getattr(ti, "dag_id", None),
        "stage": getattr(ti, "task_id", None),
        "device": device,
        "run_id": run_id,
        "try_number": getattr(ti, "try_number", None),
        "max_tries": getattr(ti, "max_tries", None),
        "hostname": getattr(ti, "hostname", None),
        "error": f"{type(exception).__name__}: {exception}" if exception is not None else None,
        "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    where = f" for device {device}" if device else ""
    log.error("iot-compress: stage %s %s%s in run %s (try %s): %s", alert["stage"], event, where, run_id,
              alert["try_number"], alert["error"] or "no exception recorded")
    try:
        params = run_params()
        folder = run_output_dir(params.path(params.pipeline.runs_dir), run_id, "alerts").parent
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "alerts.jsonl", "a") as f:
            f.write(json.dumps(alert) + "\n")
    except Exception as exc:  # noqa: BLE001 - see the docstring
        log.error("could not record the alert in the run folder: %s", exc)
    hook = os.environ.get(ALERT_WEBHOOK_ENV)
    if hook:
        try:
            req = urllib.request.Request(hook, data=json.dumps(alert).encode(),
                                         headers={"Content-Type": "application/json"})
            urllib.request.urlopen(req, timeout=10).close()
        except Exception as exc:  # noqa: BLE001 - see the docstring
            log.error("could not POST the alert to %s: %s", hook, exc)
    return alert


async def nightly_deadline_missed(**kwargs) -> None:
    """The nightly run is still not done at its deadline (runs in the triggerer): say which run and how late."""
    context = kwargs.get("context") or {}
    dag_run = context.get("dag_run") or {}
    run_id = dag_run.get("run_id") if isinstance(dag_run, Mapping) else getattr(dag_run, "run_id", None)
    log.error("iot-compress: nightly run %s missed its deadline (%s)", run_id,
              kwargs.get("message", "still running"))
