"""The nightly compression pipeline: one thin task per stage of `components.stages.STAGES`.

The DAG is a loop over the stage table: a stage that runs once is one task; a
per-device stage is mapped over the device pool (every per-device stage over
the same list, so map index i is device i throughout) and has trigger rule
`all_done`, since Airflow makes each mapped instance wait on every instance
upstream: one device's failure must not hold back the others (each instance
finds its own upstream folder in XCom or fails saying which is missing). A
stage's dependencies are the stages it reads; each task returns its output
folder, which XCom carries to the tasks that read it.

Nothing heavy happens at parse time: every stage's code is imported inside its
task. Two small files are read at parse time: the stage table and the device
pool, because the per-device stages are mapped over it and each mapped
instance of an on-device stage (profile, validate) is routed to its device's
Celery queue and pool when it is created (the cluster policy in
infra/airflow/airflow_local_settings.py does the routing); the others run on
the default queue.

Nightly semantics: the run starts at 02:00 UTC or when the sensing data
asset is updated (`watch_sensing_data` emits it when files under the data
root change; an uploader may also POST an asset event), whichever comes
first; `catchup=False` and `max_active_runs=1`, so a second trigger waits
for the first run. Every task writes under a folder keyed by the run id
(`components.stages.Layout`), so a retry or a re-run overwrites only its own
output. A run's params (from the UI's trigger form or the REST API's `conf`)
pick a device subset and `section.key=value` overrides. A failed or retried
task reports its stage and device (`failure_alert`); a run still going after
6 hours triggers the deadline alert.

After every stage's task, done or failed, one `summary` task (not a stage: it
reads MLflow, not the stages' folders) writes the night's verdict per device
on the MLflow parent run (components/tracking/night.py) and ends that run; it
fails when a device's stage failed, so the run is judged by it, its one leaf.
"""

from __future__ import annotations

import os
from datetime import timedelta

from airflow.sdk import Asset, AssetOrTimeSchedule, CronTriggerTimetable, Param, dag, task
from airflow.sdk.definitions.deadline import AsyncCallback, DeadlineAlert, DeadlineReference

from components import stages

SENSING_DATA = Asset("iot-compress-sensing-data")  # = components.drivers.airflow_tasks.SENSING_DATA_ASSET


def _alert(context):
    from components.drivers.airflow_tasks import failure_alert

    failure_alert(context, "failed")


def _retry_alert(context):
    from components.drivers.airflow_tasks import failure_alert

    failure_alert(context, "up for retry")


DEFAULT_ARGS = {
    "owner": "iot-compress",
    "retries": 2,
    # a deployment's tests shorten the wait; nights keep 5 minutes
    "retry_delay": timedelta(seconds=float(os.environ.get("IOT_COMPRESS_RETRY_DELAY_S", "300"))),
    "retry_exponential_backoff": True,
    "on_failure_callback": _alert,
    "on_retry_callback": _retry_alert,
}


def _deadline() -> list[DeadlineAlert]:
    """Alert when a run is not done IOT_COMPRESS_DEADLINE_H (6) hours after it was queued; 0 turns it off.

    `airflow dags test` (the embedded mode) must turn it off: Airflow 3.3.2's in-process
    test run fails looking up a DAG's deadline alerts ('dict' object has no attribute 'hex').
    """
    hours = float(os.environ.get("IOT_COMPRESS_DEADLINE_H", "6"))
    if hours <= 0:
        return []
    return [DeadlineAlert(reference=DeadlineReference.DAGRUN_QUEUED_AT, interval=timedelta(hours=hours),
                          callback=AsyncCallback("components.drivers.airflow_tasks.nightly_deadline_missed",
                                                 kwargs={"message": f"not finished {hours:g} h after it was queued"}))]


def _stage_task(stage):
    """The task of one stage: a lazy import and one call (mapped over the pool where the stage runs per device)."""

    def body(device: str | None = None, queue: str | None = None, pool: str | None = None, **context) -> str:
        from components.drivers.airflow_tasks import run_in_airflow

        return run_in_airflow(stage.name, device, context)

    body.__name__ = body.__qualname__ = stage.name
    body.__doc__ = stage.doc
    if stage.per_device:
        return task(task_id=stage.name, map_index_template="{{ task.op_kwargs['device'] }}",
                    trigger_rule="all_done")(body)
    return task(task_id=stage.name)(body)


@dag(
    dag_id="compress_nightly",
    # 02:00 UTC, or as soon as new sensing data lands. No start_date: unpausing waits for the next 02:00
    # instead of running last night's slot at once (run_immediately=False).
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable("0 2 * * *", timezone="UTC", run_immediately=False), assets=[SENSING_DATA]
    ),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    params={
        "devices": Param([], type="array", items={"type": "string"},
                         description="Run only these devices of the pool (empty: the params file's selection)."),
        "overrides": Param([], type="array", items={"type": "string"},
                           description="section.key=value settings over params.yaml, e.g. compress.budget.latency=0.3"),
    },
    deadline=_deadline(),
    tags=["iot-compress", "nightly"],
    doc_md=__doc__,
)
def compress_nightly():
    routes = _device_routes()
    tasks = {}
    for stage in stages.STAGES:
        made = _stage_task(stage)
        tasks[stage.name] = made.expand_kwargs(routes) if stage.per_device else made()
        for upstream in stage.reads:
            tasks[upstream] >> tasks[stage.name]
    list(tasks.values()) >> summary()


@task(task_id="summary", trigger_rule="all_done")
def summary(**context) -> str:
    """The night's summary on its MLflow parent run, once every stage is done (failed devices too)."""
    from components.drivers.airflow_tasks import summarise_in_airflow

    return summarise_in_airflow(context)


def _device_routes() -> list[dict[str, str]]:
    from components.drivers.airflow_tasks import device_routes

    return device_routes()


compress_nightly()
