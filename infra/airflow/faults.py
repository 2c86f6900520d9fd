"""Restart Redis or PostgreSQL under a running nightly DAG run, and report what the deployment did.

    python infra/airflow/celery_stack.py start          # the stack, first
    python infra/airflow/faults.py redis    [--device cortex-m4] [--down 10]
    python infra/airflow/faults.py postgres [--device cortex-m4] [--down 10]

Triggers `compress_nightly` for one device through the REST API, waits until
a task is running, stops the service (Redis: SHUTDOWN NOSAVE; PostgreSQL:
`pg_ctlcluster ... stop -m fast`), keeps it down for --down seconds, starts it
again with the machine's own start command (STACK.md), then waits for the run
to end. The stack's supervisord restarts a process that exits; what kept
exiting while the service was down (FATAL) is started once more
(`celery_stack.py revive`). Prints the run's state, every task that needed
more than one try, and which processes were restarted. Exit status 0 when
the run succeeded and every process is still up.

These are the machine's shared services: run it on your own machine, never
beside other work that uses them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from celery_stack import DEFAULT_HOME, Stack, StackError  # noqa: E402

DAG = "compress_nightly"


def _postgres_cluster() -> list[str]:
    version = sorted(p.name for p in Path("/etc/postgresql").iterdir())[-1]
    return ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main"]


def stop_service(service: str) -> None:
    if service == "redis":
        subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", "6379", "shutdown", "nosave"], capture_output=True,
                       timeout=30)
    else:
        subprocess.run([*_postgres_cluster(), "stop", "-m", "fast"], check=True, timeout=120)


def start_service(service: str) -> None:
    if service == "redis":
        subprocess.run(["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port", "6379",
                        "--save", "", "--appendonly", "no", "--dir", "/var/lib/redis",
                        "--logfile", "/var/log/redis/ci.log"], check=True, timeout=60)
    else:
        subprocess.run([*_postgres_cluster(), "start"], check=True, timeout=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("service", choices=("redis", "postgres"))
    p.add_argument("--home", type=Path, default=DEFAULT_HOME)
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--device", default="cortex-m4", help="the run covers only this device (keeps it short)")
    p.add_argument("--down", type=float, default=10, help="seconds the service stays down")
    p.add_argument("--timeout", type=float, default=3600)
    args = p.parse_args(argv)
    stack = Stack.from_home(args.home.resolve(), port=args.port)
    before = stack.pids()
    if not before:
        print("error: the stack is not running (python infra/airflow/celery_stack.py start)", file=sys.stderr)
        return 2
    api = stack.api()
    api.unpause(DAG)
    run_id = api.trigger(DAG, conf={"devices": [args.device]}, run_id=f"fault_{args.service}_{int(time.time())}")[
        "dag_run_id"]
    print(f"triggered {run_id}", flush=True)
    while not [t for t in api.task_instances(DAG, run_id) if t["state"] == "running"]:
        time.sleep(1)
    running = [t["task_id"] for t in api.task_instances(DAG, run_id) if t["state"] == "running"]
    print(f"{args.service}: stopping while {running} run", flush=True)
    stop_service(args.service)
    time.sleep(args.down)
    start_service(args.service)
    print(f"{args.service}: started again after {args.down:.0f} s", flush=True)
    time.sleep(15)  # let the stack's processes notice; supervisord restarts those that exit
    revived = stack.revive()  # those it gave up on while the database was down
    print(f"processes supervisord had given up on, started again: {revived or 'none'}", flush=True)
    deadline = time.monotonic() + args.timeout
    while True:
        try:
            run = api.wait_run(DAG, run_id, timeout=max(1.0, deadline - time.monotonic()))
            break
        except (StackError, OSError) as exc:  # the API itself may answer 5xx while its database is down
            if time.monotonic() > deadline:
                raise
            print(f"  (API not answering yet: {str(exc)[:120]})", flush=True)
            time.sleep(5)
    tis = api.task_instances(DAG, run_id)
    retried = {f"{t['task_id']}[{t.get('rendered_map_index') or t['map_index']}]": t["try_number"]
               for t in tis if (t["try_number"] or 0) > 1}
    after = stack.pids()
    report = {"service": args.service, "down_s": args.down, "run": run_id, "state": run["state"],
              "retried_tasks": retried, "processes_restarted": sorted(n for n in before if after.get(n) != before[n]),
              "processes_revived": revived, "processes_lost": sorted(set(before) - set(after))}
    print(json.dumps(report, indent=1))
    return 0 if run["state"] == "success" and not report["processes_lost"] else 1


if __name__ == "__main__":
    sys.exit(main())
