"""DAG integrity (parse, schedule, retries, no heavy imports) and one real `airflow dags test` run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT, subprocess_env


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(PROJECT_ROOT / "dags"))


def test_dags_import_without_errors(dagbag):
    assert dagbag.import_errors == {}
    assert "compress_nightly" in dagbag.dags


def test_nightly_schedule_and_safety_settings(dagbag):
    dag = dagbag.dags["compress_nightly"]
    assert dag.catchup is False and dag.max_active_runs == 1
    assert dag.schedule == "0 2 * * *"
    assert {"iot-compress", "nightly"} <= set(dag.tags)
    assert all(t.retries >= 1 for t in dag.tasks)
    assert [t.task_id for t in dag.tasks if not t.upstream_task_ids] == ["ingest"]
    assert dag.get_task("train").upstream_task_ids == {"ingest"}


def test_parsing_the_dag_imports_no_stage_code():
    code = ("import runpy, sys; runpy.run_path(sys.argv[1]); "
            "heavy = [m for m in ('components.ingest', 'mlflow', 'great_expectations', 'torch', 'pandas') if m in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code, str(PROJECT_ROOT / "dags" / "compress_nightly.py")],
                         capture_output=True, text=True, env=subprocess_env(Path("/nonexistent")), timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.slow
def test_airflow_dags_test_runs_ingest_then_train(tmp_path, params_file):
    env = subprocess_env(tmp_path, IOT_COMPRESS_PARAMS=str(params_file()))
    airflow = str(Path(sys.executable).parent / "airflow")
    migrate = subprocess.run([airflow, "db", "migrate"], env=env, capture_output=True, text=True, timeout=300)
    assert migrate.returncode == 0, migrate.stderr[-3000:]
    run = subprocess.run([airflow, "dags", "test", "compress_nightly"], env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    assert "state=success" in run.stdout + run.stderr
    cards = list((tmp_path / ".state" / "runs").glob("*/ingest/data_card.json"))
    assert len(cards) == 1 and json.loads(cards[0].read_text())["windows"] == 2426
    [metrics] = list((tmp_path / ".state" / "runs").glob("*/train/metrics.json"))
    assert metrics.parent.parent == cards[0].parent.parent  # train read this run's ingest output
    assert json.loads(metrics.read_text())["test"]["accuracy"] > 0.3
