"""After `make run`'s pipeline, `mlflow ui` (as `python -m components mlflow-ui`) shows the run and its artifacts."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import yaml

from tests.conftest import subprocess_env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(port: int, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.mark.slow
def test_mlflow_ui_lists_the_ingest_run_and_its_artifacts(tmp_path, params_file):
    params = params_file()
    raw = yaml.safe_load(params.read_text())
    raw["profile"]["devices"] = ["ort-1t", "cortex-m4"]  # one timed device, one computed: the UI is the point
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    env = subprocess_env(tmp_path)
    run = subprocess.run([sys.executable, "-m", "components", "pipeline", "--params", str(params)], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "components", "mlflow-ui", "--params", str(params), "--port", str(port)],
                          cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                experiments = api(port, "/api/2.0/mlflow/experiments/search", {"max_results": 10})["experiments"]
                break
            except OSError:
                assert time.monotonic() < deadline, "mlflow ui did not answer within 90 s"
                assert ui.poll() is None, "mlflow ui exited"
                time.sleep(1)
        [exp] = [e for e in experiments if e["name"] == "compress_nightly"]
        runs = api(port, "/api/2.0/mlflow/runs/search", {"experiment_ids": [exp["experiment_id"]]})["runs"]
        by_name = {r["info"]["run_name"]: r for r in runs}
        assert {"ingest", "pipeline", "validate/ort-1t", "validate/cortex-m4"} <= set(by_name)
        metrics = {m["key"]: m["value"] for m in by_name["ingest"]["data"]["metrics"]}
        assert metrics["windows"] == 2426
        run_id = by_name["ingest"]["info"]["run_id"]
        files = api(port, f"/api/2.0/mlflow/artifacts/list?run_id={run_id}&path=ingest")["files"]
        assert {"ingest/data_card.json", "ingest/validation.json"} <= {f["path"] for f in files}
        validated = by_name["validate/ort-1t"]["info"]["run_id"]
        files = api(port, f"/api/2.0/mlflow/artifacts/list?run_id={validated}&path=validate/ort-1t")["files"]
        assert {"validate/ort-1t/report.html", "validate/ort-1t/report.json"} <= {f["path"] for f in files}
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        ui.wait(timeout=30)
