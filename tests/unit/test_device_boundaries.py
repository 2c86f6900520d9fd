"""Where the device backends' knowledge stays: runtime-specific pool sections and export formats.

The import rules (no stage imports a stage, the backends never import export,
...) are import-linter contracts: tests/static/test_architecture.py.
"""

from __future__ import annotations

import ast
from pathlib import Path

COMPONENTS = Path(__file__).resolve().parents[2] / "components"


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
    from components.devices.export import FORMATS

    owners = [fmt for runtime in known_runtimes() for fmt in get_backend(runtime).formats]
    assert sorted(owners) == sorted(FORMATS)  # each format once, none that export does not name
    for fmt in FORMATS:
        backend = format_backend(fmt)
        assert type(backend).write is not Backend.write, f"{backend.runtime} cannot write {fmt}"
    assert format_backend("tflite_int16x8").calibrated == ("tflite_int8", "tflite_int16x8")
