"""The end-to-end tier: one quick pipeline run, shared by every check that reads a finished pipeline.

`python -m components pipeline` runs once per session in a scratch project
(the checkout's `components/`, `dvc.yaml` and a two-device pool: one timed
runtime, the analytic microcontroller), with gates opened wide so both
devices get a registered version. The project is then made a DVC project
whose `dvc.lock` records that run (`dvc commit`), so the DVC checks ask
`dvc status` / `dvc repro --dry` what an edit would re-run instead of
re-running the pipeline.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import (
    PROJECT_ROOT,
    components_cli,
    quick_params,
    seed_store,
    subprocess_env,
)

DEVICES = ["ort-1t", "cortex-m4"]  # one timed device, one computed
# The quick pipeline compresses next to nothing, so the real gates refuse its models and the registry would stay
# empty; these pass anything that runs, so both devices get a registered version to look at.
LOOSE_GATES = {"max_accuracy_drop": 1.0, "max_accuracy_drop_upper": 1.0, "min_agreement": 0.0, "latency_budget": 100.0,
               "energy_budget": 100.0, "size_budget": 100.0, "max_latency_error": 100.0}


@dataclass(frozen=True)
class PipelineRun:
    folder: Path  # the scratch project: params.yaml, dvc.yaml, components/, data/, reports/, .state/
    params_path: Path
    stdout: str

    def dvc(self, *args: str, folder: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
        where = folder or self.folder
        env = subprocess_env(where, DVC_NO_ANALYTICS="1")
        return subprocess.run([shutil.which("dvc", path=env["PATH"]), *args], cwd=where, capture_output=True,
                              text=True, env=env, timeout=timeout)


def scratch_project(folder: Path, data_root: Path) -> Path:
    """A project folder as a user's checkout would be: the code, dvc.yaml, a two-device pool, quick params."""
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(PROJECT_ROOT / name, folder / name)
    shutil.copytree(PROJECT_ROOT / "components", folder / "components", ignore=shutil.ignore_patterns("__pycache__"))
    pool = yaml.safe_load((PROJECT_ROOT / "infra" / "devices.yaml").read_text())
    pool["devices"] = {name: pool["devices"][name] for name in DEVICES}  # DVC makes a stage per entry
    (folder / "infra").mkdir()
    (folder / "infra" / "devices.yaml").write_text(yaml.safe_dump(pool))
    params = quick_params(folder, data_root)
    raw = yaml.safe_load(params.read_text())
    raw["profile"]["devices_file"] = "infra/devices.yaml"
    raw["validate"]["gates"].update(LOOSE_GATES)
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    return params


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory, data_root: Path, migrated_store: Path) -> PipelineRun:
    folder = tmp_path_factory.mktemp("project")
    params = scratch_project(folder, data_root)
    seed_store(migrated_store, folder / ".state")
    out = components_cli(folder, "pipeline", "--params", str(params), timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    run = PipelineRun(folder, params, out.stdout)
    (folder / ".gitignore").write_text(".state/\nairflow/\n")
    git(folder, "init", "-q")
    for args in (("init", "-q"), ("commit", "-f", "-q")):  # dvc.lock records the run: every stage up to date
        done = run.dvc(*args)
        assert done.returncode == 0, done.stdout + done.stderr
    git(folder, "add", "-A")  # the reviewer's baseline: code, params, dvc.lock and the metrics, committed
    git(folder, "-c", "user.name=t", "-c", "user.email=t@t.invalid", "commit", "-q", "-m", "baseline")
    return run


def git(folder: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=folder, check=True, env=subprocess_env(folder), timeout=120,
                   capture_output=True)


def night_runs(params_path: Path, key: str | None = None) -> tuple[str, dict[str, str]]:
    """(its pipeline key, {run name: status}) of one night in a project's MLflow store: `key`, else the only one."""
    from components.config import load_params
    from components.tracking import runs as tracking
    from components.tracking import server

    params = load_params(params_path)
    client = server.configured_mlflow(params).MlflowClient()
    experiment = client.get_experiment_by_name(params.pipeline.experiment)
    if key is None:
        parents = client.search_runs([experiment.experiment_id], f"tags.{tracking.PARENT_TAG} LIKE '%'")
        assert len(parents) == 1, [p.data.tags[tracking.PARENT_TAG] for p in parents]
        key = parents[0].data.tags[tracking.PARENT_TAG]
    runs = client.search_runs([experiment.experiment_id], f"tags.{tracking.PIPELINE_KEY_TAG} = '{key}'")
    return key, {r.info.run_name: r.info.status for r in runs}


def expected_runs(devices: list[str], registered: list[str]) -> set[str]:
    """The MLflow runs of a night: the parent, every stage (per device where it runs per device); register opens
    a run only for a device whose model it registers."""
    from components.stages import STAGES

    names = {"pipeline"}
    for stage in STAGES:
        for device in devices if stage.per_device else [None]:
            if stage.name != "register" or device in registered:
                names.add(f"{stage.name}/{device}" if device else stage.name)
    return names
