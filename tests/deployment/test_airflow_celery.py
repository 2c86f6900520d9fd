"""Deployment mode end to end: CeleryExecutor on PostgreSQL + Redis, one worker per device queue, REST API.

One stack, started by `infra/airflow/celery_stack.py` as a user would, on a
fresh PostgreSQL database and Redis database; two devices on two queues
(`device.cpu` for ort-1t, `device.mcu` for the microcontroller). Two runs are
triggered at once through the REST API: the second waits (max_active_runs=1)
and covers only the microcontroller (a per-run device subset). While the first
run profiles ort-1t, that device's worker is killed; the stack's supervisord
starts a new worker on its queue, the task is retried and the run succeeds
with nothing duplicated in MLflow or the registry.
"""

from __future__ import annotations

import json
import random
import socket
import time
import uuid
from urllib.parse import quote

import pytest
import yaml

from tests.conftest import PROJECT_ROOT, quick_params

pytestmark = [pytest.mark.deployment, pytest.mark.slow, pytest.mark.services]

DAG = "compress_nightly"
QUEUES = {"ort-1t": "device.cpu", "cortex-m4": "device.mcu"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def stack(tmp_path_factory, data_root):
    import psycopg2
    import redis
    from celery_stack import Stack

    folder = tmp_path_factory.mktemp("deployment")
    pool = yaml.safe_load((PROJECT_ROOT / "infra" / "devices.yaml").read_text())
    devices = {name: {**pool["devices"][name], "queue": queue} for name, queue in QUEUES.items()}
    (folder / "devices.yaml").write_text(yaml.safe_dump({"devices": devices}, sort_keys=False))
    params = quick_params(folder, data_root)
    raw = yaml.safe_load(params.read_text())
    raw["profile"]["devices_file"] = str(folder / "devices.yaml")
    raw["profile"]["devices"] = list(QUEUES)
    params.write_text(yaml.safe_dump(raw, sort_keys=False))

    database = f"iot_af_{uuid.uuid4().hex[:10]}"
    broker_db = random.randint(6, 15)
    redis.Redis(host="127.0.0.1", port=6379, db=broker_db).flushdb()
    stack = Stack(home=folder / "airflow", port=_free_port(), params=params,
                  database=f"postgresql+psycopg2://postgres@127.0.0.1:5432/{database}",
                  broker=f"redis://127.0.0.1:6379/{broker_db}",
                  extra_env={
                      "IOT_COMPRESS_RETRY_DELAY_S": "5",
                      # a killed worker's task is declared dead after 30 s instead of 5 minutes
                      "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "30",
                      "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
                  })
    try:
        stack.start(timeout=300)
        yield stack
    finally:
        stack.stop()
        redis.Redis(host="127.0.0.1", port=6379, db=broker_db).flushdb()
        conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'drop database if exists "{database}" with (force)')
        conn.close()


def _by_task(tis: list[dict]) -> dict[tuple[str, str], dict]:
    return {(t["task_id"], t.get("rendered_map_index") or str(t["map_index"])): t for t in tis}


@pytest.mark.timeout(2400)  # two quick pipeline runs, one after the other, plus a dead worker's timeout
def test_nightly_runs_on_device_queues_survives_a_killed_worker_and_queues_a_second_trigger(stack):
    api = stack.api()
    dag = api.wait_for_dag(DAG)
    assert dag["is_paused"] is True  # nothing runs before someone unpauses it
    api.unpause(DAG)

    triggered = time.monotonic()
    first = api.trigger(DAG, run_id="nightly_first")["dag_run_id"]
    second = api.trigger(DAG, conf={"devices": ["cortex-m4"]}, run_id="subset_second")["dag_run_id"]

    # the first run's ort-1t profile is running on the device.cpu worker: kill that worker (SIGKILL, whole tree)
    deadline = time.monotonic() + 600
    while True:
        tis = _by_task(api.task_instances(DAG, first))
        if tis.get(("profile", "ort-1t"), {}).get("state") == "running":
            break
        assert api.run(DAG, second)["state"] == "queued", "the second trigger started while the first ran"
        assert time.monotonic() < deadline, f"profile of ort-1t never ran: {tis}"
        time.sleep(0.5)
    killed = stack.pids()["worker-device.cpu"]
    stack.kill("worker-device.cpu")
    killed_at = time.monotonic()
    while stack.pids().get("worker-device.cpu") in (None, killed):  # supervisord starts it again
        assert time.monotonic() < killed_at + 60, f"the killed worker was not restarted: {stack.states()}"
        time.sleep(0.5)

    run = api.wait_run(DAG, first, timeout=1200,
                       on_poll=lambda _: _assert_still_queued(api, second))
    elapsed = time.monotonic() - triggered
    tis = _by_task(api.task_instances(DAG, first))
    assert run["state"] == "success", json.dumps({k[0] + "/" + k[1]: v["state"] for k, v in tis.items()})

    for device, queue in QUEUES.items():
        for task in ("profile", "validate"):
            ti = tis[(task, device)]
            assert ti["state"] == "success"
            assert ti["queue"] == queue and ti["hostname"].startswith(f"{queue}@"), (task, device, ti)
    for key, ti in tis.items():
        if key[0] not in ("profile", "validate"):
            assert ti["queue"] == "default" and ti["hostname"].startswith("default@"), (key, ti)
    retried = tis[("profile", "ort-1t")]
    assert retried["try_number"] >= 2, "the killed task was not retried"

    second_run = api.wait_run(DAG, second, timeout=900)
    assert second_run["state"] == "success"
    assert second_run["start_date"] >= run["end_date"], "the second run did not wait for the first"
    subset = _by_task(api.task_instances(DAG, second))
    for task in ("profile", "fit_latency", "compress", "validate"):
        assert subset[(task, "ort-1t")]["state"] == "skipped"
        assert subset[(task, "cortex-m4")]["state"] == "success"

    _assert_nothing_duplicated(stack, first)
    runs = api.request("GET", f"/api/v2/dags/{DAG}/dagRuns")["dag_runs"]
    assert sorted(r["dag_run_id"] for r in runs) == sorted([first, second])  # unpausing started no run of its own

    # new data lands: the watcher announces the asset and the nightly DAG is triggered by it
    api.unpause("watch_sensing_data")
    deadline = time.monotonic() + 180
    while not [r for r in api.request("GET", f"/api/v2/dags/{DAG}/dagRuns")["dag_runs"]
               if r["run_type"] == "asset_triggered"]:
        assert time.monotonic() < deadline, "the sensing-data asset did not trigger compress_nightly"
        time.sleep(2)
    api.pause(DAG)
    [asset_run] = [r for r in api.request("GET", f"/api/v2/dags/{DAG}/dagRuns")["dag_runs"]
                   if r["run_type"] == "asset_triggered"]
    api.request("PATCH", f"/api/v2/dags/{DAG}/dagRuns/{quote(asset_run['dag_run_id'], safe='')}", {"state": "failed"})
    durations = sum(t["duration"] or 0 for t in tis.values())
    print(f"\nfirst run: trigger to success {run_seconds(run):.0f} s (wall since trigger {elapsed:.0f} s), "
          f"sum of task durations {durations:.0f} s, worker killed at +{killed_at - triggered:.0f} s")


def run_seconds(run: dict) -> float:
    from datetime import datetime

    start = datetime.fromisoformat(run["queued_at"] or run["start_date"])
    return (datetime.fromisoformat(run["end_date"]) - start).total_seconds()


def _assert_still_queued(api, run_id: str) -> None:
    assert api.run(DAG, run_id)["state"] == "queued", "the second trigger started while the first ran"


def _assert_nothing_duplicated(stack, run_id: str) -> None:
    """One live MLflow run per stage (and device) of the pipeline run; one registry version per validation."""
    import mlflow

    from components.config import load_params
    from components.tracking.runs import PIPELINE_KEY_TAG
    from components.tracking.server import tracking_uri

    params = load_params(stack.params)
    mlflow.set_tracking_uri(tracking_uri(params))
    runs = mlflow.search_runs(experiment_names=[params.pipeline.experiment], output_format="list",
                              filter_string=f"tags.{PIPELINE_KEY_TAG} = '{run_id}'")
    names = [r.info.run_name for r in runs]
    assert len(names) == len(set(names)), sorted(names)
    assert {"profile/ort-1t", "validate/ort-1t", "validate/cortex-m4"} <= set(names), sorted(names)
    client = mlflow.MlflowClient()
    for model in client.search_registered_models():
        versions = client.search_model_versions(f"name = '{model.name}'")
        ids = [v.tags.get("validation_id") for v in versions]
        assert len(ids) == len(set(ids)), (model.name, ids)
