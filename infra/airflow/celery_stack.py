"""Start and stop Airflow's deployment mode on this machine: CeleryExecutor, PostgreSQL metadata, Redis broker.

    python infra/airflow/celery_stack.py start [--port 8080] [--params FILE]
    python infra/airflow/celery_stack.py status
    python infra/airflow/celery_stack.py revive         # start again what supervisord gave up restarting
    python infra/airflow/celery_stack.py stop
    eval "$(python infra/airflow/celery_stack.py env)"   # point a shell's `airflow` CLI at the stack

The stack is the one a cluster runs, on loopback: an API server (UI, REST
API, and the execution API the workers call), a scheduler, a DAG processor,
a triggerer, and one Celery worker per queue named in the device pool (plus
`default`), so a device's `profile` and `validate` tasks land on the worker
that serves its queue. Device-queue workers take one task at a time; the
Airflow pools (one slot per physical device) keep timings from sharing a core.

The processes run under a supervisord of the stack's own, with its config,
socket, PID file and logs in the home (`supervisorctl -c <home>/supervisord.conf
status` works too). It restarts a process that exits, and `stop` ends each
process group it started, never a process found by name. PostgreSQL and
Redis are the machine's own (STACK.md);
`AIRFLOW_STACK_DATABASE` / `AIRFLOW_STACK_BROKER` point elsewhere. The JWT
secret the processes share is generated per stack home and kept there (mode
0600), never in the repository; the admin password is the one Airflow's
simple auth manager generates into the home.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shlex
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import xmlrpc.client
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_HOME = ROOT / ".state" / "airflow-deploy"
DEFAULT_DATABASE = "postgresql+psycopg2://postgres@127.0.0.1:5432/iot_compress_airflow"
DEFAULT_BROKER = "redis://127.0.0.1:6379/5"
ADMIN = "admin"
RPC_FACTORY = "supervisor.rpcinterface:make_main_rpcinterface"  # supervisord's XML-RPC API, which supervisorctl uses


@dataclass
class Stack:
    home: Path = DEFAULT_HOME
    port: int = 8080
    params: Path | None = None  # IOT_COMPRESS_PARAMS for every process (default: the project's params.yaml)
    database: str = field(default_factory=lambda: os.environ.get("AIRFLOW_STACK_DATABASE", DEFAULT_DATABASE))
    broker: str = field(default_factory=lambda: os.environ.get("AIRFLOW_STACK_BROKER", DEFAULT_BROKER))
    extra_env: dict[str, str] = field(default_factory=dict)  # e.g. a test's short heartbeat timeout

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    def env(self) -> dict[str, str]:
        """The environment every process of the stack (and a CLI talking to it) runs with."""
        env = dict(os.environ)
        env.update({
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CORE__PARALLELISM": "8",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN}:admin",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.database,
            "AIRFLOW__CELERY__BROKER_URL": self.broker,
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + self.database.replace("+psycopg2", ""),
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__BASE_URL": self.url,
            "AIRFLOW__API_AUTH__JWT_SECRET": self._jwt_secret(),
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.log_dir / "tasks"),
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "True",
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "airflow_local_settings.worker_hostname",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "infra" / "airflow"), str(ROOT),
                                                        os.environ.get("PYTHONPATH")])),
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        })
        state = ROOT / ".state"
        for var, folder in (("XDG_CACHE_HOME", "cache"), ("XDG_CONFIG_HOME", "config"), ("XDG_DATA_HOME", "share"),
                            ("KERAS_HOME", "keras"), ("DVC_SITE_CACHE_DIR", "dvc-site")):
            env.setdefault(var, str(state / folder))
        env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        if self.params:
            env["IOT_COMPRESS_PARAMS"] = str(Path(self.params).resolve())
        env.update(self.extra_env)
        return env

    def _jwt_secret(self) -> str:
        path = self.home / "jwt_secret"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(32))
        return path.read_text().strip()

    # ---- processes ---------------------------------------------------------------------------------

    def queues(self) -> list[str]:
        """`default` and every queue the device pool names, in pool order."""
        out = subprocess.run([sys.executable, "-c", "import json; from components.drivers.airflow_tasks import "
                              "device_routes; print(json.dumps([r['queue'] for r in device_routes()]))"],
                             env=self.env(), cwd=ROOT, capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise StackError(f"could not read the device pool: {out.stderr.strip()[-500:]}")
        return list(dict.fromkeys(["default", *json.loads(out.stdout.strip().splitlines()[-1])]))

    def processes(self) -> dict[str, tuple[list[str], dict[str, str]]]:
        """Name -> (command, environment beyond the stack's) of every process supervisord runs."""
        airflow = str(Path(sys.executable).parent / "airflow")
        procs = {
            "api-server": ([airflow, "api-server", "--port", str(self.port), "--host", "127.0.0.1"], {}),
            "scheduler": ([airflow, "scheduler"], {}),
            "dag-processor": ([airflow, "dag-processor"], {}),
            "triggerer": ([airflow, "triggerer"], {}),
        }
        for queue in self.queues():
            name = f"worker-{queue}"
            concurrency = "2" if queue == "default" else "1"  # one timing at a time on a device
            procs[name] = ([airflow, "celery", "worker", "--queues", queue, "--concurrency", concurrency,
                            "--celery-hostname", f"{queue}@{socket.gethostname()}", "--without-mingle",
                            "--pid", str(self.home / "run" / f"{name}.pid")],  # celery's own lock, one per worker
                           # each local worker: its own log-serving port, its own name on tasks
                           {"AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(_free_port()),
                            "IOT_COMPRESS_WORKER_NAME": f"{queue}@{socket.gethostname()}"})
        return procs

    def write_supervisor_conf(self, programs: dict[str, tuple[list[str], dict[str, str]]]) -> Path:
        """supervisord's config: its socket, PID file and logs in the home, one program per process.

        Every program restarts when it exits and is stopped with its whole process group. The stack's
        environment (database URL, JWT secret) reaches the programs from supervisord's own, never this file.
        """
        sock = self.home / "supervisor.sock"
        sections = [f"[unix_http_server]\nfile={sock}\nchmod=0700",
                    f"[supervisord]\nlogfile={self.log_dir / 'supervisord.log'}\n"
                    f"pidfile={self.home / 'supervisord.pid'}\nchildlogdir={self.log_dir}\ndirectory={ROOT}",
                    f"[rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = {RPC_FACTORY}",
                    f"[supervisorctl]\nserverurl=unix://{sock}"]
        for name, (argv, env) in programs.items():
            lines = [f"[program:{name}]", f"command={shlex.join(argv).replace('%', '%%')}", f"directory={ROOT}",
                     "autorestart=true", "startsecs=10", "stopasgroup=true", "killasgroup=true", "stopwaitsecs=30",
                     "redirect_stderr=true", f"stdout_logfile={self.log_dir / name}.log"]
            if env:
                lines.append("environment=" + ",".join(f'{k}="{v}"' for k, v in env.items()))
            sections.append("\n".join(lines))
        for folder in (self.log_dir, self.home / "run"):
            folder.mkdir(parents=True, exist_ok=True)
        conf = self.home / "supervisord.conf"
        conf.write_text("\n\n".join(sections) + "\n")
        return conf

    def supervise(self, programs: dict[str, tuple[list[str], dict[str, str]]]) -> None:
        """Write the config and start supervisord, which starts every program (used by `start` and tests)."""
        out = subprocess.run([sys.executable, "-m", "supervisor.supervisord", "-c",
                              str(self.write_supervisor_conf(programs))],
                             env=self.env(), cwd=ROOT, capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise StackError(f"supervisord did not start: {(out.stdout + out.stderr).strip()[-1500:]}")

    @classmethod
    def from_home(cls, home: Path, **fallback) -> Stack:
        """The stack as `start` left it in `home` (port, params, stores), so later commands need no flags."""
        saved = home / "stack.json"
        if not saved.exists():
            return cls(home=home, **fallback)
        raw = json.loads(saved.read_text())
        return cls(home=home, port=raw["port"], params=Path(raw["params"]) if raw["params"] else None,
                   database=raw["database"], broker=raw["broker"])

    def start(self, timeout: float = 240) -> None:
        if self.states():
            raise StackError(f"already running: {', '.join(self.running())} (stop it first: celery_stack.py stop)")
        env = self.env()
        (self.home / "stack.json").write_text(json.dumps({
            "port": self.port, "params": str(Path(self.params).resolve()) if self.params else None,
            "database": self.database, "broker": self.broker}, indent=1))
        _ensure_database(self.database)
        self._run_cli(["db", "migrate"], env, "migrating the metadata database")
        pools = subprocess.run([sys.executable, str(ROOT / "infra" / "airflow" / "create_pools.py")], env=env,
                               cwd=ROOT, capture_output=True, text=True, timeout=300)
        if pools.returncode != 0:
            raise StackError(f"creating the pools failed: {pools.stderr.strip()[-1000:]}")
        if not env.get("MLFLOW_TRACKING_URI"):
            self._init_embedded_mlflow(env)
        try:
            self.supervise(self.processes())
            self.wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise

    def _init_embedded_mlflow(self, env: dict[str, str]) -> None:
        """Create the SQLite MLflow store before tasks run side by side (their first-use migrations would race).

        A cluster sets MLFLOW_TRACKING_URI to an MLflow server (infra/mlflow/server.py); SQLite is for one machine.
        """
        init = subprocess.run([sys.executable, "-c", "from components.drivers.airflow_tasks import run_params; "
                               "from components.tracking.server import configured_mlflow; "
                               "configured_mlflow(run_params()).search_experiments()"],
                              env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
        if init.returncode != 0:
            raise StackError(f"creating the MLflow store failed: {init.stderr.strip()[-1000:]}")

    def wait_healthy(self, timeout: float = 240) -> None:
        """Until the API answers, the scheduler, DAG processor and triggerer heartbeat and every worker is ready."""
        deadline = time.monotonic() + timeout
        logs = {n: self.log_dir / f"{n}.log" for n in self.states()}
        seen = {n: path.stat().st_size if path.exists() else 0 for n, path in logs.items()}  # earlier starts' lines
        waiting = "the API server"
        while time.monotonic() < deadline:
            dead = [n for n, state in self.states().items() if state not in ("STARTING", "RUNNING")]
            if dead:  # exited within startsecs: supervisord backs off and retries, but the start has failed
                tail = logs[dead[0]].read_text(errors="replace")[-1500:]
                raise StackError(f"{', '.join(dead)} exited while starting; {dead[0]}.log ends:\n{tail}")
            try:
                health = _get_json(f"{self.url}/api/v2/monitor/health")
                unhealthy = [k for k in ("metadatabase", "scheduler", "dag_processor", "triggerer")
                             if (health.get(k) or {}).get("status") != "healthy"]
                workers = [n for n, path in logs.items() if n.startswith("worker-")
                           and b"ready." not in path.read_bytes()[seen[n]:]]
                waiting = ", ".join(unhealthy + workers)
                if not waiting:
                    return
            except (OSError, ValueError):
                pass
            time.sleep(1)
        raise StackError(f"the stack was not healthy after {timeout:.0f} s; still waiting for {waiting} "
                         f"(logs in {self.log_dir})")

    def stop(self) -> list[str]:
        """Stop every process (SIGTERM to its group, SIGKILL after 30 s), then supervisord; return the names stopped.

        Airflow starts each task in a process group of its own, out of reach of its worker's group: the
        processes' descendants are collected first and killed if they outlive it, so nothing the stack
        started outlives it.
        """
        if not self.states():
            return []
        pids = self.pids()
        descendants = [proc for pid in pids.values() for proc in _tree(pid)[1:]]
        self._rpc().stopAllProcesses(True)  # waits until each has stopped
        _shutdown(self._rpc)
        _kill(descendants)
        return sorted(pids)

    def revive(self) -> list[str]:
        """Start every process supervisord gave up on (FATAL: it kept exiting, say while PostgreSQL was down)."""
        dead = [name for name, state in self.states().items() if state not in ("STARTING", "RUNNING", "BACKOFF")]
        for name in dead:
            self._rpc().startProcess(name, False)
        return dead

    def kill(self, name: str) -> None:
        """SIGKILL one process of the stack and everything it started, as if its machine died (a fault drill).

        Airflow's task supervisor starts each task in a process group of its own, so the worker's group
        alone would leave the task running. supervisord then starts the process again.
        """
        _kill(_tree(self.pids().get(name)))

    def states(self) -> dict[str, str]:
        """Name -> supervisord's state (RUNNING, STARTING, BACKOFF, FATAL, ...); empty when supervisord is not up."""
        return {p["name"]: p["statename"] for p in self._processes()}

    def pids(self) -> dict[str, int]:
        """Name -> PID of every process that runs now."""
        return {p["name"]: p["pid"] for p in self._processes() if p["pid"]}

    def _processes(self) -> list[dict]:
        try:
            return self._rpc().getAllProcessInfo()
        except (OSError, xmlrpc.client.Fault):  # no socket, a stale one, or shutting down
            return []

    def running(self) -> list[str]:
        return sorted(n for n, state in self.states().items() if state in ("STARTING", "RUNNING"))

    def _rpc(self):
        """supervisord's XML-RPC interface over its unix socket (what supervisorctl talks to)."""
        from supervisor.xmlrpc import SupervisorTransport

        transport = SupervisorTransport(serverurl=f"unix://{self.home / 'supervisor.sock'}")
        return xmlrpc.client.ServerProxy("http://127.0.0.1", transport).supervisor

    def _run_cli(self, args: list[str], env: dict[str, str], what: str) -> None:
        out = subprocess.run([str(Path(sys.executable).parent / "airflow"), *args], env=env, cwd=ROOT,
                             capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            raise StackError(f"{what} failed: {(out.stdout + out.stderr).strip()[-1500:]}")

    def api(self) -> AirflowAPI:
        return AirflowAPI(self.url, ADMIN, self.admin_password())

    def admin_password(self) -> str:
        path = self.home / "simple_auth_manager_passwords.json.generated"
        return json.loads(path.read_text())[ADMIN]


class StackError(RuntimeError):
    pass


class AirflowAPI:
    """The few calls of Airflow's REST API (v2) that the tests, the benchmark and a user's script need."""

    def __init__(self, url: str, username: str, password: str):
        self.url, self._credentials, self._token = url, {"username": username, "password": password}, None

    def request(self, method: str, path: str, body: dict | None = None) -> dict:
        if self._token is None:
            self._token = _post_json(f"{self.url}/auth/token", self._credentials)["access_token"]
        req = urllib.request.Request(f"{self.url}{path}", method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json",
                                              "Authorization": f"Bearer {self._token}"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            raise StackError(f"{method} {path}: HTTP {exc.code}: {exc.read().decode(errors='replace')[:500]}") from exc

    def wait_for_dag(self, dag_id: str, timeout: float = 180) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.request("GET", f"/api/v2/dags/{dag_id}")
            except StackError:
                if time.monotonic() > deadline:
                    raise StackError(f"DAG {dag_id} was not parsed within {timeout:.0f} s") from None
                time.sleep(2)

    def unpause(self, dag_id: str) -> None:
        self.request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})

    def pause(self, dag_id: str) -> None:
        self.request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": True})

    def trigger(self, dag_id: str, conf: dict | None = None, run_id: str | None = None) -> dict:
        body: dict = {"logical_date": None, "conf": conf or {}}
        if run_id:
            body["dag_run_id"] = run_id
        return self.request("POST", f"/api/v2/dags/{dag_id}/dagRuns", body)

    def run(self, dag_id: str, run_id: str) -> dict:
        return self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{urllib.request.quote(run_id, safe='')}")

    def wait_run(self, dag_id: str, run_id: str, timeout: float, on_poll=None) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            run = self.run(dag_id, run_id)
            if run["state"] in ("success", "failed"):
                return run
            if on_poll:
                on_poll(run)
            if time.monotonic() > deadline:
                raise StackError(f"run {run_id} still {run['state']} after {timeout:.0f} s")
            time.sleep(3)

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        quoted = urllib.request.quote(run_id, safe="")
        return self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{quoted}/taskInstances?limit=1000")["task_instances"]


def _ensure_database(url: str) -> None:
    """Create the metadata database on first start (the machine's PostgreSQL has trust auth on loopback)."""
    import psycopg2
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    conn = psycopg2.connect(host=parsed.host, port=parsed.port or 5432, user=parsed.username,
                            password=parsed.password, dbname="postgres")
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("select 1 from pg_database where datname = %s", (parsed.database,))
            if cur.fetchone() is None:
                cur.execute(f'create database "{parsed.database}"')
    finally:
        conn.close()


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def _post_json(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def _tree(pid: int | None) -> list:
    """The process and all its descendants, as psutil processes (none when it is gone)."""
    import psutil

    try:
        proc = psutil.Process(pid) if pid else None
        return [proc, *proc.children(recursive=True)] if proc else []
    except psutil.Error:
        return []


def _kill(procs: list) -> None:
    import psutil

    for proc in procs:
        try:
            proc.kill()
        except psutil.Error:
            pass


def _shutdown(rpc, timeout: float = 30) -> None:
    """Ask supervisord to exit and wait until it has (its socket stops answering), so a new start finds it gone."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            rpc().shutdown()
        except xmlrpc.client.Fault:  # already shutting down
            pass
        except OSError:
            return
        time.sleep(0.2)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=("start", "stop", "status", "revive", "env"))
    p.add_argument("--home", type=Path, default=DEFAULT_HOME, help="AIRFLOW_HOME of the stack (default: %(default)s)")
    p.add_argument("--port", type=int, default=8080, help="API server port on 127.0.0.1")
    p.add_argument("--params", type=Path, default=None, help="params file for every task (default: params.yaml)")
    args = p.parse_args(argv)
    if args.command == "start":
        stack = Stack(home=args.home.resolve(), port=args.port, params=args.params)
    else:
        stack = Stack.from_home(args.home.resolve(), port=args.port, params=args.params)
    try:
        if args.command == "start":
            print(f"starting Airflow (CeleryExecutor) in {stack.home} ...", flush=True)
            stack.start()
            print(f"up: {', '.join(stack.running())}\nUI and REST API: {stack.url} (user {ADMIN}, password in "
                  f"{stack.home / 'simple_auth_manager_passwords.json.generated'})\nlogs: {stack.log_dir}")
        elif args.command == "stop":
            stopped = stack.stop()
            print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
        elif args.command == "revive":
            revived = stack.revive()
            print(f"started again: {', '.join(revived)}" if revived else "every process is running")
        elif args.command == "status":
            states = stack.states()  # as `supervisorctl -c <home>/supervisord.conf status` shows them
            print("\n".join(f"{name:<24} {state}" for name, state in states.items()) or "not running")
            return 0 if stack.running() else 1
        else:
            keys = [k for k in stack.env() if k.startswith(("AIRFLOW", "IOT_COMPRESS")) or k == "PYTHONPATH"]
            env = stack.env()
            print("\n".join(f"export {k}={shlex.quote(env[k])}" for k in keys))
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
