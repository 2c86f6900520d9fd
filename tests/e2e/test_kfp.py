"""The Kubeflow pipeline executed here, end to end, with KFP's local SubprocessRunner (`infra/kfp/pipeline.py --local`).

Its settings, devices and data are those of the tier's shared embedded run (tests/e2e/conftest.py), so what it
makes is compared with what `python -m components pipeline` made: the same stage outputs file for file, the same
MLflow runs under its parent run, a registered version per device, and the night's summary.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from components.config import load_params
from components.stages import STAGES, Layout
from tests.conftest import PROJECT_ROOT, seed_store, subprocess_env
from tests.e2e.conftest import DEVICES, PipelineRun, expected_runs, night_runs, scratch_project


def _files(folder: Path) -> set[str]:
    """The files under `folder`, a random part id in a name (profile's parquet parts) made `*`."""
    return {re.sub(r"-[0-9a-f]{8}(?=\.)", "-*", str(p.relative_to(folder))) for p in folder.rglob("*") if p.is_file()}


def _artifact(run_dir: Path, stage: str, device_index: int | None, output: str) -> Path:
    """A task's output artifact in the local runner's pipeline root: <run>/[<loop>-iteration-<i>/]<task>/<output>."""
    task = stage.replace("_", "-")
    pattern = f"*-iteration-{device_index}/{task}/{output}" if device_index is not None else f"{task}/{output}"
    [found] = list(run_dir.glob(pattern))
    return found


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_the_kubeflow_pipeline_runs_locally_and_makes_what_the_embedded_run_makes(tmp_path, pipeline_run: PipelineRun,
                                                                                   data_root, migrated_store):
    folder = tmp_path / "project"
    folder.mkdir()
    params_path = scratch_project(folder, data_root)
    seed_store(migrated_store, folder / ".state")
    root = folder / "kfp"
    run = subprocess.run([sys.executable, str(PROJECT_ROOT / "infra" / "kfp" / "pipeline.py"), "--local",
                          "--output", str(root)], cwd=folder, capture_output=True, text=True, timeout=1400,
                         env=subprocess_env(folder, IOT_COMPRESS_PARAMS=str(params_path)))
    assert run.returncode == 0, (run.stdout + run.stderr)[-5000:]
    key = re.search(r"compress-nightly (kfp-local-\S+): done locally", run.stdout)[1]

    summary = json.loads((root / "summary" / "summary.json").read_text())
    devices = [d["device"] for d in summary["devices"]]  # in the order the loop's iterations ran them
    assert sorted(devices) == sorted(DEVICES)

    # every stage's artifacts hold the files the embedded run's folders hold
    [run_dir] = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("compress-nightly")]
    embedded = Layout(load_params(pipeline_run.params_path))
    for stage in STAGES:
        for index, device in enumerate(devices) if stage.per_device else [(None, None)]:
            place = embedded.place(stage.name, device)
            outputs = {"report_dir": place.report} | ({"output_dir": place.data} if stage.writes_data else {})
            for output, theirs in outputs.items():
                mine = _artifact(run_dir, stage.name, index, output)
                assert _files(mine) == _files(theirs), (stage.name, device, output)

    # the same MLflow runs, every one finished, the parent ended by the summary
    _, night = night_runs(params_path, key)
    _, theirs = night_runs(pipeline_run.params_path)
    assert set(night) == set(theirs) == expected_runs(DEVICES, DEVICES)
    assert set(night.values()) == {"FINISHED"}, night
    assert summary["key"] == key and summary["passed"] is True
    assert [d["registered"]["version"] for d in summary["devices"]] == ["1", "1"]  # its own store: first versions
