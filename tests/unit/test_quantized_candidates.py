"""Which form compress deploys: the fastest measured one at the accuracy floor, the float one otherwise."""

from __future__ import annotations

from components.pruning.quantized import _pick, default_form


def _candidates(float_ms=1.0, int8_ms=0.5, int8_acc=0.95, int8_ok=True):
    int8 = ({"ok": True, "val_accuracy": int8_acc, "latency_ms": int8_ms, "float_operators": ["/rnns.0/GRU (GRU)"]}
            if int8_ok else {"ok": False, "error": "SIGSEGV"})
    return {"onnx": {"ok": True, "val_accuracy": 0.96, "latency_ms": float_ms}, "onnx_int8": int8}


def test_the_int8_form_is_taken_when_it_is_faster_and_at_the_floor_and_names_what_stayed_float():
    choice = _pick(_candidates(), "onnx", "onnx_int8", 0.95, "d")
    assert choice.format == "onnx_int8" and choice.float_format == "onnx"
    assert "kept in float: /rnns.0/GRU (GRU)" in choice.why


def test_the_float_form_stays_when_int8_loses_accuracy_is_no_faster_or_did_not_run():
    below = _pick(_candidates(int8_acc=0.94), "onnx", "onnx_int8", 0.95, "d")
    assert below.format == "onnx" and "below the floor 0.9500" in below.why
    slower = _pick(_candidates(int8_ms=1.2), "onnx", "onnx_int8", 0.95, "d")
    assert slower.format == "onnx" and "measured no faster (1.2 ms vs 1 ms)" in slower.why
    failed = _pick(_candidates(int8_ok=False), "onnx", "onnx_int8", 0.95, "d")
    assert failed.format == "onnx" and failed.why == "onnx_int8 did not run: SIGSEGV"


def test_a_runtime_without_an_int8_form_deploys_its_float_form_and_says_why():
    from types import SimpleNamespace

    torch_device = SimpleNamespace(runtime="torch")
    assert default_form(torch_device).format == "torch"
    assert "has no int8 form" in default_form(torch_device).why
    assert default_form(SimpleNamespace(runtime="onnxruntime")).why == "compress.quantize is off"
