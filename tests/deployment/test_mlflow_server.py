"""MLflow server mode end to end: PostgreSQL backend store, S3 artifacts (moto) behind the server, DVC on that S3.

One MLflow server per module, started by `infra/mlflow/server.py` as a user
would, on a fresh PostgreSQL database and a fresh moto S3. The quick pipeline
runs once against it with nothing but `MLFLOW_TRACKING_URI` (no S3 endpoint or
credentials in its environment); everything is then read back through the
server alone. The S3 outage tests use a second server and S3 of their own, so
stopping moto there cannot lose the pipeline's artifacts.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import PROJECT_ROOT, quick_params, subprocess_env
from tests.deployment.conftest import BUCKET, MlflowServer, MotoServer, free_port

# The pipeline (~4 min alone on 2 cores) runs in the first test's setup; a shared CI machine can triple that.
pytestmark = [pytest.mark.deployment, pytest.mark.slow, pytest.mark.services, pytest.mark.timeout(1500)]

DEVICES = ("ort-1t", "cortex-m4")  # one timed runtime, one computed microcontroller
EXPERIMENT = "compress_nightly"
# What a client of the server must not need: S3 is the server's business.
S3_ENV = ("MLFLOW_S3_ENDPOINT_URL", "MLFLOW_ARTIFACTS_DESTINATION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
          "AWS_SESSION_TOKEN", "AWS_PROFILE")


def client_env(folder: Path, tracking_uri: str, **extra: str) -> dict[str, str]:
    env = subprocess_env(folder, MLFLOW_TRACKING_URI=tracking_uri, **extra)
    for key in S3_ENV:
        env.pop(key, None)
    return env


@dataclass
class Served:
    folder: Path
    params: Path
    server: MlflowServer
    moto: MotoServer
    stdout: str


@pytest.fixture(scope="module")
def served(tmp_path_factory, data_root, fresh_postgres_database, moto_s3, mlflow_server) -> Served:
    folder = tmp_path_factory.mktemp("served")
    moto = moto_s3()
    server = mlflow_server(fresh_postgres_database("iot_mlflow"), moto)
    params = quick_params(folder, data_root)
    raw = yaml.safe_load(params.read_text())
    raw["profile"]["devices"] = list(DEVICES)
    # every gate open: what is tested is the registry through the server, not what a 20-step search achieves
    raw["validate"]["gates"].update(max_accuracy_drop=1.0, max_accuracy_drop_upper=1.0, min_agreement=0.0,
                                    latency_budget=100.0, energy_budget=100.0, size_budget=100.0,
                                    max_latency_error=100.0)
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    run = subprocess.run([sys.executable, "-m", "components", "pipeline", "--params", str(params)], cwd=folder,
                         env=client_env(folder, server.url), capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, f"{run.stderr[-3000:]}\n--- server log ---\n{server.log()[-2000:]}"
    return Served(folder, params, server, moto, run.stdout)


# ---- reading back through the server ------------------------------------------------------------


def _walk(list_dir, path: str | None = None) -> list:
    """Every file below `path`, given a lister of one folder (FileInfo paths are relative to the root)."""
    files = []
    for info in list_dir(path):
        files.extend(_walk(list_dir, info.path) if info.is_dir else [info])
    return files


def _check_file(local: Path, relative: str) -> None:
    """Key files parse: JSON, the MLmodel descriptions, ONNX graphs, TFLite flatbuffers, safetensors."""
    name = local.name
    if name.endswith(".json"):
        json.loads(local.read_text())
    elif name == "MLmodel":
        assert yaml.safe_load(local.read_text())["flavors"], relative
    elif name.endswith(".onnx"):
        import onnx

        onnx.checker.check_model(onnx.load(str(local)))
    elif name.endswith(".tflite"):
        assert local.read_bytes()[4:8] == b"TFL3", f"{relative} is not a TFLite flatbuffer"
    elif name.endswith(".safetensors"):
        from safetensors.numpy import load_file

        assert load_file(str(local)), relative


def test_every_run_and_artifact_reads_back_through_the_server_and_lives_in_s3(served, tmp_path):
    import mlflow
    from mlflow import MlflowClient

    url = served.server.url
    client = MlflowClient(tracking_uri=url)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment.artifact_location.startswith("mlflow-artifacts:"), experiment.artifact_location
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    names = {r.info.run_name for r in runs}
    stages = {"ingest", "train", "pipeline"} | {f"{s}/{d}" for s in ("profile", "fit_latency", "compress",
                                                                        "validate", "register") for d in DEVICES}
    assert stages <= names, f"missing runs: {stages - names}"
    assert all(r.info.status == "FINISHED" for r in runs), {r.info.run_name: r.info.status for r in runs}

    s3 = served.moto.objects(BUCKET, "mlflow/")
    prefix = f"{BUCKET}/mlflow/"  # s3://iot-compress/mlflow/<experiment>/<run>/artifacts/<path>
    checked: dict[str, int] = {}
    for run in runs:
        files = _walk(lambda p, r=run: client.list_artifacts(r.info.run_id, p))
        (tmp_path / run.info.run_id).mkdir()
        for info in files:
            local = Path(client.download_artifacts(run.info.run_id, info.path, str(tmp_path / run.info.run_id)))
            assert local.stat().st_size == (info.file_size or 0), info.path  # the REST answer omits a 0 size
            _check_file(local, info.path)
            key = f"{experiment.experiment_id}/{run.info.run_id}/artifacts/{info.path}"
            assert s3.get(f"mlflow/{key}") == (info.file_size or 0), f"s3://{prefix}{key} missing or of another size"
            checked[f"{run.info.run_name}:{info.path}"] = info.file_size or 0
    for device in DEVICES:
        assert f"validate/{device}:validate/{device}/report.json" in checked
    assert "ingest:ingest/data_card.json" in checked

    # MLflow 3 keeps logged models (train's torch model, register's pyfunc models) beside the runs
    models = client.search_logged_models(experiment_ids=[experiment.experiment_id])
    assert len(models) >= 1 + len(DEVICES), [m.name for m in models]
    for model in models:
        files = _walk(lambda p, m=model: client.list_logged_model_artifacts(m.model_id, p))
        assert any(f.path == "MLmodel" for f in files), model.model_id
        (tmp_path / model.model_id).mkdir()
        for info in files:
            local = Path(mlflow.artifacts.download_artifacts(
                artifact_uri=f"{model.artifact_location}/{info.path}", tracking_uri=url,
                dst_path=str(tmp_path / model.model_id)))
            assert local.stat().st_size == (info.file_size or 0), info.path  # the REST answer omits a 0 size
            _check_file(local, info.path)
            key = f"mlflow/{model.artifact_location.removeprefix('mlflow-artifacts:/')}/{info.path}"
            assert s3.get(key) == (info.file_size or 0), f"s3://{BUCKET}/{key} missing"
            checked[f"{model.model_id}:{info.path}"] = info.file_size or 0
    assert len(checked) >= 40, sorted(checked)

    # nothing went to a local store: no mlruns/mlartifacts beside the client or the server, no SQLite
    for folder in (served.folder, served.server.home):
        assert not list(folder.rglob("mlruns")) and not list(folder.rglob("mlartifacts")), folder
    assert not (served.folder / ".state" / "mlflow").exists()


def test_registered_models_have_aliases_and_load_by_alias_through_the_server(served, tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=served.server.url)
    names = []
    for device in DEVICES:
        registry = json.loads((served.folder / "reports" / "register" / device / "registry.json").read_text())
        assert registry["registered"], registry
        model = client.get_registered_model(registry["name"])
        assert {"candidate", "champion"} <= set(model.aliases), model.aliases
        assert str(model.aliases["champion"]) == registry["version"]
        names.append(registry["name"])
    script = (
        "import json, sys, numpy as np, mlflow\n"
        "x = np.load(sys.argv[1], mmap_mode='r')[:4]\n"
        "out = {}\n"
        "for name in sys.argv[2:]:\n"
        "    y = mlflow.pyfunc.load_model(f'models:/{name}@champion').predict(np.ascontiguousarray(x))\n"
        "    out[name] = [list(y.shape), bool(np.isfinite(y).all())]\n"
        "print(json.dumps(out))\n"
    )
    windows = served.folder / "data" / "ingest" / "x.npy"
    out = subprocess.run([sys.executable, "-c", script, str(windows), *names], cwd=tmp_path, capture_output=True,
                         text=True, env=client_env(tmp_path, served.server.url), timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    predictions = json.loads(out.stdout.strip().splitlines()[-1])
    for name in names:
        shape, finite = predictions[name]
        assert shape[0] == 4 and shape[1] >= 2 and finite, (name, shape)


# ---- DVC remote on the same S3 -------------------------------------------------------------------


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"{' '.join(cmd)}:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    return out.stdout


def test_dvc_pushes_a_pipeline_output_to_the_s3_remote_and_a_fresh_clone_pulls_it(served, tmp_path):
    env = subprocess_env(tmp_path, DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="test", GIT_AUTHOR_EMAIL="test@example.com",
                         GIT_COMMITTER_NAME="test", GIT_COMMITTER_EMAIL="test@example.com",
                         **{k: v for k, v in served.moto.env().items() if k.startswith("AWS_")})
    dvc = shutil.which("dvc", path=env["PATH"])
    repo, clone = tmp_path / "repo", tmp_path / "clone"
    repo.mkdir()
    _run(["git", "init", "-q"], repo, env)
    _run([dvc, "init", "-q"], repo, env)
    shutil.copy(PROJECT_ROOT / ".dvc" / "config", repo / ".dvc" / "config")  # the project's remote, as committed
    remotes = _run([dvc, "remote", "list"], repo, env)
    assert re.search(r"^storage\s+s3://iot-compress/dvc", remotes, re.M), remotes
    shutil.copytree(served.folder / "data" / "train" / "model", repo / "model")  # a real stage output
    _run([dvc, "add", "-q", "model"], repo, env)
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "commit", "-q", "-m", "model"], repo, env)
    # the endpoint is machine-local configuration: .dvc/config.local, which git ignores
    _run([dvc, "remote", "modify", "--local", "storage", "endpointurl", served.moto.url], repo, env)
    assert served.moto.url not in (repo / ".dvc" / "config").read_text()
    _run([dvc, "push", "-q"], repo, env)
    pushed = served.moto.objects(BUCKET, "dvc/")
    assert pushed and all(size > 0 for size in pushed.values()), pushed

    _run(["git", "clone", "-q", str(repo), str(clone)], tmp_path, env)
    assert not (clone / "model").exists()
    _run([dvc, "remote", "modify", "--local", "storage", "endpointurl", served.moto.url], clone, env)
    _run([dvc, "pull", "-q"], clone, env)
    for original in (repo / "model").iterdir():
        assert (clone / "model" / original.name).read_bytes() == original.read_bytes(), original.name


# ---- S3 unreachable ------------------------------------------------------------------------------


@dataclass
class Outage:
    folder: Path
    params: Path
    server: MlflowServer
    moto: MotoServer

    def probe(self, *args: str, **env: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "tests.deployment.tracking_probe", str(self.params), *args],
                                cwd=PROJECT_ROOT, env=client_env(self.folder, self.server.url, **env),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def s3_up(self) -> None:
        if self.moto.proc is None or self.moto.proc.poll() is not None:
            self.moto.start()
        if BUCKET not in {b["Name"] for b in self.moto.s3().list_buckets()["Buckets"]}:
            self.moto.create_bucket()


def result(proc: subprocess.Popen, timeout: float = 180) -> dict:
    stdout, stderr = proc.communicate(timeout=timeout)
    assert proc.returncode == 0 and stdout.strip(), stderr[-3000:]
    return json.loads(stdout.strip().splitlines()[-1])


def put_statuses(server: MlflowServer, artifact_name: str) -> list[int]:
    """The HTTP status of every proxied upload of `artifact_name`, from the server's access log."""
    return [int(s) for s in re.findall(rf'"PUT [^"]*/{re.escape(artifact_name)} HTTP/1.1" (\d+)', server.log())]


@pytest.fixture(scope="module")
def outage(tmp_path_factory, data_root, fresh_postgres_database, moto_s3, mlflow_server) -> Outage:
    folder = tmp_path_factory.mktemp("outage")
    moto = moto_s3()
    server = mlflow_server(fresh_postgres_database("iot_mlflow_outage"), moto)
    return Outage(folder, quick_params(folder, data_root), server, moto)


def test_s3_down_retries_with_backoff_then_fails_with_one_clear_error(outage, tmp_path):
    outage.s3_up()
    outage.moto.stop()
    payload = tmp_path / "during.txt"
    payload.write_text("logged while S3 is down\n")
    failed = result(outage.probe("upload", str(payload)))  # the project's retry defaults
    assert not failed["ok"] and failed["type"] == "TrackingUnavailable", failed
    error = failed["error"]
    assert error.startswith(f"could not log artifact {failed['artifact_uri']} via {outage.server.url} after 5 "
                            "attempts over "), error
    assert "the tracking server answers /health, so the artifact store behind it failed" in error
    assert "MLFLOW_S3_ENDPOINT_URL" in error and "MLFLOW_HTTP_REQUEST_MAX_RETRIES=4" in error
    assert 28 <= failed["elapsed_s"] <= 90, failed  # backoff 0 + 4 + 8 + 16 s, each attempt's own time on top
    statuses = put_statuses(outage.server, payload.name)
    assert statuses.count(500) >= 3 and 200 not in statuses, statuses  # one retry may meet a closed keep-alive


def test_s3_back_within_the_retry_window_lets_the_upload_through(outage, tmp_path):
    outage.s3_up()
    outage.moto.stop()
    payload = tmp_path / "outage-then-back.txt"
    payload.write_text("S3 comes back while the client retries\n")
    probe = outage.probe("upload", str(payload))
    deadline = time.monotonic() + 60
    while 500 not in put_statuses(outage.server, payload.name):  # the first attempt has failed
        assert time.monotonic() < deadline and probe.poll() is None, "no failed upload seen in the server log"
        time.sleep(0.2)
    outage.s3_up()  # same port; moto starts empty, so the bucket is made again
    uploaded = result(probe)
    assert uploaded["ok"], uploaded
    statuses = put_statuses(outage.server, payload.name)
    assert statuses[0] == 500 and statuses[-1] == 200, statuses
    key = f"mlflow/{uploaded['artifact_uri'].removeprefix('mlflow-artifacts:/')}"
    assert outage.moto.objects(BUCKET, key) == {key: payload.stat().st_size}

    # S3 down again: downloading what was just logged fails the same way; the retry count is the environment's
    outage.moto.stop()
    lost = result(outage.probe("download", uploaded["artifact_uri"], str(tmp_path / "download"),
                               MLFLOW_HTTP_REQUEST_MAX_RETRIES="1"))
    assert not lost["ok"] and lost["type"] == "TrackingUnavailable", lost
    assert f"could not download {uploaded['artifact_uri']} via {outage.server.url} after 2 attempts" in lost["error"]
    assert "the artifact store behind it failed" in lost["error"] and lost["elapsed_s"] < 30, lost


def test_tracking_server_down_fails_clearly_and_the_retries_follow_the_environment(data_root, tmp_path):
    params = quick_params(tmp_path, data_root)
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    env = client_env(tmp_path, url, MLFLOW_HTTP_REQUEST_MAX_RETRIES="1", MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1")
    payload = tmp_path / "p.txt"
    payload.write_text("x")
    out = subprocess.run([sys.executable, "-m", "tests.deployment.tracking_probe", str(params), "upload",
                          str(payload)], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120)
    failed = json.loads(out.stdout.strip().splitlines()[-1])
    assert not failed["ok"] and failed["type"] == "TrackingUnavailable", failed
    assert failed["error"].startswith(f"could not start the MLflow run s3_outage via {url} after 2 attempts"), failed
    assert "(connection refused)" in failed["error"] and "does not answer /health" in failed["error"]
    assert failed["elapsed_s"] < 20, failed
