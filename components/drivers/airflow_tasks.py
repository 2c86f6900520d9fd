"""What the Airflow tasks call: find params, lay the run's folders out by its key, run a stage.

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
import urllib.request
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path

from components import stages
from components.config import PARAMS_ENV, Params, load_params

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SENSING_DATA_ASSET = "iot-compress-sensing-data"  # the Airflow asset whose update triggers compress_nightly
ALERT_WEBHOOK_ENV = "IOT_COMPRESS_ALERT_WEBHOOK"  # optional: POST each failure alert here as JSON
log = logging.getLogger(__name__)


def params_path() -> Path:
    return Path(os.environ.get(PARAMS_ENV, PROJECT_ROOT / "params.yaml"))


def run_params(overrides: Sequence[str] = ()) -> Params:
    """The params file with this run's `section.key=value` overrides applied."""
    return load_params(params_path(), list(overrides))


def device_routes() -> list[dict[str, str]]:
    """One entry per device: its name, Celery queue and Airflow pool, in pool-file order.

    The DAG maps every per-device stage over this list, so map index i is
    device i in every one of them; the cluster policy in
    infra/airflow/airflow_local_settings.py reads it again to route each
    mapped instance of an on-device stage (Airflow cannot map `queue`/`pool`
    per instance).
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


def run_task(stage_name: str, run_id: str, device: str | None, upstream: Mapping[str, str],
             overrides: Sequence[str] = ()) -> str:
    """Run one stage (for one device) of the Airflow run `run_id` on its upstreams' folders; return its own.

    Every folder comes from the run-keyed layout, so a retried or re-run task
    overwrites only its own output (and a retried profile or compress resumes
    its log or checkpoint there). The returned folder is what the task puts in
    XCom: the data folder, or the report folder of a stage that writes no data.
    """
    params = run_params(overrides)
    layout = stages.Layout(params, run_id)
    stage = stages.stage_named(stage_name)
    result = stages.execute(stage, params, device, layout=layout,
                            inputs={name: Path(folder) for name, folder in upstream.items()}, pipeline_key=run_id)
    log.info("%s", stages.module_of(stage).summary(result))
    place = layout.place(stage.name, device)
    return str(place.data if stage.writes_data else place.report)


def run_in_airflow(stage_name: str, device: str | None, context: Mapping) -> str:
    """The body of every task of the DAG: skip an unselected device, pull the upstream folders, run the stage.

    Each upstream's folder comes from its XCom (a per-device upstream's from
    the instance of the same map index: every per-device stage is mapped over
    the same device list). An error that says what to fix (bad params or data,
    a missing model) or a tracking server that stayed down through its HTTP
    client's retries fails the task without an Airflow retry: Airflow's
    retries are for what only a new try fixes (a lost worker, a killed process).
    """
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    conf = context["params"]
    check_devices(conf["devices"])
    if device is not None and not selected(device, conf["devices"]):
        raise AirflowSkipException(f"{device} is not in this run's devices {conf['devices']}")
    stage = stages.stage_named(stage_name)
    ti = context["ti"]
    upstream = {}
    for name in stage.reads:
        if stages.stage_named(name).per_device:
            folder = ti.xcom_pull(task_ids=name, map_indexes=ti.map_index)
        else:
            folder = ti.xcom_pull(task_ids=name)
        if not folder:
            where = f" for {device}" if device else ""
            raise AirflowFailException(f"{stage.name}{where}: {name} left no output in this run (it failed or was "
                                       "skipped); see its log")
        upstream[name] = folder
    try:
        return run_task(stage.name, str(context["run_id"]), device, upstream, conf["overrides"])
    except stages.final_errors() as exc:
        raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc


def summarise_in_airflow(context: Mapping) -> str:
    """The DAG's last task: the night's summary on its parent run, which it ends; returns the summary's folder.

    It runs when every stage's task is done, whatever their states (trigger rule `all_done`). A device whose stage
    failed fails this task after the summary is written (without retries): the summary is the DAG's one leaf, and
    Airflow judges a run by its leaves. Failing gates are a result, not a failure, as in `validate`.
    """
    from airflow.sdk.exceptions import AirflowFailException

    from components.tracking.night import close_night, stage_failures

    conf = context["params"]
    run_id = str(context["run_id"])
    params = run_params(conf["overrides"])
    devices = [r["device"] for r in device_routes() if selected(r["device"], conf["devices"])]
    out = stages.Layout(params, run_id).summary()
    try:
        night = close_night(params, run_id, file_params=run_params(), devices=devices, out=out)
    except stages.final_errors() as exc:
        raise AirflowFailException(f"{type(exc).__name__}: {exc}") from exc
    failed = stage_failures(night)
    if failed:
        raise AirflowFailException(f"the night's summary is on MLflow run {night.run_id}; devices that failed a "
                                   f"stage: {', '.join(failed)}")
    log.info("the night's summary is on MLflow run %s: %d of %d devices passed", night.run_id,
             sum(d.passed for d in night.devices), len(night.devices))
    return str(out)


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
        folder = stages.Layout(run_params(), run_id).run_folder()
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
