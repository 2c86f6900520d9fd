"""The architecture's import rules, as import-linter contracts (pyproject.toml, `[tool.importlinter]`).

Drivers above stages above helpers, no stage imports another stage, only
`components/tracking/` imports mlflow, only `components/drivers/` imports
Airflow or Kubeflow Pipelines, and the device backends never import export.
grimp reads every import, also those inside functions (not those under
`if TYPE_CHECKING:`, which never run).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(project: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(project))  # the copy under test, not the installed checkout
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=120)


def test_every_contract_holds():
    start = time.perf_counter()
    done = lint_imports(ROOT)
    print(f"lint-imports: {time.perf_counter() - start:.2f} s")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "Contracts: 4 kept, 0 broken." in done.stdout


@pytest.fixture
def project(tmp_path) -> Path:
    """A copy of the package and its contracts, to break on purpose."""
    shutil.copytree(ROOT / "components", tmp_path / "components",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _append(path: Path, code: str) -> None:
    path.write_text(path.read_text() + "\n\n" + code)


@pytest.mark.parametrize(("module", "code", "broken", "line"), [
    ("compress.py", "def later():\n    from components import validate\n", "no stage imports a stage",
     "components.compress -> components.validate"),
    ("reports/night.py", "from components import register\n", "no stage imports a stage",
     "components.reports.night -> components.register"),
    ("stages.py", "import components.drivers.dvc_yaml\n", "no stage imports a stage",
     "components.stages -> components.drivers.dvc_yaml"),
    ("reports/model_card.py", "def later():\n    import mlflow\n", "Only tracking/ imports mlflow",
     "components.reports.model_card -> mlflow"),
    ("devices/pool.py", "from airflow.sdk import dag\n", "Only the drivers import Airflow",
     "components.devices.pool -> airflow"),
    ("devices/worker.py", "from components.devices import export\n", "never the other way",
     "components.devices.worker -> components.devices.export"),
])
def test_each_contract_catches_what_it_forbids(project, module, code, broken, line):
    _append(project / "components" / module, code)
    done = lint_imports(project)
    assert done.returncode == 1, done.stdout
    assert any(broken in row and row.endswith("BROKEN") for row in done.stdout.splitlines()), done.stdout
    assert line in done.stdout


def test_an_import_for_annotations_only_is_no_dependency(project):
    _append(project / "components" / "reports" / "night.py",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from components import register\n")
    assert lint_imports(project).returncode == 0
