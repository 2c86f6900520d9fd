"""Export, on-device validation and its gates: real conversions, real runtimes, real crashes."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from components import models, validate
from components.artifacts.seals import ChecksumMismatch, verify
from components.config import ConfigError
from components.decisions import gates
from components.devices.base import get_backend
from components.devices.export import export, read_manifest
from components.settings.validate import GateParams
from components.stages import Place
from tests.conftest import synthetic_task

GATES = GateParams(max_accuracy_drop=0.02, max_accuracy_drop_upper=1.0, min_agreement=0.98, latency_budget=0.75,
                   energy_budget=0.75, size_budget=0.5, max_latency_error=0.25)
QUICK_TIMING = ("profile.timing.warmup_runs=1", "profile.timing.min_sample_s=0.0005", "profile.timing.min_rounds=3",
                "profile.timing.max_repeats=5", "profile.timing.max_time_s=0.05")


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """The synthetic task with a baseline and a narrower 'compressed' DeepSense trained on it."""
    folder = tmp_path_factory.mktemp("task")
    ingest, train = synthetic_task(folder)
    _, small = synthetic_task(folder / "small", widths=(4, 4, 4))
    return SimpleNamespace(ingest=ingest, baseline=train / "model", compressed=small / "model", folder=folder)


def _params(make_params, task, *more):
    return make_params(f"ingest.output_dir={task.ingest}", "validate.calibration_windows=40", *QUICK_TIMING, *more)


def _run(params, task, device, tmp_path, **kwargs):
    return validate.run(params, device, ingest=task.ingest, train=task.baseline.parent,
                        compress=task.compressed.parent, fit_latency=tmp_path / "no-latency-model",
                        out=Place(tmp_path / "v", tmp_path / "r"), **kwargs)


# ---- export ------------------------------------------------------------------------------------------------------


def test_every_format_exports_with_its_checksum_and_runs_like_torch(task, tmp_path):
    x = np.load(task.ingest / "x.npy")[:40]
    files, failed = export(task.baseline, ("onnx", "onnx_int8", "tflite", "tflite_int8", "tflite_int16x8", "torch"),
                           tmp_path, x, 300)
    assert not failed
    assert read_manifest(tmp_path) == files
    for fmt, exported in files.items():
        verify(tmp_path / exported.file, exported.sha256)
        assert exported.bytes == (tmp_path / exported.file).stat().st_size
    model = models.load(task.baseline)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    runtimes = {"onnx": "onnxruntime", "onnx_int8": "onnxruntime", "tflite": "tflite", "tflite_int8": "tflite",
                "tflite_int16x8": "tflite", "torch": "torch"}
    for fmt, runtime in runtimes.items():
        runner = get_backend(runtime).load_file(tmp_path / files[fmt].file, fmt, 1)
        got = np.concatenate([runner.predict(x[i : i + 1]) for i in range(len(x))])
        if fmt == "tflite_int8":  # quantised: the same decisions, not the same numbers
            assert np.mean(got.argmax(1) == expected.argmax(1)) >= 0.9
        elif fmt == "onnx_int8":  # int8 convolutions and output layer (7-bit weights), float GRUs: the same
            # decisions, logits within 2 % of the largest on average and 12 % on the worst window
            assert np.mean(got.argmax(1) == expected.argmax(1)) >= 0.97
            assert np.abs(got - expected).mean() <= 0.02 * np.abs(expected).max()
            assert np.abs(got - expected).max() <= 0.12 * np.abs(expected).max()
        elif fmt == "tflite_int16x8":  # int16 activations: close to the float logits, not only the decisions
            assert np.mean(got.argmax(1) == expected.argmax(1)) >= 0.97
            assert np.abs(got - expected).max() <= 0.05 * np.abs(expected).max()
        else:
            np.testing.assert_allclose(got, expected, atol=1e-4)


def test_a_changed_byte_fails_the_checksum(task, tmp_path):
    files, _ = export(task.baseline, ("onnx",), tmp_path, None, 300)
    path = tmp_path / files["onnx"].file
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatch, match="changed after export"):
        verify(path, files["onnx"].sha256)


# ---- the stage --------------------------------------------------------------------------------------------------


def test_validate_reports_every_gate_with_its_numbers_and_logs_the_run(make_params, task, tmp_path):
    params = _params(make_params, task)
    result = _run(params, task, "ort-1t", tmp_path)
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report == json.loads(json.dumps(result.report))
    comp, base = report["models"]["compressed"]["onnx"], report["models"]["baseline"]["onnx"]
    assert comp["ok"] and base["ok"]
    assert comp["agreement"] == 1.0  # ONNX Runtime computes what torch computes
    assert 0 < comp["latency_ms"] and comp["peak_memory_bytes"] > 0 and comp["bytes"] < base["bytes"]
    gates = {g["name"]: g for g in report["gates"]}
    assert set(gates) == {"runs", "accuracy_drop", "agreement", "latency", "energy", "size", "latency_prediction"}
    # energy: this machine has no readable meter, so modelled from the pool's declared watts, and said so
    assert comp["energy_mj"] == pytest.approx(6.0 * comp["latency_ms"])
    assert comp["energy_source"].startswith("modelled: 6 W active (declared) x the latency (meter not read: ")
    assert gates["energy"]["value"] == pytest.approx(comp["energy_ratio"])
    assert comp["energy_ratio"] == pytest.approx(comp["latency_ms"] / base["latency_ms"])
    assert gates["size"]["passed"] and gates["size"]["value"] == pytest.approx(comp["bytes"] / base["bytes"])
    assert gates["latency_prediction"]["passed"] is False  # no latency model was given: said, and failed
    assert not report["passed"] and "latency_prediction" in report["failed_gates"]
    md, page = (tmp_path / "r" / "report.md").read_text(), (tmp_path / "r" / "report.html").read_text()
    assert "| latency_prediction | FAIL |" in md and "onnx (deployed)" in md
    assert "<table>" in page and "FAIL" in page
    import mlflow

    run = mlflow.MlflowClient().get_run(result.run_id)
    assert run.data.tags["validation_passed"] == "false"
    assert run.data.metrics["compressed.onnx.accuracy"] == pytest.approx(comp["accuracy"])
    # the accuracy is the held-out user's (synthetic task: one user, c): per user, and said to have no interval
    assert comp["per_user_accuracy"] == {"c": pytest.approx(comp["accuracy"])} and comp["accuracy_ci"]["users"] == 1
    assert "1 held-out users (c) (one user: no interval)" in md


def test_the_int8_form_compress_chose_is_deployed_and_gated_against_the_float_baseline(make_params, task, tmp_path):
    """compress's deploy.json says onnx_int8: validate runs it first, times it together with the baseline's float
    file and gates that pair; the latency model (float structures) is not judged on it, and says so."""
    import shutil

    from components.devices.onnxrt import float_operators

    compressed = tmp_path / "compress"
    shutil.copytree(task.compressed.parent, compressed, ignore=shutil.ignore_patterns("deploy.json"))
    (compressed / "deploy.json").write_text(json.dumps({"format": "onnx_int8", "float_format": "onnx",
                                                        "why": "test", "candidates": {}}))
    params = _params(make_params, task)
    result = validate.run(params, "ort-1t", ingest=task.ingest, train=task.baseline.parent, compress=compressed,
                          fit_latency=tmp_path / "no-latency-model", out=Place(tmp_path / "v", tmp_path / "r"))
    report = result.report
    assert report["deployed_format"] == "onnx_int8" and report["formats"] == ["onnx_int8", "onnx"]
    pair = report["deployed_pair"]
    assert pair["baseline_format"] == "onnx" and pair["compressed"]["format"] == "onnx_int8"
    base, comp = pair["baseline"], pair["compressed"]
    assert comp["measured_ratio"] == pytest.approx(comp["latency_ms"] / base["latency_ms"])
    assert comp["accuracy_drop"]["mean"] == pytest.approx(base["accuracy"] - comp["accuracy"])
    gates = {g["name"]: g for g in report["gates"]}
    assert gates["latency"]["value"] == pytest.approx(comp["measured_ratio"])
    assert gates["latency_prediction"]["passed"] is None and "predicts float structures" in \
        gates["latency_prediction"]["detail"]
    # the int8 file keeps its recurrent layers in float, by name
    files = report["exports"]["compressed"]["files"]
    kept = float_operators(tmp_path / "v" / "compressed" / files["onnx_int8"]["file"])
    assert kept and all(k.endswith("(GRU)") for k in kept)


def test_validate_declares_its_windows_and_links_each_models_figures_to_its_logged_model(make_params, task, tmp_path):
    from mlflow import MlflowClient

    from components.tracking import runs as tracking

    params = _params(make_params, task)
    with tracking.stage_run(params, "train") as train_run:  # as train logs the baseline
        baseline_id = train_run.log_model_folder(task.baseline, "baseline")
    with tracking.stage_run(params, "compress", device="ort-1t") as compress_run:  # as compress logs its model
        model_id = compress_run.log_model_folder(task.compressed, "compressed-ort-1t")
    result = _run(params, task, "ort-1t", tmp_path)
    client = MlflowClient()
    run = client.get_run(result.run_id)
    (entry,) = run.inputs.dataset_inputs
    assert entry.dataset.digest == "synthetic-0"
    assert {t.key: t.value for t in entry.tags}["mlflow.data.context"] == "evaluation"
    assert {m.model_id for m in run.inputs.model_inputs} == {model_id, baseline_id}  # the models it validated
    linked = {m.key: m for m in client.get_logged_model(model_id).metrics}
    comp = result.report["models"]["compressed"]["onnx"]
    assert linked["compressed.onnx.accuracy"].value == pytest.approx(comp["accuracy"])
    assert linked["compressed.onnx.accuracy"].run_id == result.run_id and "gate.size" in linked
    assert not any(key.startswith("baseline.") for key in linked)
    baseline = {m.key: m for m in client.get_logged_model(baseline_id).metrics}
    assert baseline["baseline.onnx.accuracy"].value == pytest.approx(result.report["models"]["baseline"]["onnx"]
                                                                     ["accuracy"])
    assert not any(key.startswith(("compressed.", "gate.")) for key in baseline)
    assert run.data.metrics["baseline.onnx.accuracy"] > 0 and run.data.metrics["test_windows"] > 0  # the run's too


@pytest.mark.slow
def test_the_microcontroller_is_gated_on_its_integer_file_flash_and_sram(make_params, task, tmp_path):
    result = _run(_params(make_params, task), task, "cortex-m4", tmp_path)
    report = result.report
    assert report["deployed_format"] == "tflite_int16x8"
    comp = report["models"]["compressed"]["tflite_int16x8"]
    assert comp["latency_method"] == "computed" and comp["flash_bytes"] == comp["bytes"]
    assert 0 < comp["peak_sram_bytes"] < 262144
    # energy: the pool's datasheet figure (0.155 nJ per cycle at 64 MHz) times the computed latency, said modelled
    assert comp["energy_mj"] == pytest.approx(comp["latency_ms"] / 1000 * 64e6 * 0.155e-6)
    assert comp["energy_source"].startswith("modelled")
    gates = {g["name"]: g for g in report["gates"]}
    assert gates["fits_device"]["passed"] and gates["latency_prediction"]["passed"] is None


@pytest.mark.slow
def test_a_model_that_misses_only_the_accuracy_gate_is_retried_once_with_compress_fallback(make_params, task,
                                                                                          tmp_path):
    import shutil

    from components import register

    compress = tmp_path / "compress"
    untrained = models.build(models.load(task.compressed).spec)  # a model that has learnt nothing: it loses accuracy
    models.save(untrained.eval(), compress / "model")
    shutil.copytree(task.baseline, compress / "fallback")  # one step back: here the baseline itself, nothing lost
    params = _params(make_params, task, "validate.gates.max_accuracy_drop=0.0", "validate.gates.min_agreement=0.0",
                     "validate.gates.latency_budget=1.0", "validate.gates.energy_budget=1.0",
                     "validate.gates.size_budget=1.0")
    result = validate.run(params, "cortex-m4", ingest=task.ingest, train=task.baseline.parent, compress=compress,
                          fit_latency=tmp_path / "no-latency-model", out=Place(tmp_path / "v", tmp_path / "r"))
    report = result.report
    first = report["retry"]["first_try"]
    assert first["failed_gates"] == ["accuracy_drop"] and first["model_dir"].endswith("compress/model")
    assert report["passed"] and report["retry"]["passed"] and report["model_dirs"]["compressed"].endswith("fallback")
    assert report["exports"]["compressed"]["dir"] == "fallback"  # what register registers
    deployed = report["exports"]["compressed"]["files"]["tflite_int16x8"]["file"]
    assert (register.exported_dir(report, tmp_path / "v") / deployed).exists()
    assert "First try: the compressed model missed only the accuracy gate" in (tmp_path / "r" / "report.md").read_text()
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    lost = first["models"]["compressed"]["tflite_int16x8"]["accuracy_drop"]["mean"]  # both models' first figures
    assert metrics["retried"] == 1.0 and metrics["first_try.accuracy_drop"] == pytest.approx(lost) and lost > 0
    assert first["models"]["baseline"]["tflite_int16x8"]["ok"]
    # a fallback that also misses is not retried again: the night ends without a model for the device
    shutil.rmtree(compress / "fallback")
    shutil.copytree(compress / "model", compress / "fallback")
    again = validate.run(params, "cortex-m4", ingest=task.ingest, train=task.baseline.parent, compress=compress,
                         fit_latency=tmp_path / "no-latency-model", out=Place(tmp_path / "v", tmp_path / "r"))
    assert not again.passed and again.report["retry"]["passed"] is False and again.report["failed_gates"] == [
        "accuracy_drop"]


@pytest.mark.slow
def test_a_tampered_export_is_refused_on_the_device_and_fails_the_gates(make_params, task, tmp_path, monkeypatch):
    real = validate.export_models

    def export_then_tamper(model_dir, formats, folder, calibration, timeout_s):
        done = real(model_dir, formats, folder, calibration, timeout_s)
        if folder.name == "compressed":
            path = folder / done["files"]["onnx"].file
            path.write_bytes(path.read_bytes()[:-8] + b"tampered")
        return done

    monkeypatch.setattr(validate, "export_models", export_then_tamper)
    report = _run(_params(make_params, task), task, "ort-1t", tmp_path).report
    assert report["failed_gates"] == ["runs"]
    assert "ChecksumMismatch" in report["gates"][0]["detail"] and "was not loaded" in report["gates"][0]["detail"]
    assert report["models"]["baseline"]["onnx"]["ok"]  # the untouched file still ran


def _plugin_pool(tmp_path: Path, runtime: str) -> Path:
    path = tmp_path / "devices.yaml"
    path.write_text(f"devices:\n  odd:\n    runtime: {runtime}\n    threads: 1\n    queue: default\n"
                    f"    pool: local_cpu\n    reach: local\n")
    return path


@pytest.mark.parametrize("backend, expected", [
    ("CrashingFileBackend", "process failed: validate worker died (signal SIGSEGV)"),
    ("RefusingFileBackend", "operator GRU is not supported"),
])
@pytest.mark.slow
def test_a_runtime_that_crashes_or_cannot_load_fails_the_device_not_the_stage(make_params, task, tmp_path, backend,
                                                                              expected):
    runtime = f"tests.stage.faulty_backends:{backend}"
    params = _params(make_params, task, f"profile.devices_file={_plugin_pool(tmp_path, runtime)}",
                     f"validate.formats={{'{runtime}': [onnx]}}")
    report = _run(params, task, "odd", tmp_path).report
    assert not report["passed"] and report["failed_gates"] == ["runs"]
    assert expected in report["gates"][0]["detail"]
    assert (tmp_path / "r" / "report.md").exists()


def test_a_format_the_device_cannot_load_is_refused_up_front(make_params, task, tmp_path):
    params = _params(make_params, task, "validate.formats={onnxruntime: [tflite]}")
    with pytest.raises(ConfigError, match="runtime onnxruntime cannot load tflite"):
        _run(params, task, "ort-1t", tmp_path)


# ---- the gates ---------------------------------------------------------------------------------------------------


def _record(**kw):
    return {"ok": True, "accuracy": 0.9, "agreement": 1.0, "latency_ms": 1.0, "latency_method": "timed",
            "bytes": 1000, "predicted_latency_ms": 1.0, "latency_error": 0.0, "energy_mj": 6.0,
            "energy_source": "modelled: 6 W"} | kw


DEVICE = SimpleNamespace(runtime="onnxruntime", mcu=None)


def _verdicts(base, comp, device=DEVICE):
    return {g.name: g.passed for g in gates.check_gates(base, comp, device, GATES)}


def test_each_gate_passes_at_its_limit_and_fails_beyond_it():
    base = _record()
    at_limits = _record(accuracy=0.88, agreement=0.98, latency_ms=0.75, bytes=500, latency_error=0.25, energy_mj=4.5)
    assert set(_verdicts(base, at_limits).values()) == {True}
    beyond = {"accuracy_drop": {"accuracy": 0.87}, "agreement": {"agreement": 0.97}, "latency": {"latency_ms": 0.8},
              "size": {"bytes": 501}, "latency_prediction": {"latency_error": 0.3}, "energy": {"energy_mj": 4.6}}
    for gate, change in beyond.items():
        verdicts = _verdicts(base, at_limits | change)
        assert [name for name, ok in verdicts.items() if not ok] == [gate]


def test_the_accuracy_gate_judges_the_drop_user_by_user_with_its_interval():
    users = {"u1": 0.80, "u2": 0.95, "u3": 0.70, "u4": 0.90, "u5": 0.85}
    base = _record(accuracy=np.mean(list(users.values())), per_user_accuracy=users)
    # one point worse on every user but one, which lost four: mean drop 1.6 points
    worse = {u: v - (0.04 if u == "u3" else 0.01) for u, v in users.items()}
    comp = _record(accuracy=np.mean(list(worse.values())), per_user_accuracy=worse)
    gate = next(g for g in gates.check_gates(base, comp, DEVICE, GATES) if g.name == "accuracy_drop")
    assert gate.passed and gate.value == pytest.approx(0.016)
    assert "drop per user 0.0160 (95 % CI 0.0100 to 0.0280, 5 users); passes when the mean drop is at most 2 " \
           "point(s)" in gate.detail and "missed" not in gate.detail
    with_evidence = GATES.model_copy(update=dict(max_accuracy_drop_upper=0.02))
    gate = next(g for g in gates.check_gates(base, comp, DEVICE, with_evidence) if g.name == "accuracy_drop")
    assert not gate.passed and gate.value == pytest.approx(0.016)  # the mean is within, the interval's top is not
    assert "missed (upper end 2.80 points > 2)" in gate.detail
    no_loss = GATES.model_copy(update=dict(max_accuracy_drop=0.01, max_accuracy_drop_upper=0.03))
    gate = next(g for g in gates.check_gates(base, comp, DEVICE, no_loss) if g.name == "accuracy_drop")
    assert not gate.passed and "missed (mean drop 1.60 points > 1)" in gate.detail


def test_a_model_that_did_not_run_fails_and_a_missing_latency_model_is_said():
    assert _verdicts(_record(), {"ok": False, "error": "boom"}) == {"runs": False}
    assert _verdicts({"ok": False, "error": "boom"}, _record())["baseline_runs"] is False
    verdicts = gates.check_gates(_record(), _record(latency_error=None, predicted_latency_ms=None), DEVICE, GATES)
    gate = next(g for g in verdicts if g.name == "latency_prediction")
    assert gate.passed is False and "run fit_latency" in gate.detail


def test_a_microcontroller_model_too_big_for_the_part_fails_fits_device():
    mcu = SimpleNamespace(flash_bytes=1000, sram_bytes=100)
    computed = {"latency_method": "computed", "latency_error": None}
    base = _record(**computed, flash_bytes=4000, peak_sram_bytes=50)
    fits = _record(**computed, bytes=400, flash_bytes=400, peak_sram_bytes=100)
    part = SimpleNamespace(runtime="mcu", mcu=mcu)  # the backend names the limits; the pool entry sets them
    assert _verdicts(base, fits, part)["fits_device"] is True
    too_big = fits | {"peak_sram_bytes": 101}
    verdicts = _verdicts(base, too_big, part)
    assert verdicts["fits_device"] is False and verdicts["latency_prediction"] is None
    gate = next(g for g in gates.check_gates(base, too_big, part, GATES) if g.name == "fits_device")
    assert gate.detail == "flash bytes 400 of 1000; peak sram bytes 101 of 100"
    assert "fits_device" not in _verdicts(base, fits)  # a timed runtime has no hard limits


def test_a_report_cell_with_a_pipe_does_not_break_the_markdown_table():
    from components.reports.validate import COLUMNS, report_markdown

    gates = [{"name": "runs", "passed": False, "value": None, "limit": None, "detail": "died: a | b"}]
    report = {"passed": False, "failed_gates": ["runs"], "gates": gates, "device": "d", "runtime": "r",
              "threads": 1, "test_windows": 1, "test_users": ["c"], "deployed_format": "onnx", "data_hash": "h",
              "formats": ["onnx"], "models": {m: {"onnx": {"ok": False, "error": "x | y"}} for m in validate.MODELS}}
    for line in report_markdown(report).splitlines():
        if line.startswith("|"):
            assert line.replace("\\|", "").count("|") in (6, len(COLUMNS) + 3)  # the gates' table, the formats' one
