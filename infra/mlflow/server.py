"""Start and stop MLflow's server mode on this machine: PostgreSQL backend store, S3 artifact store.

    python infra/mlflow/server.py start [--port 5000] [--workers 2] [--with-moto [--moto-port 9000]]
    python infra/mlflow/server.py status
    python infra/mlflow/server.py stop

Configuration comes from the environment only, so the same command serves a
laptop, CI and production, and no credential is ever written to a file:

- `MLFLOW_BACKEND_STORE_URI`: `postgresql+psycopg2://USER[:PASSWORD]@HOST:PORT/DB`
  (default: the machine's trust-auth PostgreSQL, database `iot_compress_mlflow`);
  the database is created when missing.
- `MLFLOW_ARTIFACTS_DESTINATION`: `s3://BUCKET/PREFIX` (default
  `s3://iot-compress/mlflow`). The server proxies every artifact upload and
  download (`--serve-artifacts`), so clients need only `MLFLOW_TRACKING_URI`,
  never S3 credentials.
- `MLFLOW_S3_ENDPOINT_URL`: the S3 endpoint of MinIO or moto (unset for AWS),
  `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (or any other source boto3
  reads: a profile, an instance role). The server's own S3 retries are
  botocore's, kept short here (`AWS_RETRY_MODE=standard`,
  `AWS_MAX_ATTEMPTS=3` unless set): the client retries a failed proxied
  upload with backoff and reports it (components/tracking/runs.py).
- `MLFLOW_SERVER_PORT`: the port when `--port` is not given (default 5000).

`--with-moto` also starts `moto_server`, an in-memory S3, on loopback, and
creates the bucket: a self-contained demo whose artifacts vanish when it
stops. Both run under a supervisord of their own, whose config, socket, PID
file and logs are in `.state/mlflow-server/` (or `--home`): it restarts the
MLflow server if it exits, and `stop` ends each process group it started,
never a process found by name.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import xmlrpc.client
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_HOME = ROOT / ".state" / "mlflow-server"
DEFAULT_BACKEND = "postgresql+psycopg2://postgres@127.0.0.1:5432/iot_compress_mlflow"
DEFAULT_DESTINATION = "s3://iot-compress/mlflow"
DEFAULT_PORT = 5000
DEFAULT_MOTO_PORT = 9000
HOST = "127.0.0.1"
# moto accepts any key; these fill in only for the demo, when the environment names none.
MOTO_DEMO_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "moto-demo", "AWS_SECRET_ACCESS_KEY": "moto-demo"}


class ServerError(RuntimeError):
    """The server could not be started, checked or stopped; the message says what to look at."""


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def masked(uri: str) -> str:
    """The URI with any password hidden, for messages and the state file."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(uri).render_as_string(hide_password=True)
    except Exception:  # not a database URL
        return uri


# ---- PostgreSQL -----------------------------------------------------------------------------------


def ensure_database(uri: str) -> bool:
    """Create the backend database if it is missing (PostgreSQL only); True if it was created."""
    from sqlalchemy.engine import make_url

    url = make_url(uri)
    if not url.drivername.startswith("postgresql"):
        return False
    import psycopg2
    from psycopg2 import sql

    try:
        conn = psycopg2.connect(dbname="postgres", user=url.username, password=url.password, host=url.host,
                                port=url.port or 5432, connect_timeout=10)
    except psycopg2.OperationalError as exc:
        raise ServerError(f"PostgreSQL at {url.host}:{url.port or 5432} refused the connection "
                          f"({str(exc).strip()}); check MLFLOW_BACKEND_STORE_URI") from exc
    try:
        conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (url.database,))
            if cur.fetchone():
                return False
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(url.database)))
            return True
    finally:
        conn.close()


# ---- S3 -------------------------------------------------------------------------------------------


def split_s3(destination: str) -> tuple[str, str]:
    if not destination.startswith("s3://"):
        raise ServerError(f"MLFLOW_ARTIFACTS_DESTINATION must be s3://BUCKET[/PREFIX], got {destination!r}")
    bucket, _, prefix = destination.removeprefix("s3://").partition("/")
    return bucket, prefix.strip("/")


def s3_client(env: dict[str, str]):
    """A boto3 client as the server will see S3, failing fast: a start-up check should not sit through retries."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=env.get("MLFLOW_S3_ENDPOINT_URL") or None,
                        aws_access_key_id=env.get("AWS_ACCESS_KEY_ID"),
                        aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY"),
                        aws_session_token=env.get("AWS_SESSION_TOKEN"),
                        region_name=env.get("AWS_DEFAULT_REGION", "us-east-1"),
                        config=Config(connect_timeout=5, read_timeout=30, retries={"max_attempts": 2}))


def check_bucket(destination: str, env: dict[str, str], create: bool = False) -> None:
    """The bucket answers with the server's credentials (or is created, for moto) before the server takes traffic."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _ = split_s3(destination)
    client = s3_client(env)
    where = env.get("MLFLOW_S3_ENDPOINT_URL") or "AWS"
    try:
        client.head_bucket(Bucket=bucket)
        return
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if not (create and code in ("404", "NoSuchBucket")):
            raise ServerError(f"S3 bucket {bucket!r} at {where}: {code or exc}; check the bucket name in "
                              "MLFLOW_ARTIFACTS_DESTINATION and the credentials (AWS_ACCESS_KEY_ID / "
                              "AWS_SECRET_ACCESS_KEY)") from exc
    except BotoCoreError as exc:
        raise ServerError(f"S3 endpoint {where} did not answer ({exc}); check MLFLOW_S3_ENDPOINT_URL") from exc
    client.create_bucket(Bucket=bucket)


# ---- processes ------------------------------------------------------------------------------------


def write_supervisor_conf(home: Path, programs: dict[str, list[str]]) -> Path:
    """supervisord's config: socket, PID file and logs in `home`; programs start when `start` asks for them.

    The MLflow server is started again if it exits; moto is not (a new one would have lost the bucket). The
    environment, credentials included, reaches the programs from supervisord's own, never this file.
    """
    lines = [f"[unix_http_server]\nfile={home / 'supervisor.sock'}\nchmod=0700\n",
             f"[supervisord]\nlogfile={home / 'supervisord.log'}\npidfile={home / 'supervisord.pid'}\n"
             f"childlogdir={home}\ndirectory={home}\n",
             "[rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = "
             "supervisor.rpcinterface:make_main_rpcinterface\n",
             f"[supervisorctl]\nserverurl=unix://{home / 'supervisor.sock'}\n"]
    for name, argv in programs.items():
        lines.append(f"[program:{name}]\ncommand={shlex.join(argv).replace('%', '%%')}\n"
                     f"directory={home}\nautostart=false\nautorestart={str(name == 'server').lower()}\n"
                     "startsecs=10\nstopasgroup=true\nkillasgroup=true\nstopwaitsecs=20\nredirect_stderr=true\n"
                     f"stdout_logfile={home / name}.log\n")
    home.mkdir(parents=True, exist_ok=True)
    (home / "supervisord.conf").write_text("\n".join(lines))
    return home / "supervisord.conf"


def _rpc(home: Path):
    """supervisord's XML-RPC interface over its unix socket (what supervisorctl talks to)."""
    from supervisor.xmlrpc import SupervisorTransport

    sock = f"unix://{home / 'supervisor.sock'}"
    return xmlrpc.client.ServerProxy("http://127.0.0.1", SupervisorTransport(serverurl=sock)).supervisor


def processes(home: Path) -> dict[str, dict]:
    """Name -> supervisord's process info (statename, pid, ...); empty when its supervisord is not up."""
    try:
        return {p["name"]: p for p in _rpc(home).getAllProcessInfo()}
    except (OSError, xmlrpc.client.Fault):  # no socket, a stale one, or shutting down
        return {}


def supervise(home: Path, programs: dict[str, list[str]], env: dict[str, str]) -> None:
    """Write the config and start supervisord with `env`, which its programs inherit."""
    out = subprocess.run([sys.executable, "-m", "supervisor.supervisord", "-c",
                          str(write_supervisor_conf(home, programs))],
                         env=env, cwd=home, capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise ServerError(f"supervisord did not start: {(out.stdout + out.stderr).strip()[-1500:]}")


def _get(url: str, timeout: float = 5) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read().decode()


def start_and_wait(home: Path, name: str, url: str, timeout: float) -> None:
    """Start one program and poll `url` until it answers; fail with the log's tail if it exits or time runs out."""
    _rpc(home).startProcess(name, False)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if processes(home).get(name, {}).get("statename") not in ("STARTING", "RUNNING"):
            raise ServerError(f"{name} exited while starting; {home / (name + '.log')} ends:\n{_tail(home, name)}")
        try:
            _get(url)
            return
        except (OSError, urllib.error.URLError):
            time.sleep(0.5)
    raise ServerError(f"{name} did not answer on {url} within {timeout:.0f} s; see {home / (name + '.log')}")


def _tail(home: Path, name: str, chars: int = 2000) -> str:
    try:
        return (home / f"{name}.log").read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def require_free_port(port: int, what: str) -> None:
    """Refuse a busy port: otherwise whatever already listens there would pass the health check."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: TIME_WAIT is no obstacle
        try:
            s.bind((HOST, port))
        except OSError as exc:
            raise ServerError(f"port {port} on {HOST} is in use ({exc.strerror}); pick another for the {what}") from exc


def start(home: Path, port: int, workers: int, with_moto: bool = False, moto_port: int = DEFAULT_MOTO_PORT,
          timeout: float = 180) -> dict:
    """Database, bucket, then `mlflow server`; returns what `status` shows. Stops what it started on failure."""
    if processes(home):
        raise ServerError(f"an MLflow server from {home} is already running (stop it first: server.py stop)")
    backend = os.environ.get("MLFLOW_BACKEND_STORE_URI", DEFAULT_BACKEND)
    destination = os.environ.get("MLFLOW_ARTIFACTS_DESTINATION", DEFAULT_DESTINATION)
    env = dict(os.environ, MLFLOW_BACKEND_STORE_URI=backend, MLFLOW_ARTIFACTS_DESTINATION=destination)
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # Server-side jobs (GenAI scorers, trace roll-ups) are not used here and cost seven worker processes.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    # A proxied upload whose S3 is down gives up within seconds (botocore's legacy default takes ~5-15 s), so the
    # client's own retries, which it reports, do the waiting.
    env.setdefault("AWS_RETRY_MODE", "standard")
    env.setdefault("AWS_MAX_ATTEMPTS", "3")
    require_free_port(port, "MLflow server (--port or MLFLOW_SERVER_PORT)")
    url, moto_url = f"http://{HOST}:{port}", f"http://{HOST}:{moto_port}"
    # URIs travel in the environment (mlflow reads both), so a password never shows in `ps`.
    programs = {"server": [_bin("mlflow"), "server", "--host", HOST, "--port", str(port), "--workers", str(workers)]}
    if with_moto:
        require_free_port(moto_port, "moto_server (--moto-port)")
        programs["moto"] = [_bin("moto_server"), "-H", HOST, "-p", str(moto_port)]
        for key, value in MOTO_DEMO_CREDENTIALS.items():
            env.setdefault(key, value)
        env["MLFLOW_S3_ENDPOINT_URL"] = moto_url
    try:
        supervise(home, programs, env)
        if with_moto:
            start_and_wait(home, "moto", f"{moto_url}/moto-api/", 30)
        endpoint = env.get("MLFLOW_S3_ENDPOINT_URL") or None
        created = ensure_database(backend)
        check_bucket(destination, env, create=with_moto)
        start_and_wait(home, "server", f"{url}/health", timeout)
    except BaseException:
        stop(home)
        raise
    info = {"url": url, "backend_store_uri": masked(backend), "database_created": created,
            "artifacts_destination": destination, "s3_endpoint": endpoint or "AWS",
            "moto": moto_url if with_moto else None, "home": str(home)}
    (home / "server.json").write_text(json.dumps(info, indent=2))
    return info


def stop(home: Path) -> list[str]:
    """Stop each program (SIGTERM to its group, SIGKILL after 20 s), then supervisord; return the names stopped."""
    stopped = sorted(name for name, p in processes(home).items() if p["pid"])
    if processes(home):
        _rpc(home).stopAllProcesses(True)  # waits until each has stopped
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until supervisord has exited and freed its socket
            try:
                _rpc(home).shutdown()
            except xmlrpc.client.Fault:  # already shutting down
                pass
            except OSError:
                break
            time.sleep(0.2)
    (home / "server.json").unlink(missing_ok=True)
    return stopped


def status(home: Path) -> dict:
    try:
        info = json.loads((home / "server.json").read_text())
    except (OSError, ValueError):
        info = {}
    running = processes(home)
    info["server_pid"] = running.get("server", {}).get("pid") or None
    info["moto_pid"] = running.get("moto", {}).get("pid") or None
    info["healthy"] = False
    if info.get("url") and info["server_pid"]:
        try:
            info["healthy"] = _get(f"{info['url']}/health").strip() == "OK"
        except (OSError, urllib.error.URLError):
            pass
    return info


def _how_to_use(info: dict) -> str:
    lines = [f"MLflow server (UI and REST API): {info['url']}",
             f"  backend store: {info['backend_store_uri']}",
             f"  artifacts:     {info['artifacts_destination']} at {info['s3_endpoint']}",
             f"  logs:          {info['home']} (supervisorctl -c {info['home']}/supervisord.conf status)",
             f"point the pipeline at it:  export MLFLOW_TRACKING_URI={info['url']}"]
    if info.get("moto"):
        lines.append(f"DVC remote on the same S3: dvc remote modify --local storage endpointurl {info['moto']}"
                     "  (credentials: any AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="server.py", description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=("start", "stop", "status"))
    p.add_argument("--home", type=Path, default=DEFAULT_HOME,
                   help="supervisord's config, socket and logs (default: .state/mlflow-server)")
    p.add_argument("--port", type=int, default=int(os.environ.get("MLFLOW_SERVER_PORT", DEFAULT_PORT)))
    p.add_argument("--workers", type=int, default=2, help="server worker processes")
    p.add_argument("--with-moto", action="store_true", help="also start a local in-memory S3 (moto_server)")
    p.add_argument("--moto-port", type=int, default=DEFAULT_MOTO_PORT)
    p.add_argument("--timeout", type=float, default=180, help="seconds to wait for /health")
    args = p.parse_args(argv)
    home = args.home.resolve()
    try:
        if args.command == "start":
            print(_how_to_use(start(home, args.port, args.workers, args.with_moto, args.moto_port, args.timeout)))
        elif args.command == "stop":
            stopped = stop(home)
            print(f"stopped: {', '.join(stopped)}" if stopped else f"nothing from {home} was running")
        else:
            info = status(home)
            if not info["server_pid"]:
                print(f"not running (home {home})")
                return 1
            print(_how_to_use(info) if info.get("url") else f"server PID {info['server_pid']}")
            print(f"  health: {'OK' if info['healthy'] else 'NOT ANSWERING'}")
            return 0 if info["healthy"] else 1
    except ServerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
