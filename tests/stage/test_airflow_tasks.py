"""What the DAG's tasks and callbacks call, and the deployment script's process handling, without Airflow running."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest

from components.drivers import airflow_tasks


@pytest.fixture
def params_env(params_file, monkeypatch):
    path = params_file()
    monkeypatch.setenv("IOT_COMPRESS_PARAMS", str(path))
    return path


def test_a_run_covers_every_device_unless_it_names_a_subset(params_env):
    assert airflow_tasks.selected("ort-1t", []) and airflow_tasks.selected("ort-1t", None)
    assert airflow_tasks.selected("cortex-m4", ["cortex-m4"]) and not airflow_tasks.selected("ort-1t", ["cortex-m4"])
    airflow_tasks.check_devices(["cortex-m4"])
    with pytest.raises(ValueError, match=r"\['pixel9'\] are not in the pool"):
        airflow_tasks.check_devices(["cortex-m4", "pixel9"])


def test_run_overrides_reach_the_params_a_task_loads(params_env):
    params = airflow_tasks.run_params(["compress.budget.latency=0.33"])
    assert params.compress.budget["latency"] == 0.33
    assert airflow_tasks.run_params().compress.budget["latency"] != 0.33


def test_data_fingerprint_changes_when_a_file_lands(tmp_path, params_file, monkeypatch):
    data = tmp_path / "data"
    (data / "hhar").mkdir(parents=True)
    (data / "hhar" / "a.csv").write_text("1\n")
    monkeypatch.setenv("IOT_COMPRESS_PARAMS", str(params_file()))
    monkeypatch.setenv("IOT_COMPRESS_DATA_ROOT", str(data))
    before = airflow_tasks.data_fingerprint()
    assert before["files"] == 1 and airflow_tasks.data_fingerprint() == before
    (data / "hhar" / "b.csv").write_text("2\n")
    after = airflow_tasks.data_fingerprint()
    assert after["files"] == 2 and after["fingerprint"] != before["fingerprint"]


def test_failure_alert_names_stage_device_run_and_error_and_reaches_the_webhook(tmp_path, params_env, monkeypatch,
                                                                                caplog):
    received = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv(airflow_tasks.ALERT_WEBHOOK_ENV, f"http://127.0.0.1:{server.server_port}/alerts")
    ti = SimpleNamespace(dag_id="compress_nightly", task_id="validate", rendered_map_index="ort-1t",
                         run_id="manual__1", try_number=3, max_tries=2, hostname="device.cpu@host")
    try:
        alert = airflow_tasks.failure_alert({"ti": ti, "run_id": "manual__1",
                                             "exception": RuntimeError("model file missing")})
    finally:
        server.shutdown()
    assert (alert["stage"], alert["device"], alert["run_id"]) == ("validate", "ort-1t", "manual__1")
    assert alert["error"] == "RuntimeError: model file missing" and alert["hostname"] == "device.cpu@host"
    assert received == [alert]
    assert "stage validate failed for device ort-1t in run manual__1 (try 3)" in caplog.text
    lines = (tmp_path / ".state" / "runs" / "manual__1" / "alerts.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [alert]


def test_an_alert_that_cannot_be_delivered_never_raises(params_env, monkeypatch, caplog):
    monkeypatch.setenv(airflow_tasks.ALERT_WEBHOOK_ENV, "http://127.0.0.1:9/closed")
    ti = SimpleNamespace(dag_id="compress_nightly", task_id="ingest", rendered_map_index=None, run_id="r",
                         try_number=1, max_tries=2, hostname="h", task=SimpleNamespace(op_kwargs={}))
    alert = airflow_tasks.failure_alert({"ti": ti, "run_id": "r"}, "up for retry")
    assert alert["device"] is None and alert["error"] is None
    assert "could not POST the alert" in caplog.text


def test_stack_supervisord_config_restarts_stops_groups_and_keeps_secrets_out(tmp_path):
    import configparser

    from celery_stack import Stack

    stack = Stack(home=tmp_path / "home", port=1)
    conf = configparser.RawConfigParser()
    conf.read(path := stack.write_supervisor_conf({"scheduler": (["airflow", "scheduler"], {}),
                                           "worker-device.cpu": (["airflow", "celery", "worker", "--queues", "a b"],
                                                                 {"IOT_COMPRESS_WORKER_NAME": "device.cpu@h"})}))
    home = stack.home
    assert conf["unix_http_server"]["file"] == str(home / "supervisor.sock")
    assert conf["supervisord"]["pidfile"] == str(home / "supervisord.pid")
    assert conf["supervisord"]["logfile"] == str(stack.log_dir / "supervisord.log")
    assert conf["supervisorctl"]["serverurl"] == f"unix://{home / 'supervisor.sock'}"
    for name in ("scheduler", "worker-device.cpu"):
        program = conf[f"program:{name}"]
        assert (program["autorestart"], program["stopasgroup"], program["killasgroup"]) == ("true",) * 3
        assert program["stdout_logfile"] == str(stack.log_dir / f"{name}.log")
    assert conf["program:worker-device.cpu"]["command"] == "airflow celery worker --queues 'a b'"
    assert conf["program:worker-device.cpu"]["environment"] == 'IOT_COMPRESS_WORKER_NAME="device.cpu@h"'
    assert "environment" not in conf["program:scheduler"]  # the stack's environment comes from supervisord's own
    assert stack.env()["AIRFLOW__API_AUTH__JWT_SECRET"] not in path.read_text()


def test_stack_supervisord_revives_a_killed_process_and_stop_leaves_no_descendant(tmp_path):
    from celery_stack import Stack

    stack = Stack(home=tmp_path / "home", port=1)
    py = sys.executable
    # a worker whose child shares its group, and one whose child has a session of its own (as Airflow's tasks do)
    grouped = [py, "-c", "import subprocess, time; subprocess.Popen(['sleep', '60']); time.sleep(60)"]
    detached = [py, "-c", "import subprocess, time; subprocess.Popen(['sleep', '60'], start_new_session=True); "
                          "time.sleep(60)"]
    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        stack.supervise({"worker-a": (grouped, {}), "worker-b": (detached, {"SOME_VAR": "x"})})
        children = _wait_for(lambda: _children(stack.pids()) if len(_children(stack.pids())) == 2 else None)
        assert stack.running() == ["worker-a", "worker-b"]
        assert Path(f"/proc/{stack.pids()['worker-b']}/environ").read_bytes().count(b"SOME_VAR=x") == 1
        assert "already running" in _raises(stack.start)

        killed = stack.pids()["worker-a"]
        stack.kill("worker-a")  # supervisord starts it again
        _wait_for(lambda: stack.pids().get("worker-a") not in (None, killed))
        children = _wait_for(lambda: _children(stack.pids()) if len(_children(stack.pids())) == 2 else None)

        supervised = [*stack.pids().values(), *children]
        assert stack.stop() == ["worker-a", "worker-b"]
        _wait_for(lambda: all(_state(pid) in ("Z", "gone") for pid in supervised))
        assert stack.states() == {} and not (stack.home / "supervisord.pid").exists()
        assert stranger.poll() is None  # a process of the same program, not started by the stack, lives on
        assert stack.stop() == []
    finally:
        stack.stop()
        stranger.kill()
        stranger.wait()


def _children(pids: dict[str, int]) -> list[int]:
    import psutil

    return [c.pid for pid in pids.values() for c in psutil.Process(pid).children()]


def _wait_for(condition, timeout: float = 20):
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
    return result


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def _raises(call) -> str:
    from celery_stack import StackError

    with pytest.raises(StackError) as exc:
        call()
    return str(exc.value)


def test_stack_env_shares_one_secret_and_points_workers_at_the_execution_api(tmp_path):
    from celery_stack import Stack

    stack = Stack(home=tmp_path / "home", port=18123, database="postgresql+psycopg2://u@127.0.0.1:5432/db",
                  broker="redis://127.0.0.1:6379/7")
    env = stack.env()
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://127.0.0.1:18123/execution/"
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"] == "db+postgresql://u@127.0.0.1:5432/db"
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == Stack(home=tmp_path / "home").env()["AIRFLOW__API_AUTH__JWT_SECRET"]
    assert (tmp_path / "home" / "jwt_secret").stat().st_mode & 0o777 == 0o600
    assert Stack(home=tmp_path / "other").env()["AIRFLOW__API_AUTH__JWT_SECRET"] != env["AIRFLOW__API_AUTH__JWT_SECRET"]


def test_stack_remembers_its_settings_for_later_commands(tmp_path):
    from celery_stack import Stack

    home = tmp_path / "home"
    home.mkdir()
    assert Stack.from_home(home, port=9999).port == 9999  # never started: the flags given
    (home / "stack.json").write_text(json.dumps({"port": 18555, "params": str(tmp_path / "p.yaml"),
                                                 "database": "postgresql+psycopg2://u@127.0.0.1:5432/x",
                                                 "broker": "redis://127.0.0.1:6379/9"}))
    stack = Stack.from_home(home, port=8080)
    assert (stack.port, stack.params, stack.broker) == (18555, tmp_path / "p.yaml", "redis://127.0.0.1:6379/9")
    assert stack.env()["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == "postgresql+psycopg2://u@127.0.0.1:5432/x"
