"""DAG integrity (parse, schedule, retries, no heavy imports) and one real `airflow dags test` run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import PROJECT_ROOT, subprocess_env


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(PROJECT_ROOT / "dags"))


def test_dags_import_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert {"compress_nightly", "watch_sensing_data"} <= set(dagbag.dags)


def test_nightly_schedule_and_safety_settings(dagbag):
    from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable

    dag = dagbag.dags["compress_nightly"]
    assert dag.catchup is False and dag.max_active_runs == 1
    schedule = dag.schedule
    assert isinstance(schedule, AssetOrTimeSchedule)
    assert isinstance(schedule.timetable, CronTriggerTimetable) and schedule.timetable.expression == "0 2 * * *"
    assert schedule.timetable.run_immediately is False and dag.start_date is None  # unpausing runs nothing at once
    assert [a.name for a in schedule.asset_condition.objects] == ["iot-compress-sensing-data"]
    [announce] = dagbag.dags["watch_sensing_data"].tasks
    assert [o.name for o in announce.outlets] == ["iot-compress-sensing-data"]  # the watcher feeds that asset
    assert dag.params["devices"] == [] and dag.params["overrides"] == []
    assert [d.interval.total_seconds() for d in dag.deadline] == [6 * 3600]
    assert all(t.on_failure_callback and t.on_retry_callback for t in dag.tasks)
    assert {"iot-compress", "nightly"} <= set(dag.tags)
    assert all(t.retries >= 1 for t in dag.tasks)
    assert sorted(t.task_id for t in dag.tasks if not t.upstream_task_ids) == ["ingest", "profile"]
    assert dag.get_task("train").upstream_task_ids == {"ingest"}
    fit = dag.get_task("fit_latency")
    assert fit.upstream_task_ids == {"profile"} and fit.trigger_rule == "all_done"
    compress = dag.get_task("compress")
    assert compress.upstream_task_ids == {"ingest", "train", "fit_latency"} and compress.trigger_rule == "all_done"
    validate = dag.get_task("validate")
    assert validate.upstream_task_ids == {"ingest", "train", "compress"} and validate.trigger_rule == "all_done"
    register = dag.get_task("register")
    assert register.upstream_task_ids == {"validate"} and register.trigger_rule == "all_done"


def test_profile_is_mapped_over_the_pool_and_each_instance_is_routed_to_its_device(dagbag):
    from types import SimpleNamespace

    from airflow_local_settings import task_instance_mutation_hook

    from components.devices.pool import load_pool

    pool = load_pool(PROJECT_ROOT / "infra" / "devices.yaml")
    mapped = dagbag.dags["compress_nightly"].get_task("profile")
    assert [entry["device"] for entry in mapped.op_kwargs_expand_input.value] == list(pool)
    for task_id in ("profile", "validate"):  # both measure on the device
        for index, device in enumerate(pool.values()):
            ti = SimpleNamespace(dag_id="compress_nightly", task_id=task_id, map_index=index, queue="default",
                                 pool="default_pool")
            task_instance_mutation_hook(ti)
            assert (ti.queue, ti.pool) == (device.queue, device.pool)
    other = SimpleNamespace(dag_id="compress_nightly", task_id="train", map_index=-1, queue="q", pool="p")
    task_instance_mutation_hook(other)
    assert (other.queue, other.pool) == ("q", "p")
    fit = dagbag.dags["compress_nightly"].get_task("fit_latency")
    assert [entry["device"] for entry in fit.op_kwargs_expand_input.value] == list(pool)
    fitting = SimpleNamespace(dag_id="compress_nightly", task_id="fit_latency", map_index=0, queue="q", pool="p")
    task_instance_mutation_hook(fitting)
    assert (fitting.queue, fitting.pool) == ("q", "p")  # fitting is CPU work: not routed to the device


def test_parsing_the_dag_imports_no_stage_code():
    code = ("import runpy, sys; runpy.run_path(sys.argv[1]); "
            "heavy = [m for m in ('components.ingest', 'mlflow', 'great_expectations', 'torch', 'pandas') if m in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code, str(PROJECT_ROOT / "dags" / "compress_nightly.py")],
                         capture_output=True, text=True, env=subprocess_env(Path("/nonexistent")), timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_airflow_dags_test_runs_ingest_then_train_and_profiles_and_fits_each_device(tmp_path, params_file):
    path = params_file()
    raw = yaml.safe_load(path.read_text())
    raw["profile"]["devices"] = ["ort-1t", "cortex-m4"]
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    env = subprocess_env(tmp_path, IOT_COMPRESS_PARAMS=str(path), IOT_COMPRESS_DEADLINE_H="0")
    airflow = str(Path(sys.executable).parent / "airflow")
    migrate = subprocess.run([airflow, "db", "migrate"], env=env, capture_output=True, text=True, timeout=300)
    assert migrate.returncode == 0, migrate.stderr[-3000:]
    run = subprocess.run([airflow, "dags", "test", "compress_nightly"], env=env, capture_output=True, text=True,
                         timeout=1100)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    assert "state=success" in run.stdout + run.stderr
    cards = list((tmp_path / ".state" / "runs").glob("*/ingest/data_card.json"))
    assert len(cards) == 1 and json.loads(cards[0].read_text())["windows"] == 2426
    [metrics] = list((tmp_path / ".state" / "runs").glob("*/train/metrics.json"))
    assert metrics.parent.parent == cards[0].parent.parent  # train read this run's ingest output
    assert json.loads(metrics.read_text())["test"]["accuracy"] > 0.3
    tables = sorted(p.parent.name for p in (tmp_path / ".state" / "runs").glob("*/profile/*/profile.parquet"))
    assert tables == ["cortex-m4", "ort-1t"]
    models = {p.parent.name: json.loads(p.read_text())["method"]
              for p in (tmp_path / ".state" / "runs").glob("*/fit_latency/*/latency_model.json")}
    assert models == {"ort-1t": "tree", "cortex-m4": "analytic"}
    compressed = sorted(p.parent.parent.name for p in (tmp_path / ".state" / "runs").glob("*/compress/*/model/model.json"))
    assert compressed == ["cortex-m4", "ort-1t"]
    reports = {p.parent.parent.name: p for p in (tmp_path / ".state" / "runs").glob("*/validate/*/report/report.json")}
    assert sorted(reports) == ["cortex-m4", "ort-1t"]
    assert all((p.parent / "registry.json").exists() for p in reports.values())  # register saw every device
    import sqlite3

    with sqlite3.connect(tmp_path / "airflow" / "airflow.db") as db:
        routed = db.execute("select rendered_map_index, queue, pool from task_instance where task_id = 'profile' "
                            "order by map_index").fetchall()
        validated = db.execute("select rendered_map_index, queue, pool from task_instance where task_id = 'validate' "
                               "order by map_index").fetchall()
    assert routed == [("ort-1t", "default", "local_cpu"), ("cortex-m4", "default", "analytic")]
    assert validated == routed  # the exported models ran on the device they were validated for
