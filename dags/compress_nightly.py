"""The nightly compression pipeline: one thin task per stage, each a lazy import and one call.

Nothing heavy happens at parse time: every stage's code is imported inside its
task. One small file is read at parse time: the device pool, because
`profile` is mapped over it and each mapped task instance is routed to its
device's Celery queue and pool when it is created, before it runs (the
cluster policy in infra/airflow/airflow_local_settings.py does the routing).
`fit_latency` is mapped over the same list after `profile`; fitting is plain
CPU work, so it runs on the default queue, and with trigger rule `all_done`
each device's fit reads its own profile, whatever happened to the others.
`compress` is mapped over the list too, after `train` and `fit_latency`
(it reads this run's ingest and train folders through XCom and its device's
run-keyed latency model); it trains, so it runs on the default queue.
`validate` is mapped over the list after `compress` and routed like `profile`
(the exported models run and are timed on the device); with trigger rule
`all_done` one device's failed compression does not hold back the others
(its own validate fails, saying which model is missing). The final
`register` (trigger rule `all_done`) registers every device whose gates
passed and then fails if any device had no report, so a broken night is
never green.

Nightly semantics: the run starts at 02:00 UTC or when the sensing data
asset is updated (`watch_sensing_data` emits it when files under the data
root change; an uploader may also POST an asset event), whichever comes
first; `catchup=False` and `max_active_runs=1`, so a second trigger waits
for the first run. Every task writes under a folder keyed by the run id, so a
retry or a re-run overwrites only its own output. A run's params (from the
UI's trigger form or the REST API's `conf`) pick a device subset and
`section.key=value` overrides. A failed or retried task reports its stage and
device (`failure_alert`); a run still going after 6 hours triggers the
deadline alert.
"""

from __future__ import annotations

import os
from datetime import timedelta

from airflow.sdk import Asset, AssetOrTimeSchedule, CronTriggerTimetable, Param, dag, task
from airflow.sdk.definitions.deadline import AsyncCallback, DeadlineAlert, DeadlineReference

SENSING_DATA = Asset("iot-compress-sensing-data")  # = components.airflow_tasks.SENSING_DATA_ASSET


def _alert(context):
    from components.airflow_tasks import failure_alert

    failure_alert(context, "failed")


def _retry_alert(context):
    from components.airflow_tasks import failure_alert

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
                          callback=AsyncCallback("components.airflow_tasks.nightly_deadline_missed",
                                                 kwargs={"message": f"not finished {hours:g} h after it was queued"}))]


def _skip_unless_selected(device: str, context) -> None:
    from airflow.sdk.exceptions import AirflowSkipException

    from components.airflow_tasks import selected

    if not selected(device, context["params"]["devices"]):
        raise AirflowSkipException(f"{device} is not in this run's devices {context['params']['devices']}")


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
    @task(task_id="ingest")
    def ingest(**context) -> str:
        from components.airflow_tasks import check_devices, run_stage

        check_devices(context["params"]["devices"])
        return run_stage("ingest", context["run_id"], overrides=context["params"]["overrides"])

    @task(task_id="train")
    def train(ingest_dir: str, **context) -> str:
        from components.airflow_tasks import run_stage

        return run_stage("train", context["run_id"], ingest_dir, overrides=context["params"]["overrides"])

    @task(task_id="profile", map_index_template="{{ task.op_kwargs['device'] }}")
    def profile(device: str, queue: str, pool: str, **context) -> str:
        from components.airflow_tasks import run_profile

        _skip_unless_selected(device, context)
        return run_profile(device, context["run_id"], context["params"]["overrides"])

    @task(task_id="fit_latency", map_index_template="{{ task.op_kwargs['device'] }}", trigger_rule="all_done")
    def fit_latency(device: str, queue: str, pool: str, **context) -> str:
        from airflow.sdk.exceptions import AirflowFailException

        from components.airflow_tasks import run_fit_latency
        from components.latency.fit import LatencyDataError

        _skip_unless_selected(device, context)
        try:
            return run_fit_latency(device, context["run_id"], context["params"]["overrides"])
        except LatencyDataError as exc:  # the table will not change on a retry: fail now, say why
            raise AirflowFailException(str(exc)) from exc

    # all_done: Airflow makes every compress instance wait on every fit_latency instance, so one device's
    # skipped or failed fit must not skip the others' compressions (each finds its own latency model or fails)
    @task(task_id="compress", map_index_template="{{ task.op_kwargs['device'] }}", trigger_rule="all_done")
    def compress(device: str, queue: str, pool: str, ingest_dir: str, train_dir: str, **context) -> str:
        from components.airflow_tasks import run_compress

        _skip_unless_selected(device, context)
        return run_compress(device, context["run_id"], ingest_dir, train_dir, context["params"]["overrides"])

    @task(task_id="validate", map_index_template="{{ task.op_kwargs['device'] }}", trigger_rule="all_done")
    def validate(device: str, queue: str, pool: str, ingest_dir: str, train_dir: str, **context) -> str:
        from components.airflow_tasks import run_validate

        _skip_unless_selected(device, context)
        return run_validate(device, context["run_id"], ingest_dir, train_dir, context["params"]["overrides"])

    @task(task_id="register", trigger_rule="all_done")
    def register(**context) -> list[dict]:
        from components.airflow_tasks import run_register

        return run_register(context["run_id"], context["params"]["devices"], context["params"]["overrides"])

    routes = _device_routes()
    ingest_dir = ingest()
    train_dir = train(ingest_dir)
    fits = profile.expand_kwargs(routes) >> fit_latency.expand_kwargs(routes)
    compressed = fits >> compress.partial(ingest_dir=ingest_dir, train_dir=train_dir).expand_kwargs(routes)
    validated = compressed >> validate.partial(ingest_dir=ingest_dir, train_dir=train_dir).expand_kwargs(routes)
    validated >> register()


def _device_routes() -> list[dict[str, str]]:
    from components.airflow_tasks import device_routes

    return device_routes()


compress_nightly()
