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
"""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import dag, task

DEFAULT_ARGS = {
    "owner": "iot-compress",
    "retries": 2,
    "retry_delay": timedelta(minutes=5),
    "retry_exponential_backoff": True,
}


@dag(
    dag_id="compress_nightly",
    schedule="0 2 * * *",  # 02:00 every night
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["iot-compress", "nightly"],
    doc_md=__doc__,
)
def compress_nightly():
    @task(task_id="ingest")
    def ingest(**context) -> str:
        from components.airflow_tasks import run_stage

        return run_stage("ingest", context["run_id"])

    @task(task_id="train")
    def train(ingest_dir: str, **context) -> str:
        from components.airflow_tasks import run_stage

        return run_stage("train", context["run_id"], ingest_dir)

    @task(task_id="profile", map_index_template="{{ task.op_kwargs['device'] }}")
    def profile(device: str, queue: str, pool: str, **context) -> str:
        from components.airflow_tasks import run_profile

        return run_profile(device, context["run_id"])

    @task(task_id="fit_latency", map_index_template="{{ task.op_kwargs['device'] }}", trigger_rule="all_done")
    def fit_latency(device: str, queue: str, pool: str, **context) -> str:
        from airflow.sdk.exceptions import AirflowFailException

        from components.airflow_tasks import run_fit_latency
        from components.latency.fit import LatencyDataError

        try:
            return run_fit_latency(device, context["run_id"])
        except LatencyDataError as exc:  # the table will not change on a retry: fail now, say why
            raise AirflowFailException(str(exc)) from exc

    @task(task_id="compress", map_index_template="{{ task.op_kwargs['device'] }}")
    def compress(device: str, queue: str, pool: str, ingest_dir: str, train_dir: str, **context) -> str:
        from components.airflow_tasks import run_compress

        return run_compress(device, context["run_id"], ingest_dir, train_dir)

    @task(task_id="validate", map_index_template="{{ task.op_kwargs['device'] }}", trigger_rule="all_done")
    def validate(device: str, queue: str, pool: str, ingest_dir: str, train_dir: str, **context) -> str:
        from components.airflow_tasks import run_validate

        return run_validate(device, context["run_id"], ingest_dir, train_dir)

    @task(task_id="register", trigger_rule="all_done")
    def register(**context) -> list[dict]:
        from components.airflow_tasks import run_register

        return run_register(context["run_id"])

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
