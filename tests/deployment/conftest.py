"""Loopback services for deployment tests: fresh PostgreSQL databases, a moto S3 server, the MLflow server.

Every process a fixture starts runs in its own session and is stopped by its
own PID's process group, never by name. Databases get unique names and are
dropped (connections and all) at the end of the module that made them.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.conftest import PROJECT_ROOT

PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
BUCKET = "iot-compress"
# moto accepts any key pair; these never reach a real S3.
S3_TEST_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "moto-test", "AWS_SECRET_ACCESS_KEY": "moto-test",
                       "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_admin():
    import psycopg2

    conn = psycopg2.connect(dbname="postgres", connect_timeout=10, **PG)
    conn.autocommit = True
    return conn


@pytest.fixture(scope="module")
def fresh_postgres_database():
    """A factory: `fresh_postgres_database("prefix")` -> a SQLAlchemy URI of a new, empty database."""
    from psycopg2 import sql

    made: list[str] = []

    def make(prefix: str = "iot_test") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        conn = _pg_admin()  # not `with conn`: that opens a transaction, and CREATE DATABASE refuses one
        try:
            with conn.cursor() as cur:
                cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        finally:
            conn.close()
        made.append(name)
        return f"postgresql+psycopg2://{PG['user']}@{PG['host']}:{PG['port']}/{name}"

    yield make
    conn = _pg_admin()
    try:
        with conn.cursor() as cur:
            for name in made:
                cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
    finally:
        conn.close()


class MotoServer:
    """moto_server on a fixed loopback port; stop() and start() again keep the port (and lose the data)."""

    def __init__(self, home: Path, port: int | None = None):
        self.home, self.port = home, port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.home / "moto.log", "ab") as log:
            self.proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1",
                                          "-p", str(self.port)], stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.home, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/moto-api/", timeout=2).close()
                return
            except OSError:
                assert self.proc.poll() is None, f"moto_server exited: {(self.home / 'moto.log').read_text()[-1500:]}"
                assert time.monotonic() < deadline, f"moto_server did not answer within {timeout:.0f} s"
                time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=15)

    def s3(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.url, region_name=S3_TEST_CREDENTIALS["AWS_DEFAULT_REGION"],
                            aws_access_key_id=S3_TEST_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=S3_TEST_CREDENTIALS["AWS_SECRET_ACCESS_KEY"])

    def create_bucket(self, bucket: str = BUCKET) -> None:
        self.s3().create_bucket(Bucket=bucket)

    def objects(self, bucket: str = BUCKET, prefix: str = "") -> dict[str, int]:
        """Key -> size of every object under `prefix`."""
        found = {}
        for page in self.s3().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            found.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
        return found

    def env(self) -> dict[str, str]:
        """What a process reaching this S3 needs (the MLflow server, DVC); clients of MLflow need none of it."""
        return {"MLFLOW_S3_ENDPOINT_URL": self.url, **S3_TEST_CREDENTIALS}


@pytest.fixture(scope="module")
def moto_s3(tmp_path_factory):
    """A factory: `moto_s3()` -> a started MotoServer with the bucket `iot-compress`; stopped with the module."""
    started: list[MotoServer] = []

    def make(bucket: str = BUCKET) -> MotoServer:
        server = MotoServer(tmp_path_factory.mktemp("moto"))
        started.append(server)
        server.start()
        server.create_bucket(bucket)
        return server

    yield make
    for server in started:
        server.stop()


class MlflowServer:
    """`infra/mlflow/server.py` run as a user runs it; `home` holds its supervisord config and the logs."""

    SCRIPT = PROJECT_ROOT / "infra" / "mlflow" / "server.py"

    def __init__(self, home: Path, backend_uri: str, destination: str, s3_env: dict[str, str]):
        self.home, self.port = home, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.destination = destination
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self.env.update(s3_env, MLFLOW_BACKEND_STORE_URI=backend_uri, MLFLOW_ARTIFACTS_DESTINATION=destination)

    def cli(self, command: str, timeout: float = 240) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(self.SCRIPT), command, "--home", str(self.home),
                               "--port", str(self.port)], env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def start(self) -> str:
        out = self.cli("start")
        assert out.returncode == 0, f"server.py start failed:\n{out.stdout}\n{out.stderr}\n{self.log()[-3000:]}"
        return out.stdout

    def stop(self) -> None:
        self.cli("stop", timeout=60)

    def log(self) -> str:
        try:
            return (self.home / "server.log").read_text(errors="replace")
        except OSError:
            return ""


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A factory: `mlflow_server(backend_uri, moto)` -> a started MlflowServer on artifacts s3://iot-compress/mlflow."""
    started: list[MlflowServer] = []

    def make(backend_uri: str, moto: MotoServer, destination: str = f"s3://{BUCKET}/mlflow") -> MlflowServer:
        server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"), backend_uri, destination, moto.env())
        started.append(server)
        server.start()
        return server

    yield make
    for server in started:
        server.stop()
