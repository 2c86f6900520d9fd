"""How long until a night with a dead tracking server fails, and with what message.

Points MLFLOW_TRACKING_URI at a port on 127.0.0.1 where nothing listens and
runs the pipeline twice, as a user and as the scheduler would:

- `python -m components pipeline` (the command line, DVC and KFP run each stage so);
- `airflow dags test compress_nightly` (the nightly DAG, in-process, with the
  DAG's own retry settings: IOT_COMPRESS_RETRY_DELAY_S is left as a night has it).

Prints each one's wall time, exit status and the errors it reported (the
command's last stderr line; the DAG's alerts file: stage, device, error).

    python benchmarks/dead_tracking_server.py [--data-root DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scratch_params(folder: Path, data_root: str | None) -> Path:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["ingest"]["dataset"] = "hhar_sa"  # the smallest real set: the failure comes before any real work
    if data_root:
        raw["ingest"]["data_root"] = data_root
    else:
        raw["ingest"]["data_root"] = str((ROOT / raw["ingest"]["data_root"]).resolve())
    raw["profile"]["devices"] = ["ort-1t", "cortex-m4"]
    raw["profile"]["devices_file"] = str(ROOT / "infra" / "devices.yaml")
    raw["pipeline"]["state_dir"] = str(folder / ".state")
    raw["pipeline"]["runs_dir"] = str(folder / ".state" / "runs")
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def environment(folder: Path, params: Path, uri: str) -> dict[str, str]:
    env = dict(os.environ)
    env |= {"MLFLOW_TRACKING_URI": uri, "IOT_COMPRESS_PARAMS": str(params), "IOT_COMPRESS_DEADLINE_H": "0",
            "AIRFLOW_HOME": str(folder / "airflow"), "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "infra" / "airflow"), env.get("PYTHONPATH")]))}
    for var in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "KERAS_HOME"):
        env[var] = str(folder / var.lower())
    env.pop("MLFLOW_HTTP_REQUEST_MAX_RETRIES", None)  # the project's defaults, as a night has them
    return env


def timed(cmd: list[str], env: dict[str, str], cwd: Path, limit_s: float) -> tuple[float, int, str]:
    started = time.perf_counter()
    try:
        out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=limit_s)
    except subprocess.TimeoutExpired:
        return time.perf_counter() - started, -1, f"still running after {limit_s:.0f} s"
    return time.perf_counter() - started, out.returncode, out.stdout + out.stderr


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default=os.environ.get("IOT_COMPRESS_DATA_ROOT"))
    p.add_argument("--limit-s", type=float, default=3600, help="give up on a run after this long")
    args = p.parse_args()
    uri = f"http://127.0.0.1:{free_port()}"
    print(f"tracking server: {uri} (nothing listens there)\n")
    with tempfile.TemporaryDirectory(prefix="dead-tracking-") as tmp:
        folder = Path(tmp)
        env = environment(folder, scratch_params(folder, args.data_root), uri)

        wall, code, output = timed([sys.executable, "-m", "components", "pipeline"], env, folder, args.limit_s)
        errors = [line for line in output.splitlines() if line.startswith("error:")]
        print(f"python -m components pipeline: exit {code} after {wall:.0f} s")
        for line in errors[-3:]:
            print(f"  {line[:400]}")

        airflow = str(Path(sys.executable).parent / "airflow")
        subprocess.run([airflow, "db", "migrate"], env=env, capture_output=True, timeout=600, check=True)
        wall, code, output = timed([airflow, "dags", "test", "compress_nightly"], env, folder, args.limit_s)
        state = "failed" if "state=failed" in output else "success" if "state=success" in output else "unknown"
        print(f"\nairflow dags test compress_nightly: run {state} (exit {code}) after {wall:.0f} s")
        for alerts in sorted((folder / ".state" / "runs").glob("*/alerts.jsonl")):
            for line in alerts.read_text().splitlines():
                alert = json.loads(line)
                where = f"{alert['stage']}" + (f" [{alert['device']}]" if alert["device"] else "")
                print(f"  {alert['event']:<13} {where:<24} try {alert['try_number']}: {(alert['error'] or '')[:300]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
