"""`airflow dags test`: the nightly DAG run in-process on the quick pipeline, two devices."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import subprocess_env
from tests.e2e.conftest import expected_runs, night_runs


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_airflow_dags_test_runs_every_stage_for_each_device_then_the_nights_summary(tmp_path, params_file):
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
    runs = tmp_path / ".state" / "runs"
    cards = list(runs.glob("*/data/ingest/data_card.json"))
    assert len(cards) == 1 and json.loads(cards[0].read_text())["windows"] == 2426
    [metrics] = list(runs.glob("*/data/train/metrics.json"))
    assert metrics.parent.parent == cards[0].parent.parent  # train read this run's ingest output
    assert json.loads(metrics.read_text())["test"]["accuracy"] > 0.3
    tables = sorted(p.parent.name for p in runs.glob("*/data/profile/*/profile.parquet"))
    assert tables == ["cortex-m4", "ort-1t"]
    models = {p.parent.name: json.loads(p.read_text())["method"]
              for p in runs.glob("*/data/fit_latency/*/latency_model.json")}
    assert models == {"ort-1t": "tree", "cortex-m4": "analytic"}
    compressed = sorted(p.parent.parent.name for p in runs.glob("*/data/compress/*/model/model.json"))
    assert compressed == ["cortex-m4", "ort-1t"]
    reports = {p.parent.name: p for p in runs.glob("*/reports/validate/*/report.json")}
    assert sorted(reports) == ["cortex-m4", "ort-1t"]
    registered = sorted(p.parent.name for p in runs.glob("*/reports/register/*/registry.json"))
    assert registered == ["cortex-m4", "ort-1t"]  # register saw every device
    import sqlite3

    with sqlite3.connect(tmp_path / "airflow" / "airflow.db") as db:
        routed = db.execute("select rendered_map_index, queue, pool from task_instance where task_id = 'profile' "
                            "order by map_index").fetchall()
        validated = db.execute("select rendered_map_index, queue, pool from task_instance where task_id = 'validate' "
                               "order by map_index").fetchall()
        summarised = db.execute("select state from task_instance where task_id = 'summary'").fetchall()
    assert routed == [("ort-1t", "default", "local_cpu"), ("cortex-m4", "default", "analytic")]
    assert validated == routed  # the exported models ran on the device they were validated for
    assert summarised == [("success",)]  # the run's one leaf, after every stage
    # the MLflow runs the embedded pipeline makes, nested under the DAG run's parent run, which the summary ended
    outcomes = {p.parent.name: json.loads(p.read_text()) for p in runs.glob("*/reports/register/*/registry.json")}
    _, night = night_runs(path)
    assert set(night) == expected_runs(["ort-1t", "cortex-m4"], [d for d, o in outcomes.items() if o["registered"]])
    assert set(night.values()) == {"FINISHED"}, night
    # the night's summary, which the parent MLflow run carries too (tests/stage/test_summary.py reads it back)
    [summary] = [json.loads(p.read_text()) for p in runs.glob("*/reports/summary/summary.json")]
    assert [d["device"] for d in summary["devices"]] == ["ort-1t", "cortex-m4"]
    assert all(d["failed_stage"] is None for d in summary["devices"]), summary["devices"]
    assert (next(runs.glob("*/reports/summary/summary.json")).parent / "summary.html").exists()
