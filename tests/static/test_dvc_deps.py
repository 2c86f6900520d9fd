"""`dvc repro` re-runs a stage when any code it runs changes: its deps list every module it imports.

The imports are read from the source (also those inside functions, and a
package's `__init__`), transitively from `components/<stage>.py`; each file
must be a dep of the stage or lie in a folder that is. A module loaded by
name at run time (the runtimes in devices/base.py, the export and worker
child processes) lies in a listed folder because its importer does.
"""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def module_file(module: str) -> Path | None:
    path = ROOT.joinpath(*module.split("."))
    if (path / "__init__.py").exists():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").exists() else None


def direct_imports(module: str) -> set[str]:
    """The components.* modules `module` imports anywhere in its file, with their parent packages."""
    path = module_file(module)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            found |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return {m for m in found if m.split(".")[0] == "components" and module_file(m) is not None}


def closure(module: str) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += direct_imports(m) - seen
    return seen


def code_deps() -> dict[str, list[str]]:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    return {name: [d for d in body.get("do", body).get("deps", []) if d.startswith("components")]
            for name, body in stages.items()}


def test_every_stage_lists_the_code_it_imports():
    missing = {}
    for stage, deps in code_deps().items():
        files = sorted(module_file(m).relative_to(ROOT).as_posix() for m in closure(f"components.{stage}"))
        uncovered = [f for f in files if not any(f == d or f.startswith(d.rstrip("/") + "/") for d in deps)]
        if uncovered:
            missing[stage] = uncovered
    assert not missing, "dvc.yaml deps miss modules the stage imports (editing them would not re-run it):\n" + \
        "\n".join(f"  {stage}: {', '.join(files)}" for stage, files in missing.items())


LOADED_BY_PATH = {"register": {"components/registry_model.py"}}  # MLflow loads it from its file, by path


def test_no_stage_lists_code_it_does_not_run():
    """A stale dep re-runs a stage for nothing (a 40-minute compress after an edit it never reads)."""
    stale = {}
    for stage, deps in code_deps().items():
        files = {module_file(m).relative_to(ROOT).as_posix() for m in closure(f"components.{stage}")}
        unused = [d for d in deps if d not in LOADED_BY_PATH.get(stage, set())
                  and not any(f == d or f.startswith(d.rstrip("/") + "/") for f in files)]
        if unused:
            stale[stage] = unused
    assert not stale, f"dvc.yaml lists code the stage never imports: {stale}"


def test_every_listed_code_dep_exists():
    for stage, deps in code_deps().items():
        assert all((ROOT / d).exists() for d in deps), f"{stage}: {[d for d in deps if not (ROOT / d).exists()]}"


def test_a_function_level_import_counts():
    assert "components.data.windows" in direct_imports("components.compress")
    assert "components.training" in closure("components.compress")
