"""DAG integrity (parse, schedule, retries, no heavy imports) and one real `airflow dags test` run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from components.stages import STAGES
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
    for stage in STAGES:  # a stage waits for the stages it reads; a per-device one for all their instances
        made = dag.get_task(stage.name)
        assert made.upstream_task_ids == set(stage.reads)
        assert made.trigger_rule == ("all_done" if stage.per_device else "all_success")
    assert dag.get_task("compress").upstream_task_ids == {"ingest", "train", "profile", "fit_latency"}


def test_a_toy_stage_in_the_table_becomes_a_mapped_task_after_the_stage_it_reads(monkeypatch):
    from airflow.dag_processing.dagbag import DagBag

    from components import stages
    from tests.toy_stage import TOY

    monkeypatch.setattr(stages, "STAGES", (*stages.STAGES, TOY))
    dag = DagBag(dag_folder=str(PROJECT_ROOT / "dags")).dags["compress_nightly"]
    toy = dag.get_task("toy")
    assert toy.upstream_task_ids == {"fit_latency"} and toy.trigger_rule == "all_done"
    assert [e["device"] for e in toy.op_kwargs_expand_input.value] == \
        [e["device"] for e in dag.get_task("profile").op_kwargs_expand_input.value]


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


def test_the_nights_summary_runs_last_after_every_stage_whatever_their_states(dagbag):
    dag = dagbag.dags["compress_nightly"]
    summary = dag.get_task("summary")
    assert summary.upstream_task_ids == {stage.name for stage in STAGES}
    assert summary.trigger_rule == "all_done" and not summary.downstream_task_ids
    assert [t.task_id for t in dag.tasks if not t.downstream_task_ids] == ["summary"]  # the run's one leaf
