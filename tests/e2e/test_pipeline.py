"""The shared pipeline run as a user meets it: the command's lines, its folders, the registry, and DVC's view.

DVC is asked what an edit would re-run (`dvc status`, `dvc repro --dry`) on a
copy of the project, instead of re-running the pipeline four times.
"""

from __future__ import annotations

import json
import shutil

import pytest

from tests.conftest import components_cli
from tests.e2e.conftest import DEVICES, PipelineRun


def test_the_pipeline_command_runs_every_stage_for_every_device(pipeline_run: PipelineRun):
    out, folder = pipeline_run.stdout, pipeline_run.folder
    assert "ingest: 2426 windows" in out and "train: accuracy" in out and "pipeline local-" in out
    assert (folder / "data" / "ingest" / "x.npy").exists()
    assert (folder / "data" / "train" / "model" / "model.safetensors").exists()
    for device in DEVICES:
        for stage in ("profile", "fit_latency", "compress", "validate", "register"):
            assert f"{stage} {device}: " in out
        assert (folder / "data" / "fit_latency" / device / "latency_model.json").exists()
        assert (folder / "data" / "compress" / device / "model" / "model.json").exists()
        assert (folder / "data" / "validate" / device / "report.json").exists()  # what register read
        assert (folder / "reports" / "validate" / device / "report.html").exists()


def test_every_device_got_a_registered_champion(pipeline_run: PipelineRun):
    from components.config import load_params
    from components.tracking.server import configured_mlflow

    client = configured_mlflow(load_params(pipeline_run.params_path)).MlflowClient()
    for device in DEVICES:
        outcome = json.loads((pipeline_run.folder / "reports" / "register" / device / "registry.json").read_text())
        assert outcome["registered"], outcome
        champion = client.get_model_version_by_alias(outcome["name"], "champion")
        assert str(champion.version) == outcome["version"] and champion.tags["device"] == device


def test_the_night_ends_with_its_summary_on_the_parent_run_and_report_prints_it(pipeline_run: PipelineRun):
    """The pipeline prints the per-device table, keeps reports/summary/, and `report` prints the same table."""
    summary = json.loads((pipeline_run.folder / "reports" / "summary" / "summary.json").read_text())
    assert sorted(d["device"] for d in summary["devices"]) == sorted(DEVICES) and summary["passed"]
    assert 0 < summary["metrics"]["devices_passed"] == len(DEVICES)
    table = pipeline_run.stdout[pipeline_run.stdout.index("Night local-"):].split("pipeline local-")[0]
    report = components_cli(pipeline_run.folder, "report", "--params", str(pipeline_run.params_path), timeout=300)
    assert report.returncode == 0, report.stdout + report.stderr[-2000:]
    assert report.stdout.startswith(table) and report.stdout.rstrip().endswith(summary["run_id"])
    for device in DEVICES:
        assert any(line.split()[:2] == [device, "PASSED"] for line in table.splitlines())


@pytest.fixture
def dvc_project(pipeline_run: PipelineRun, tmp_path):
    """A copy of the shared project (git, DVC and all), so a check may edit it."""
    folder = tmp_path / "project"
    shutil.copytree(pipeline_run.folder, folder, symlinks=True)
    return folder


def _stale(pipeline_run: PipelineRun, folder) -> set[str]:
    out = pipeline_run.dvc("status", "--json", folder=folder)
    assert out.returncode == 0, out.stderr[-2000:]
    return set(json.loads(out.stdout or "{}"))


def test_dvc_sees_the_run_up_to_date_and_an_edit_of_training_code_re_runs_compress(pipeline_run, dvc_project):
    assert _stale(pipeline_run, dvc_project) == set()
    training = dvc_project / "components" / "models" / "training.py"
    training.write_text(training.read_text() + "\n# an edit of the augmentation compress also runs\n")
    stale = _stale(pipeline_run, dvc_project)
    assert {"train", *(f"compress@{d}" for d in DEVICES)} <= stale
    assert not {"ingest", *(f"profile@{d}" for d in DEVICES), *(f"fit_latency@{d}" for d in DEVICES)} & stale


def test_a_train_param_change_re_runs_train_and_what_reads_it_and_dvc_shows_its_effect(pipeline_run, dvc_project):
    params = dvc_project / "params.yaml"
    params.write_text(params.read_text().replace("epochs: 3", "epochs: 2"))
    dry = pipeline_run.dvc("repro", "--dry", folder=dvc_project)
    assert dry.returncode == 0, dry.stderr[-2000:]
    ran = dry.stdout  # the stages whose own deps changed (compress follows once train's output does)
    assert "Running stage 'train'" in ran and "Running stage 'validate@ort-1t'" in ran
    assert "Running stage 'ingest'" not in ran and "Running stage 'profile" not in ran
    assert "Running stage 'fit_latency" not in ran
    diff = json.loads(pipeline_run.dvc("params", "diff", "--json", folder=dvc_project).stdout)
    assert diff["params.yaml"]["train.epochs"] == {"old": 3, "new": 2, "diff": -1}
    # what the README's walkthrough shows a reviewer: re-run train alone, then its metrics and plots against HEAD
    one = pipeline_run.dvc("repro", "--single-item", "train", folder=dvc_project, timeout=900)
    assert one.returncode == 0, (one.stdout + one.stderr)[-3000:]
    metrics = json.loads(pipeline_run.dvc("metrics", "diff", "--json", folder=dvc_project).stdout)
    changed = {key for file, rows in metrics.items() if "train" in file for key in rows}
    assert any("accuracy" in key for key in changed), metrics
    plots = pipeline_run.dvc("plots", "diff", "HEAD", "-o", str(dvc_project / "plots"), folder=dvc_project)
    assert plots.returncode == 0 and (dvc_project / "plots" / "index.html").exists(), plots.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("dataset, users, shape, stages", [
    ("uci_hapt", 24, [8, 2, 3, 2, 16], ("ingest", "train", "compress")),
    # compress reads windows whatever set they came from: uci_har has uci_hapt's input shape
    ("uci_har", 24, [8, 2, 3, 2, 16], ("ingest", "train")),
    ("wisdm", 30, [4, 1, 3, 2, 32], ("ingest", "train")),  # 4 intervals of 32 points at 20 Hz
])
def test_each_data_set_ingests_trains_and_compresses_with_one_param_change(tmp_path, params_file, dataset, users,
                                                                           shape, stages):
    params = params_file(train={"epochs": 1, "patience": 1, "classical": {"n_estimators": 10, "max_depth": None}})
    change = ("-p", f"ingest.dataset={dataset}")
    for stage in stages:
        device = ("--device", "cortex-m4") if stage == "compress" else ()
        out = components_cli(tmp_path, stage, *device, "--params", str(params), *change, timeout=900)
        assert out.returncode == 0, out.stderr[-3000:]
    card = json.loads((tmp_path / "data" / "ingest" / "data_card.json").read_text())
    assert card["dataset"] == dataset and len(card["counts"]["user"]) == users and len(card["sensors"]) == shape[1]
    report = json.loads((tmp_path / "data" / "train" / "metrics.json").read_text())
    assert report["input_shape"] == shape
    assert report["test"]["users"]["accuracy"]["users"] == len(card["split"]["test_users"]) >= 5
    if "compress" in stages:
        compressed = json.loads((tmp_path / "reports" / "compress" / "cortex-m4" / "metrics.json").read_text())
        assert compressed["accuracy_change_ci"]["users"] >= 5
