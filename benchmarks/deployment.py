"""The nightly DAG's trigger-to-success time, embedded and deployed, the scheduler's overhead, and DAG parse time.

- DAG parse time: `airflow dags report` (the DagBag statistics the DAG
  processor collects for every file), median of --parse-rounds, per file.
  Aim: under 0.5 s.
- Embedded mode: `airflow dags test compress_nightly` on SQLite (one process,
  no scheduler), timed from start to success.
- Deployment mode: `infra/airflow/celery_stack.py` on PostgreSQL + Redis,
  one Celery worker per device queue, the run triggered through the REST API
  and timed from queued to success.

For each mode: the sum of the task durations, wall time minus that sum (what
the issue calls scheduler overhead; negative when tasks ran in parallel), and
the per-task hand-over delay: a task's start minus the end of its last
upstream task, which is what the scheduler and the executor add per task.

    python benchmarks/deployment.py [--params params.yaml] [--modes parse embedded deployment] [--work DIR]

Everything (Airflow homes, MLflow store, stage outputs) goes under --work
(default .state/bench-deployment); the deployment's PostgreSQL database is
dropped at the end. Run it on a quiet machine: it runs the whole pipeline
once per mode (about 15 minutes each on the default settings here).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "infra" / "airflow"))

from celery_stack import Stack  # noqa: E402

DAG = "compress_nightly"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--modes", nargs="+", default=["parse", "embedded", "deployment"],
                        choices=["parse", "embedded", "deployment"])
    parser.add_argument("--work", type=Path, default=ROOT / ".state" / "bench-deployment")
    parser.add_argument("--parse-rounds", type=int, default=5)
    args = parser.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    if "parse" in args.modes:
        results["parse"] = parse_time(work, args.params, args.parse_rounds)
    for mode in ("embedded", "deployment"):
        if mode in args.modes:
            params = _params_copy(args.params, work / mode)
            results[mode] = (embedded if mode == "embedded" else deployment)(work / mode, params)
            print(f"{mode}: {json.dumps(results[mode], indent=1)}", flush=True)
    (work / "results.json").write_text(json.dumps(results, indent=1))
    _print_table(results)


def _params_copy(params: Path, folder: Path) -> Path:
    """The given params with outputs and stores redirected into this mode's own folder."""
    folder.mkdir(parents=True, exist_ok=True)
    raw = yaml.safe_load(params.read_text())
    base = params.resolve().parent
    for section, key in (("ingest", "data_root"), ("profile", "devices_file")):
        value = Path(raw[section][key])
        raw[section][key] = str(value if value.is_absolute() else base / value)
    raw["pipeline"]["state_dir"] = str(folder / ".state")
    raw["pipeline"]["runs_dir"] = str(folder / ".state" / "runs")
    out = folder / "params.yaml"
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    return out


def _embedded_env(home: Path, params: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "IOT_COMPRESS_PARAMS": str(params),
                "IOT_COMPRESS_DEADLINE_H": "0",  # airflow dags test cannot run a DAG with deadline alerts
                "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "infra" / "airflow"), str(ROOT),
                                                            env.get("PYTHONPATH")]))})
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _airflow() -> str:
    return str(Path(sys.executable).parent / "airflow")


def parse_time(work: Path, params: Path, rounds: int) -> dict:
    env = _embedded_env(work / "parse-home", params)
    subprocess.run([_airflow(), "db", "migrate"], env=env, capture_output=True, check=True, timeout=600)
    per_file: dict[str, list[float]] = {}
    for _ in range(rounds):
        out = subprocess.run([_airflow(), "dags", "report", "--output", "json"], env=env, capture_output=True,
                             text=True, timeout=300, check=True)
        for row in json.loads(out.stdout.strip().splitlines()[-1]):  # the report is the last line
            per_file.setdefault(Path(row["file"]).name, []).append(_seconds(row["duration"]))
    return {name: {"median_s": statistics.median(v), "max_s": max(v), "rounds": len(v)}
            for name, v in per_file.items()}


def _seconds(value) -> float:
    if isinstance(value, (int, float)):
        return float(value)
    h, m, s = str(value).split(":")  # a timedelta printed as H:MM:SS.ffffff
    return int(h) * 3600 + int(m) * 60 + float(s)


def embedded(folder: Path, params: Path) -> dict:
    home = folder / "airflow"
    env = _embedded_env(home, params)
    subprocess.run([_airflow(), "db", "migrate"], env=env, capture_output=True, check=True, timeout=600)
    start = time.monotonic()
    run = subprocess.run([_airflow(), "dags", "test", DAG], env=env, capture_output=True, text=True, timeout=7200)
    wall = time.monotonic() - start
    if run.returncode != 0:
        raise SystemExit(f"embedded run failed:\n{(run.stdout + run.stderr)[-3000:]}")
    import sqlite3

    with sqlite3.connect(home / "airflow.db") as db:
        rows = db.execute("select task_id, map_index, state, start_date, end_date from task_instance").fetchall()
    tis = [{"task_id": r[0], "map_index": r[1], "state": r[2], "start_date": r[3], "end_date": r[4]} for r in rows]
    return _summary(wall, tis)


def deployment(folder: Path, params: Path) -> dict:
    import psycopg2

    database = f"iot_af_bench_{uuid.uuid4().hex[:8]}"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # a Redis database of its own: a stack already running on this machine (db 5) must not take its tasks
    stack = Stack(home=folder / "airflow", port=port, params=params,
                  database=f"postgresql+psycopg2://postgres@127.0.0.1:5432/{database}",
                  broker="redis://127.0.0.1:6379/4")
    started = time.monotonic()
    try:
        stack.start(timeout=300)
        startup = time.monotonic() - started
        api = stack.api()
        api.wait_for_dag(DAG)
        api.unpause(DAG)
        run_id = api.trigger(DAG, run_id=f"bench_{uuid.uuid4().hex[:6]}")["dag_run_id"]
        run = api.wait_run(DAG, run_id, timeout=7200)
        if run["state"] != "success":
            raise SystemExit(f"deployment run {run_id} ended {run['state']} (logs in {stack.log_dir})")
        tis = api.task_instances(DAG, run_id)
        wall = (_ts(run["end_date"]) - _ts(run["queued_at"])).total_seconds()
        summary = _summary(wall, tis)
        summary["stack_start_s"] = round(startup, 1)
        summary["dag_processor_log_parse_s"] = _processor_log_figure(stack.log_dir / "dag-processor.log")
        return summary
    finally:
        stack.stop()
        conn = psycopg2.connect(host="127.0.0.1", port=5432, user="postgres", dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'drop database if exists "{database}" with (force)')
        conn.close()


def _ts(value) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))


def _summary(wall: float, tis: list[dict]) -> dict:
    ran = [t for t in tis if t["start_date"] and t["end_date"] and t["state"] == "success"]
    durations = {(t["task_id"], t["map_index"]): (_ts(t["end_date"]) - _ts(t["start_date"])).total_seconds()
                 for t in ran}
    ends: dict[str, datetime] = {}
    for t in ran:
        ends[t["task_id"]] = max(ends.get(t["task_id"], _ts(t["end_date"])), _ts(t["end_date"]))
    upstream = _upstream()
    handovers = []
    for t in ran:
        before = [ends[u] for u in upstream.get(t["task_id"], ()) if u in ends]
        if before:
            handovers.append(max(0.0, (_ts(t["start_date"]) - max(before)).total_seconds()))
    total = sum(durations.values())
    return {"wall_s": round(wall, 1), "tasks": len(ran), "sum_task_durations_s": round(total, 1),
            "wall_minus_sum_s": round(wall - total, 1),
            "handover_median_s": round(statistics.median(handovers), 2) if handovers else None,
            "handover_max_s": round(max(handovers), 2) if handovers else None}


def _upstream() -> dict[str, set[str]]:
    """Each task's upstream task ids, from the DAG itself (parsed once, nothing run)."""
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(ROOT / "dags" / "compress_nightly.py")).dags[DAG]
    return {t.task_id: set(t.upstream_task_ids) for t in dag.tasks}


def _processor_log_figure(log: Path) -> float | None:
    """The last 'Last Runtime' the DAG processor printed for compress_nightly.py in its stats table, if any."""
    figure = None
    if log.exists():
        for line in log.read_text(errors="replace").splitlines():
            if "compress_nightly.py" in line:
                for cell in line.split():
                    if cell.endswith("s") and cell[:-1].replace(".", "", 1).isdigit():
                        figure = float(cell[:-1])
    return figure


def _print_table(results: dict) -> None:
    if "parse" in results:
        print("\nDAG parse time (airflow dags report, median):")
        for name, row in results["parse"].items():
            verdict = "met" if row["median_s"] < 0.5 else "NOT met"
            print(f"  {name}: {row['median_s']:.3f} s (max {row['max_s']:.3f} s) - aim < 0.5 s {verdict}")
    print("\n| mode | trigger to success s | tasks | sum of task durations s | wall - sum s | hand-over median s "
          "| hand-over max s |\n|---|---|---|---|---|---|---|")
    for mode in ("embedded", "deployment"):
        if mode in results:
            r = results[mode]
            print(f"| {mode} | {r['wall_s']} | {r['tasks']} | {r['sum_task_durations_s']} | {r['wall_minus_sum_s']} "
                  f"| {r['handover_median_s']} | {r['handover_max_s']} |")


if __name__ == "__main__":
    main()
