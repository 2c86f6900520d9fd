"""`dvc.yaml`, generated from the stage table: `python -m components.drivers.dvc_yaml` rewrites it.

Each stage lists the params it reads (from the table), the folders of the
stages it reads and its own (from `Layout`, with `${key}` for the device of a
per-device stage), and as code every module it runs: the `components.*`
modules it imports, directly or not, from grimp's import graph (the one
import-linter checks: also imports inside functions; not those under `if
TYPE_CHECKING:`, which never run). A module of `LOADED_BY_NAME` stands for
its whole folder, since modules there are also loaded by name at run time
(the device runtimes, the export and worker child processes), where no
import says so. tests/static/test_dvc_deps.py fails when the committed file
is not what this writes.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Sequence
from pathlib import Path

import grimp
import yaml

from components.config import load_params
from components.stages import STAGES, Layout, Stage, check_table

ROOT = Path(__file__).resolve().parents[2]
DVC_FILE = ROOT / "dvc.yaml"
LOADED_BY_NAME = ("components/devices",)  # packages whose modules are also loaded by name: a dep as a whole
READS = {"components.reports.tables": ("components/reports/templates",)}  # files a module reads at run time
DEVICE_KEY = "${key}"  # DVC's foreach key: the device
HEADER = """\
# Generated from components/stages.py by `python -m components.drivers.dvc_yaml`: edit the stage table, not this file
# (tests/static/test_dvc_deps.py fails when they disagree). Each stage lists the params it reads, the folders
# of the stages it reads, and as code every module it imports. The device pool is loaded as variables, so a
# per-device stage has one stage per device (profile@ort-1t, ...).
"""


def module_file(module: str, root: Path = ROOT) -> Path | None:
    path = root.joinpath(*module.split("."))
    if (path / "__init__.py").exists():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").exists() else None


@functools.cache
def _graph():
    """grimp's import graph of the package (import-linter's; every import, also inside functions)."""
    return grimp.build_graph("components", exclude_type_checking_imports=True, cache_dir=None)


def closure(module: str) -> set[str]:
    """`module` and every components.* module it imports, directly or not, with their parent packages (whose
    `__init__` runs first)."""
    found = {module} | _graph().find_upstream_modules(module)
    return {".".join(m.split(".")[:i]) for m in found for i in range(1, m.count(".") + 2)}


def code_deps(stage: Stage, root: Path = ROOT) -> list[str]:
    """The files of every module the stage runs (the folders of `LOADED_BY_NAME`), relative to the project root."""
    deps = set()
    for module in closure(stage.module) | set(stage.loads):
        rel = module_file(module, root).relative_to(root).as_posix()
        deps.add(next((folder for folder in LOADED_BY_NAME if rel.startswith(folder + "/")), rel))
        deps.update(READS.get(module, ()))
    return sorted(deps, key=lambda d: (d.count("/"), not d.endswith(".py"), d))


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def stage_entry(stage: Stage, layout: Layout, root: Path = ROOT) -> dict:
    device = DEVICE_KEY if stage.per_device else None
    place = layout.place(stage.name, device)
    cmd = f"python -m components {stage.name}" + (f" --device {DEVICE_KEY}" if device else "")
    deps = code_deps(stage, root) + [f"${{ingest.data_root}}/{d}" for d in stage.data_deps]
    deps += [_rel(folder, root) for folder in layout.inputs(stage.name, device).values()]
    params: list = list(stage.params)
    if stage.per_device:
        params.append({"infra/devices.yaml": [f"devices.{DEVICE_KEY}"]})
    body: dict = {"cmd": cmd, "deps": deps, "params": params}
    if stage.writes_data:
        out = _rel(place.data, root)
        body["outs"] = [{out: {"persist": True}} if stage.persist else out]
    if stage.metrics:
        body["metrics"] = [{_rel(place.report / name, root): {"cache": False}} for name in stage.metrics]
    if stage.plots:
        body["plots"] = [{_rel(place.report / name, root): {"cache": False}} for name in stage.plots]
    if stage.per_device:
        return {"foreach": "${devices}", "do": body}
    return body


class _Dumper(yaml.SafeDumper):
    """Lists indented under their key, as people write dvc.yaml."""

    def increase_indent(self, flow: bool = False, indentless: bool = False):
        return super().increase_indent(flow, False)


def render(stages: Sequence[Stage] = STAGES, root: Path = ROOT) -> str:
    """The text of dvc.yaml for `stages`, with the folders params.yaml in `root` gives them."""
    check_table(stages)
    layout = Layout(load_params(root / "params.yaml", []), None, tuple(stages))
    document = {"vars": ["params.yaml", "infra/devices.yaml"],
                "stages": {stage.name: stage_entry(stage, layout, root) for stage in stages}}
    return HEADER + yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 if dvc.yaml is not what would be written")
    args = p.parse_args(argv)
    text = render()
    if args.check:
        same = DVC_FILE.read_text() == text
        print("dvc.yaml is up to date" if same else "dvc.yaml is stale: run `python -m components.drivers.dvc_yaml`")
        return 0 if same else 1
    DVC_FILE.write_text(text)
    print(f"wrote {DVC_FILE.relative_to(ROOT)} ({len(yaml.safe_load(text)['stages'])} stages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
