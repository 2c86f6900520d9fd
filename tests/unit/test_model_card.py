"""The model card a registered version carries as its description, from a synthetic validation report."""

from __future__ import annotations

import copy

from components.reports.model_card import MAX_CHARS, model_card, registered_model_description

NAME = "iot-compress-uci_hapt-ort-1t"


def _ci(mean: float, low: float, high: float, users: int = 3) -> dict:
    return {"mean": mean, "low": low, "high": high, "users": users, "std": 0.01}


def _report() -> dict:
    comp = {"ok": True, "file": "model.onnx", "sha256": "ab" * 32, "bytes": 41_000, "accuracy": 0.9123,
            "accuracy_ci": _ci(0.9123, 0.8871, 0.9342), "macro_f1": 0.9, "macro_f1_ci": _ci(0.9, 0.87, 0.92),
            "agreement": 0.991, "latency_ms": 0.42, "predicted_latency_ms": 0.45, "peak_memory_bytes": 2_000_000,
            "latency_method": "timed", "accuracy_drop": _ci(0.0061, -0.002, 0.0143)}
    base = {"ok": True, "file": "model.onnx", "sha256": "cd" * 32, "bytes": 410_000, "accuracy": 0.9184,
            "accuracy_ci": _ci(0.9184, 0.8902, 0.9411), "macro_f1": 0.91, "macro_f1_ci": _ci(0.91, 0.88, 0.93),
            "agreement": 1.0, "latency_ms": 1.31, "predicted_latency_ms": 1.25, "peak_memory_bytes": 6_000_000,
            "latency_method": "timed"}
    gates = [
        {"name": "runs", "passed": True, "value": None, "limit": None, "detail": "checksum verified, loaded and ran"},
        {"name": "accuracy_drop", "passed": True, "value": 0.0061, "limit": 0.02,
         "detail": "drop per user 0.0061 (95 % CI -0.0020 to 0.0143, 3 users); judged on the mean"},
        {"name": "latency", "passed": True, "value": 0.3206, "limit": 0.75, "detail": "timed 0.42 ms vs 1.31 ms"},
        {"name": "latency_prediction", "passed": None, "value": None, "limit": 0.25, "detail": "not applicable | x"},
    ]
    return {"device": "ort-1t", "runtime": "onnxruntime", "threads": 1, "load_runtime": "onnxruntime",
            "deployed_format": "onnx", "formats": ["onnx"], "passed": True, "failed_gates": [], "gates": gates,
            "models": {"compressed": {"onnx": comp}, "baseline": {"onnx": base}},
            "test_windows": 1234, "test_users": ["2", "5", "9"], "classes": ["walk", "sit", "stand"],
            "input_shape": [10, 2, 3, 2, 10], "dataset": "uci_hapt", "data_hash": "0123456789abcdef" * 4,
            "validation_id": "feedbeef00112233", "validate_run_id": "r" * 32, "pipeline_run": "nightly-7",
            "architecture": {
                "compressed": {"arch": "deepsense", "params": 12_345, "macs": 456_789,
                               "widths": {"sensor0.conv1": 12, "merge.conv1": 16, "rnn1": 24, "output": 3}},
                "baseline": {"arch": "deepsense", "params": 300_000, "macs": 9_000_000,
                             "widths": {"sensor0.conv1": 64, "merge.conv1": 64, "rnn1": 120, "output": 3}}}}


def test_the_card_says_what_it_is_how_good_how_fast_which_gates_and_how_to_load_it():
    card = model_card(_report(), NAME, "4")
    assert card.startswith(f"# {NAME} version 4\n")
    # what it is: data set, data hash, held-out users, architecture with its widths against the baseline's
    assert "`uci_hapt`" in card and "`0123456789abcdef`" in card and "Held-out users: 2, 5, 9" in card
    assert "deepsense, 12,345 parameters (4.1 % of the baseline's 300,000)" in card
    assert "sensor0.conv1 12 (of 64)" in card and "output 3," not in card and "output 3" in card
    # accuracy as a mean over users with its 95 % interval, and the drop, user by user
    assert "| compressed (onnx) | 0.9123 (95 % CI 0.8871 to 0.9342, 3 users) |" in card
    assert "0.9184 (95 % CI 0.8902 to 0.9411, 3 users)" in card
    assert "user by user: 0.0061 (95 % CI -0.0020 to 0.0143, 3 users)" in card
    # measured latency and size against the baseline, as ratios
    assert "| latency ms (measured) | 0.42 | 1.31 | 0.321 |" in card
    assert "| file bytes | 41000 | 410000 | 0.100 |" in card
    # every gate with its verdict; a pipe in a detail does not break the table
    assert "## Gates (every gate passed)" in card
    assert "| accuracy_drop | PASS | 0.0061 | 0.02 |" in card and "| latency_prediction | n/a |" in card
    assert "not applicable \\| x" in card
    # how to load it: this version's URI, the alias, the pyfunc call and the runtime
    assert f'mlflow.pyfunc.load_model("models:/{NAME}/4")' in card and f"models:/{NAME}@champion" in card
    assert "model.predict(windows)" in card and "in **onnxruntime**" in card
    assert "pipeline run `nightly-7`" in card and "`feedbeef00112233`" in card


def test_the_card_says_the_accuracy_rule_and_a_retry_with_the_fallback():
    report = _report()
    report["accuracy_rule"] = "passes when the mean drop is at most 1 point(s) and the upper end of its 95 % " \
                              "interval at most 2"
    first_gate = report["gates"][1] | {"passed": False, "detail": "drop per user 0.0150; missed (mean drop 1.50 > 1)"}
    report["retry"] = {"reason": "the compressed model missed only the accuracy gate", "passed": True,
                       "first_try": {"gates": [first_gate], "failed_gates": ["accuracy_drop"], "models": {"compressed": {}}}}
    card = model_card(report, NAME, "5")
    assert "The accuracy gate passes when the mean drop is at most 1 point(s) and the upper end of its 95 % " \
           "interval at most 2: \"no loss\" on users this model never saw" in card
    assert "First try: the compressed model missed only the accuracy gate (drop per user 0.0150; missed (mean " \
           "drop 1.50 > 1)); retried once with compress's fallback" in card
    assert "it passed every gate and is the model deployed here" in card
    assert "First try" not in model_card(_report(), NAME, "5")  # no retry: nothing said


def test_a_failed_gate_and_a_model_that_did_not_run_are_said():
    report = _report()
    report["passed"], report["failed_gates"] = False, ["latency"]
    report["gates"][2]["passed"] = False
    report["models"]["baseline"]["onnx"] = {"ok": False, "error": "the runtime refused the file"}
    card = model_card(report, NAME, "1")
    assert "## Gates (failed latency)" in card and "| latency | **FAIL** | 0.3206 | 0.75 |" in card
    assert "| baseline | did not run: the runtime refused the file |" in card
    assert "## Latency and size" not in card  # nothing to compare against


def test_a_report_without_the_architecture_or_an_interval_still_makes_a_card():
    report = _report()
    del report["architecture"]
    comp = report["models"]["compressed"]["onnx"]
    comp["accuracy_ci"], comp["macro_f1_ci"] = _ci(0.9, 0.9, 0.9, users=1), _ci(0.8, 0.8, 0.8, users=1)
    card = model_card(report, NAME, "2")
    assert "Architecture" not in card and "0.9000 (one user: no interval)" in card


def test_a_long_card_is_shortened_to_fit_mlflows_description_gates_first_then_cut():
    report = _report()
    report["gates"] = [copy.deepcopy(report["gates"][1]) | {"name": f"gate{i}", "detail": "why " * 200}
                       for i in range(4)]
    card = model_card(report, NAME, "3")
    assert len(card) <= MAX_CHARS and "| gate3 | PASS |" in card and "…" in card
    assert "sensor0.conv1 12 (of 64)" in card  # the widths stay while shortening the details is enough
    huge = copy.deepcopy(report)
    huge["architecture"]["compressed"]["widths"] = {f"layer{i}": i + 1 for i in range(400)}
    card = model_card(huge, NAME, "3")
    assert len(card) <= MAX_CHARS and "400 layers, 1 to 400 wide" in card
    tiny = model_card(report, NAME, "3", max_chars=1500)
    assert len(tiny) <= 1500 and tiny.rstrip().endswith("in the version's artifacts)")


def test_the_registered_model_description_names_the_task_device_and_aliases():
    text = registered_model_description(_report(), NAME)
    assert "**uci_hapt**" in text and "**ort-1t**" in text and f"`models:/{NAME}@champion`" in text
