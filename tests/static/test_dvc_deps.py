"""`dvc.yaml` is what the stage table generates, and its code deps are what each stage runs.

`dvc repro` re-runs a stage when any code it runs changes, so its deps list
every module it imports, read from the source transitively (also imports
inside functions); `components/drivers/dvc_yaml.py` writes them.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from components.drivers import dvc_yaml
from components.stages import STAGES, Stage

ROOT = Path(__file__).resolve().parents[2]


def test_the_committed_dvc_yaml_is_what_the_stage_table_generates():
    assert (ROOT / "dvc.yaml").read_text() == dvc_yaml.render(), \
        "dvc.yaml disagrees with components/stages.py: run `python -m components.drivers.dvc_yaml` and commit the result"


def test_every_module_a_stage_imports_is_a_code_dep():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for stage in STAGES:
        body = stages[stage.name].get("do", stages[stage.name])
        deps = [d for d in body["deps"] if d.startswith("components")]
        files = sorted(dvc_yaml.module_file(m).relative_to(ROOT).as_posix() for m in dvc_yaml.closure(stage.module))
        uncovered = [f for f in files if not any(f == d or f.startswith(d + "/") for d in deps)]
        assert not uncovered, f"{stage.name}: editing {uncovered} would not re-run it"
        assert all((ROOT / d).exists() for d in deps)


def test_compress_re_runs_when_training_code_changes():
    """compress augments as train does (components.models.training): the dep the hand-written file once missed."""
    deps = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["compress"]["do"]["deps"]
    assert "components/models/training.py" in deps


def test_a_function_level_import_counts_and_an_annotation_only_one_does_not():
    assert "components.data.windows" in dvc_yaml.closure("components.compress")
    assert "components.models.training" in dvc_yaml.closure("components.compress")
    assert "components.stages" not in dvc_yaml.closure("components.ingest")  # under `if TYPE_CHECKING:`


def test_a_toy_stage_in_the_table_gets_its_dvc_stage():
    toy = Stage("toy", "components.reports.figures", "A toy stage.", per_device=True, reads=("train", "compress"),
                params=("train.seed",))
    entry = yaml.safe_load(dvc_yaml.render((*STAGES, toy)))["stages"]["toy"]
    assert entry["foreach"] == "${devices}"
    body = entry["do"]
    assert body["cmd"] == "python -m components toy --device ${key}"
    assert {"data/train", "data/compress/${key}", "components/reports/figures.py"} <= set(body["deps"])
    assert body["outs"] == ["data/toy/${key}"] and body["params"][0] == "train.seed"


def test_a_stage_that_renders_html_re_runs_when_a_template_changes():
    deps = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["validate"]["do"]["deps"]
    assert "components/reports/templates" in deps
