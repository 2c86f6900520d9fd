"""`python -m components` and `dvc repro` as a user runs them, in a scratch project folder."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import yaml

from tests.conftest import PROJECT_ROOT, subprocess_env


def components_cli(tmp_path, *args, timeout: int = 300, **env):
    return subprocess.run([sys.executable, "-m", "components", *args], cwd=tmp_path, capture_output=True, text=True,
                          env=subprocess_env(tmp_path, **env), timeout=timeout)


def test_cli_bad_param_is_one_clear_line_not_a_traceback(tmp_path, params_file):
    params = params_file()
    out = components_cli(tmp_path, "ingest", "--params", str(params), "-p", "ingest.hhar_raw.intervals=x")
    assert out.returncode == 2
    assert out.stderr.strip() == "error: ingest.hhar_raw.intervals: expected int, got str 'x'"


def test_cli_data_error_names_the_file(tmp_path, params_file):
    params = params_file()
    out = components_cli(tmp_path, "ingest", "--params", str(params), "-p", f"ingest.data_root={tmp_path}")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "error: " in out.stderr and "no HHAR_SA window files" in out.stderr


def test_cli_pipeline_runs_every_stage_under_one_parent_run(tmp_path, params_file):
    params = params_file()
    raw = yaml.safe_load(params.read_text())
    raw["profile"]["devices"] = ["ort-1t", "cortex-m4"]  # a timed and a computed device (tflite: unit tests)
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    out = components_cli(tmp_path, "pipeline", "--params", str(params), timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "ingest: 2426 windows" in out.stdout and "train: accuracy" in out.stdout and "pipeline local-" in out.stdout
    assert (tmp_path / "data" / "ingest" / "x.npy").exists()
    assert (tmp_path / "data" / "train" / "model" / "model.safetensors").exists()
    for device in ("ort-1t", "cortex-m4"):
        assert f"fit_latency {device}: " in out.stdout
        assert (tmp_path / "data" / "fit_latency" / device / "latency_model.json").exists()
        assert f"compress {device}: " in out.stdout
        assert (tmp_path / "data" / "compress" / device / "model" / "model.json").exists()
        assert f"validate {device}: " in out.stdout and f"register {device}: " in out.stdout
        assert (tmp_path / "reports" / "validate" / device / "report.html").exists()
        assert (tmp_path / "reports" / "validate" / device / "registry.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("dataset, users, sensors, stages", [
    ("uci_hapt", 24, 2, ("ingest", "train", "compress")),
    # compress reads windows whatever set they came from: uci_har has uci_hapt's input shape, wisdm hhar_sa's
    ("uci_har", 24, 2, ("ingest", "train")),
    ("wisdm", 30, 1, ("ingest", "train")),
])
def test_each_data_set_ingests_trains_and_compresses_with_one_param_change(tmp_path, params_file, dataset, users,
                                                                           sensors, stages):
    params = params_file(train={"epochs": 1, "patience": 1, "classical": {"n_estimators": 10, "max_depth": None}})
    change = ("-p", f"ingest.dataset={dataset}")
    for stage in stages:
        device = ("--device", "cortex-m4") if stage == "compress" else ()
        out = components_cli(tmp_path, stage, *device, "--params", str(params), *change, timeout=900)
        assert out.returncode == 0, out.stderr[-3000:]
    card = json.loads((tmp_path / "data" / "ingest" / "data_card.json").read_text())
    assert card["dataset"] == dataset and len(card["counts"]["user"]) == users and len(card["sensors"]) == sensors
    report = json.loads((tmp_path / "data" / "train" / "metrics.json").read_text())
    assert report["input_shape"] == [8, sensors, 3, 2, 16]
    assert report["test"]["users"]["accuracy"]["users"] == len(card["split"]["test_users"]) >= 5
    if "compress" in stages:
        compressed = json.loads((tmp_path / "reports" / "compress" / "cortex-m4" / "metrics.json").read_text())
        assert compressed["accuracy_change_ci"]["users"] >= 5


def test_cli_fit_latency_without_a_profile_says_which_command_to_run(tmp_path, params_file):
    out = components_cli(tmp_path, "fit_latency", "--params", str(params_file()), "--device", "ort-2t")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "no profile table" in out.stderr and "python -m components profile --device ort-2t" in out.stderr


@pytest.mark.slow
@pytest.mark.timeout(1500)  # four repros of the quick pipeline: ~8 min on a quiet machine, twice that when shared
def test_dvc_repro_runs_the_stages_then_reruns_only_what_changed(tmp_path, params_file):
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(PROJECT_ROOT / name, tmp_path / name)
    shutil.copytree(PROJECT_ROOT / "components", tmp_path / "components",
                    ignore=shutil.ignore_patterns("__pycache__"))
    # a two-device pool: one timed runtime and the analytic one (DVC makes a stage per entry)
    pool = yaml.safe_load((PROJECT_ROOT / "infra" / "devices.yaml").read_text())
    pool["devices"] = {name: pool["devices"][name] for name in ("ort-1t", "cortex-m4")}
    (tmp_path / "infra").mkdir()
    (tmp_path / "infra" / "devices.yaml").write_text(yaml.safe_dump(pool))
    raw = yaml.safe_load(params_file().read_text())
    raw["profile"]["devices_file"] = "infra/devices.yaml"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    env = subprocess_env(tmp_path, DVC_NO_ANALYTICS="1")
    dvc = shutil.which("dvc", path=env["PATH"])

    def repro() -> str:
        out = subprocess.run([dvc, "repro"], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=900)
        assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
        return out.stdout

    for cmd in (["git", "init", "-q"], [dvc, "init", "-q"]):
        subprocess.run(cmd, cwd=tmp_path, check=True, env=env, timeout=120)
    first = repro()
    assert "Running stage 'ingest'" in first and "Running stage 'train'" in first
    assert "Running stage 'profile@ort-1t'" in first and "Running stage 'profile@cortex-m4'" in first
    assert "Running stage 'fit_latency@ort-1t'" in first and "Running stage 'fit_latency@cortex-m4'" in first
    assert "Running stage 'compress@ort-1t'" in first and "Running stage 'compress@cortex-m4'" in first
    assert "Running stage 'validate@ort-1t'" in first and "Running stage 'register@cortex-m4'" in first
    assert (tmp_path / "reports" / "validate" / "cortex-m4" / "registry.json").exists()
    assert (tmp_path / "data" / "fit_latency" / "ort-1t" / "latency_model.json").exists()
    assert (tmp_path / "data" / "profile" / "ort-1t" / "profile.parquet").exists()
    assert (tmp_path / "data" / "ingest" / "windows.parquet").exists()
    assert (tmp_path / "reports" / "train" / "metrics.json").exists()
    second = repro()
    assert "Stage 'ingest' didn't change, skipping" in second and "Running stage" not in second
    # the reviewer's baseline: the results committed with dvc.lock
    subprocess.run(["git", "add", "-A"], cwd=tmp_path, check=True, env=env, timeout=120)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t.invalid", "commit", "-q", "-m", "baseline"],
                   cwd=tmp_path, check=True, env=env, timeout=120)
    # a train.* param change retrains without re-ingesting
    (tmp_path / "params.yaml").write_text((tmp_path / "params.yaml").read_text().replace("epochs: 3", "epochs: 2"))
    third = repro()
    assert "Running stage 'train'" in third and "Running stage 'ingest'" not in third
    assert "Running stage 'fit_latency" not in third

    def dvc_json(*args: str) -> dict:
        out = subprocess.run([dvc, *args, "--json"], cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        return json.loads(out.stdout)

    # what the README's walkthrough shows a reviewer: the param change and its effect on the results
    params_diff = dvc_json("params", "diff")
    assert params_diff["params.yaml"]["train.epochs"] == {"old": 3, "new": 2, "diff": -1}
    metrics_diff = dvc_json("metrics", "diff")
    changed = {key for file, rows in metrics_diff.items() if "train" in file for key in rows}
    assert any("accuracy" in key for key in changed), metrics_diff
    plots = subprocess.run([dvc, "plots", "diff", "HEAD", "-o", str(tmp_path / "plots")], cwd=tmp_path,
                           capture_output=True, text=True, env=env, timeout=300)
    assert plots.returncode == 0 and (tmp_path / "plots" / "index.html").exists(), plots.stderr[-2000:]
    # a fit_latency.* change refits every device without profiling again
    (tmp_path / "params.yaml").write_text((tmp_path / "params.yaml").read_text().replace("min_gain: 0.02",
                                                                                        "min_gain: 0.03"))
    fourth = repro()
    assert "Running stage 'fit_latency@ort-1t'" in fourth and "Running stage 'profile" not in fourth


def test_cli_compress_before_ingest_says_what_to_run(tmp_path, params_file):
    out = components_cli(tmp_path, "compress", "--params", str(params_file()), "--device", "ort-1t")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "run the ingest stage first" in out.stderr
