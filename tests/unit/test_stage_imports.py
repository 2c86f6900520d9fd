"""No stage module imports another: what two stages share lives in devices/, data/, latency/, profiling/, ...

Read from the source (every import, also those inside functions), so a helper
that moves back into a stage, or a stage that reaches into another's module,
fails here with the line that does it.
"""

from __future__ import annotations

import ast
from pathlib import Path

COMPONENTS = Path(__file__).resolve().parents[2] / "components"
STAGES = ("ingest", "train", "profile", "fit_latency", "compress", "validate", "register")
DRIVERS = ("__main__.py", "airflow_tasks.py")  # they run the stages, so they import them


def imported_stages(path: Path) -> list[tuple[int, str]]:
    """(line, stage) for every import of a stage module in the file at `path`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            modules = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        else:
            continue
        found += [(node.lineno, m.split(".")[1]) for m in modules
                  if m.startswith("components.") and m.count(".") == 1 and m.split(".")[1] in STAGES]
    return found


def test_no_stage_module_or_helper_imports_a_stage():
    offenders = []
    for path in sorted(COMPONENTS.rglob("*.py")):
        if path.parent == COMPONENTS and path.name in DRIVERS:
            continue
        own = path.stem if path.parent == COMPONENTS else None
        offenders += [f"{path.relative_to(COMPONENTS.parent)}:{line} imports components.{stage}"
                      for line, stage in imported_stages(path) if stage != own]
    assert not offenders, "move what is shared out of the stage module:\n" + "\n".join(offenders)


def test_the_check_sees_imports_inside_functions(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from components import profile, tracking\n    from components.train import x\n")
    assert imported_stages(sample) == [(2, "profile"), (3, "train")]


def test_the_device_backends_never_import_the_export_module():
    """Export drives the backends' writers (one direction): the worker <-> export cycle stays gone."""
    offenders = []
    for path in sorted((COMPONENTS / "devices").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module else
                     [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            if isinstance(node, ast.ImportFrom) and node.module == "components":
                names += [f"components.{a.name}" for a in node.names]
            offenders += [f"{path.relative_to(COMPONENTS.parent)}:{node.lineno}" for n in names
                          if n == "components.export"]
    assert not offenders, f"devices/ imports components.export: {offenders}"


def test_only_the_device_backends_read_a_pool_entrys_runtime_specific_section():
    """Stages ask the backend (timed, compute, limits, host_runtime, write) instead of `device.mcu`."""
    offenders = []
    for path in sorted(COMPONENTS.rglob("*.py")):
        if path.parent.name == "devices":
            continue
        offenders += [f"{path.relative_to(COMPONENTS.parent)}:{node.lineno}"
                      for node in ast.walk(ast.parse(path.read_text(), str(path)))
                      if isinstance(node, ast.Attribute) and node.attr == "mcu"]
    assert not offenders, "ask the device's backend instead of reading `.mcu`:\n" + "\n".join(offenders)


def test_every_export_format_is_written_and_read_by_exactly_one_backend():
    from components.devices.base import Backend, format_backend, get_backend, known_runtimes
    from components.export import FORMATS

    owners = [fmt for runtime in known_runtimes() for fmt in get_backend(runtime).formats]
    assert sorted(owners) == sorted(FORMATS)  # each format once, none that export does not name
    for fmt in FORMATS:
        backend = format_backend(fmt)
        assert type(backend).write is not Backend.write, f"{backend.runtime} cannot write {fmt}"
    assert format_backend("tflite_int16x8").calibrated == ("tflite_int8", "tflite_int16x8")
