"""Airflow cluster policy: route each mapped instance of an on-device stage to its device's queue and pool.

The on-device stages are those `components.stages.STAGES` marks `on_device`
(profile and validate: they time and run models on the device).

Airflow 3 maps only a task's arguments per instance; `queue` and `pool` come
from the task (apache/airflow#33657). This hook runs whenever a task instance
is created or refreshed, with its `map_index` set, and gives instance i the
queue and pool of device i of the pool file: the same list, in the same
order, that the DAG mapped over. It must be importable as the top-level
module `airflow_local_settings` by the scheduler, the API server and
`airflow dags test` (the Makefile puts this folder on PYTHONPATH).
"""

from __future__ import annotations

DAG_ID = "compress_nightly"


def task_instance_mutation_hook(task_instance, dag_run=None):
    if task_instance.dag_id != DAG_ID or task_instance.map_index < 0:
        return
    from components.stages import STAGES

    if task_instance.task_id not in {s.name for s in STAGES if s.on_device}:
        return
    from components.drivers.airflow_tasks import device_routes

    routes = device_routes()
    if task_instance.map_index < len(routes):
        route = routes[task_instance.map_index]
        task_instance.queue, task_instance.pool = route["queue"], route["pool"]


def worker_hostname() -> str:
    """The name a task instance records as its host: the worker's own name where it has one.

    Airflow records `hostname_callable()` on every task instance. Several
    workers on one machine (the local deployment) share the host's name, so
    each is started with IOT_COMPRESS_WORKER_NAME (`<queue>@<host>`) and the
    UI and REST API show which worker, hence which device, ran a task. On a
    machine per device, the host's own name already says it.
    """
    import os
    import socket

    return os.environ.get("IOT_COMPRESS_WORKER_NAME") or socket.getfqdn()
