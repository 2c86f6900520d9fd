"""Where the device backends' knowledge stays: runtime-specific pool sections and export formats.

The import rules (no stage imports a stage, the backends never import export,
...) are import-linter contracts: tests/static/test_architecture.py.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

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


def test_energy_per_inference_is_modelled_from_declared_figures_and_says_so(tmp_path):
    from components.devices.energy import energy_per_inference
    from components.devices.pool import load_pool

    pool = load_pool(COMPONENTS.parent / "infra" / "devices.yaml")
    m4 = energy_per_inference(pool["cortex-m4"], 10.0)  # 10 ms at 64 MHz: 640,000 cycles at 0.155 nJ
    assert m4["energy_mj"] == pytest.approx(640_000 * 0.155e-6)
    assert m4["energy_source"].startswith("modelled: 0.155 nJ per cycle (declared)")
    host = pool["ort-1t"].model_copy(update={"power": {"active_w": 4.0}})
    host = type(pool["ort-1t"]).model_validate(host.model_dump())
    assert energy_per_inference(host, 0.5) == {"energy_mj": 2.0, "energy_source":
                                               "modelled: 4 W active (declared) x the latency"}
    none = energy_per_inference(pool["ort-1t"], 0.5)
    assert none["energy_mj"] is None and "declare devices.ort-1t.power.active_w" in none["energy_source"]
