"""benchmarks/nightly_verdicts.py: a night's verdicts read from its reports folder, and the table of two nights."""

from __future__ import annotations

import json

import pytest

from tests.conftest import benchmark_module


@pytest.fixture(scope="module")
def verdicts():
    return benchmark_module("nightly_verdicts")


def _night(tmp_path, name: str, devices: dict[str, tuple[bool, float]], retried: str | None = None):
    """A reports folder: summary.json as the pipeline writes it, and validate's report where a device retried."""
    reports = tmp_path / name
    (reports / "summary").mkdir(parents=True)
    metrics = {"devices": float(len(devices))}
    for device, (passed, drop) in devices.items():
        metrics |= {f"{device}.accuracy": 0.95, f"{device}.baseline_accuracy": 0.95 + drop,
                    f"{device}.accuracy_drop": drop, f"{device}.accuracy_drop_low": drop - 0.01,
                    f"{device}.accuracy_drop_high": drop + 0.015, f"{device}.latency_ratio": 0.3,
                    f"{device}.size_ratio": 0.25, f"{device}.passed": float(passed),
                    f"{device}.registered": float(passed)}
    (reports / "summary" / "summary.json").write_text(json.dumps({"key": name, "metrics": metrics}))
    if retried:
        (reports / "validate" / retried).mkdir(parents=True)
        first = {"compressed": {"onnx": {"accuracy_drop": {"mean": 0.004, "low": -0.01, "high": 0.022}}}}
        (reports / "validate" / retried / "report.json").write_text(json.dumps({
            "deployed_format": "onnx", "failed_gates": ["accuracy_drop"],
            "retry": {"first_try": {"models": first}}}))
    return reports


def test_two_nights_side_by_side_with_the_first_try_of_a_retried_device(verdicts, tmp_path):
    before = verdicts.read_night(_night(tmp_path, "before", {"ort-1t": (True, -0.002), "cortex-m4": (True, 0.0)}))
    after = verdicts.read_night(_night(tmp_path, "after", {"ort-1t": (False, 0.008), "cortex-m4": (True, 0.004)},
                                       retried="ort-1t"))
    assert after["devices"]["ort-1t"]["first_try"]["accuracy_drop_high"] == pytest.approx(0.022)
    assert "first_try" not in before["devices"]["ort-1t"]  # no validate report beside that summary

    lines = verdicts.table({"before": before, "after": after}).splitlines()
    ort = [line for line in lines if line.startswith("| ort-1t |")]
    assert [line.split(" | ")[1] for line in ort] == ["before", "after"]  # one device's nights together
    assert "failed accuracy_drop" in ort[1] and "+0.80 (-0.20 to +2.30)" in ort[1]
    assert "+0.40 (-1.00 to +2.20)" in ort[1]  # the first try's drop, in points
    assert lines[-1] == "registered: before: 2 of 2, after: 1 of 2"


def test_figures_kept_with_keep_are_read_back_by_rows(verdicts, tmp_path, monkeypatch, capsys):
    reports = _night(tmp_path, "night", {"tflite-1t": (True, 0.001)})
    keep = tmp_path / "kept"
    monkeypatch.setattr("sys.argv", ["nightly_verdicts.py", f"n1={reports}", "--keep", str(keep)])
    verdicts.main()
    printed = capsys.readouterr().out
    monkeypatch.setattr("sys.argv", ["nightly_verdicts.py", "--rows", str(keep)])
    verdicts.main()
    assert capsys.readouterr().out == printed and (keep / "n1.json").exists()
