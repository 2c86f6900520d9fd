"""The night's summary as logic: verdicts, the description, metric keys, the params diff, the Pareto numbers."""

from __future__ import annotations

import pytest

from components.config import load_params
from components.reports.night import (
    DeviceNight,
    Night,
    description_markdown,
    headline,
    night_metrics,
    params_diff,
    pareto_points,
    summary_html,
    table_text,
    trend,
)
from tests.conftest import PROJECT_ROOT
from tests.night_reports import compress_metrics, validate_report

REGISTERED = {"name": "iot-compress-hhar_sa-ort-1t", "version": "3", "aliases": ["candidate", "champion"],
              "decision": "no champion yet"}


def night() -> Night:
    return Night("nightly-7", "run-1", (
        DeviceNight("ort-1t", validate_report("ort-1t"), compress_metrics("ort-1t"), registered=REGISTERED,
                    champion={"version": "3", "accuracy": "0.900000", "latency_ms": "0.3"}),
        DeviceNight("tflite-1t", validate_report("tflite-1t", latency_ms=0.7, bytes_=80_000)),
        DeviceNight("cortex-m4", failed_stage="compress", error="ModelConfigError: no layer left to prune"),
    ), {"compress.budget.latency": "0.33"})


def test_a_device_passes_only_when_every_stage_ran_and_every_gate_passed():
    ok, gates, broken = night().devices
    assert (ok.passed, gates.passed, broken.passed) == (True, False, False)
    assert ok.verdict == "PASSED"
    assert gates.verdict == "FAILED gates latency, size"
    assert broken.verdict == "FAILED in compress"
    retried = DeviceNight("ort-1t", validate_report("ort-1t") | {"retry": {"passed": True}})
    assert retried.passed and retried.verdict == "PASSED (after a retry with the fallback)"
    assert not night().passed and Night("k", "r", (ok,)).passed
    assert not Night("k", "r", ()).passed  # a night that covered no device did not pass


def test_headline_numbers_are_the_deployed_formats_with_intervals_and_ratios():
    h = headline(night().devices[0])
    assert h["accuracy"] == 0.90 and h["baseline_accuracy"] == 0.91
    assert h["accuracy_low"] == pytest.approx(0.88) and h["accuracy_high"] == pytest.approx(0.92)
    assert h["accuracy_drop"] == pytest.approx(0.01) and h["accuracy_drop_high"] == pytest.approx(0.02)
    assert h["latency_ratio"] == pytest.approx(0.3) and h["size_ratio"] == pytest.approx(0.4)
    assert (h["passed"], h["registered"], h["champion_version"], h["champion_accuracy"]) == (1.0, 1.0, 3.0, 0.9)


def test_metric_keys_are_stable_per_device_and_skip_what_is_unknown():
    m = night_metrics(night())
    assert m["devices"] == 3 and m["devices_passed"] == 1
    assert m["ort-1t.accuracy"] == 0.90 and m["ort-1t.passed"] == 1.0 and m["ort-1t.registered"] == 1.0
    assert m["tflite-1t.latency_ratio"] == pytest.approx(0.7) and m["tflite-1t.passed"] == 0.0
    assert m["ort-1t.energy_mj"] == pytest.approx(1.8) and m["ort-1t.energy_ratio"] == pytest.approx(0.3)
    assert m["cortex-m4.passed"] == 0.0 and "cortex-m4.accuracy" not in m  # it never got that far
    assert {k.split(".", 1)[1] for k in m if k.startswith("ort-1t.")} == {
        "accuracy", "accuracy_low", "accuracy_high", "baseline_accuracy", "accuracy_drop", "accuracy_drop_low",
        "accuracy_drop_high", "latency_ratio", "size_ratio", "energy_mj", "energy_ratio", "passed", "registered", "champion_version",
        "champion_accuracy"}


def test_params_diff_is_only_what_the_night_changed():
    path = PROJECT_ROOT / "params.yaml"
    file = load_params(path).to_dict()
    assert params_diff(file, file) == {}
    changed = load_params(path, ["compress.budget.latency=0.33", "ingest.dataset=wisdm",
                                 "ingest.uci_hapt.users=[user01, user02]"]).to_dict()
    assert params_diff(changed, file) == {"compress.budget.latency": "0.33", "ingest.dataset": "wisdm",
                                          "ingest.uci_hapt.users": '["user01", "user02"]'}


def test_the_description_says_each_verdict_why_and_where_the_model_went():
    text = description_markdown(night())
    assert text.startswith("### Night nightly-7: 1 of 3 devices passed\n\n**ort-1t: PASSED**")
    assert "| ort-1t | PASSED | 0.900 (0.880 to 0.920) | 0.910 | 0.010 | 0.3 | 0.4 | 1.8 | " \
           "iot-compress-hhar_sa-ort-1t v3 `@candidate` `@champion` |" in text  # code: MLflow links @words
    assert "size ratio 0.4, energy 1.8 mJ per inference, ratio 0.3 (modelled)" in text
    assert "**tflite-1t: FAILED gates latency, size**" in text
    assert "- gate latency: timed 0.7 ms vs the baseline's 1 ms (0.7 vs limit 0.4)" in text
    assert "- gate size: 80000 bytes vs the baseline's 100000 (0.8 vs limit 0.6)" in text
    assert "**cortex-m4: FAILED in compress**\n- compress: ModelConfigError: no layer left to prune" in text
    assert "registered iot-compress-hhar_sa-ort-1t v3 `@candidate` `@champion`: no champion yet" in text
    assert "Settings that differ from the params file: `compress.budget.latency` = 0.33." in text


def test_a_long_description_is_cut_below_the_tag_limit():
    many = Night("k", "r", tuple(DeviceNight(f"d{i}", failed_stage="ingest", error="x" * 900) for i in range(20)))
    text = description_markdown(many, limit=5000)
    assert len(text) <= 5000 and text.endswith("(cut short: see the artifact)\n")


def test_the_terminal_table_lines_up_and_gives_each_failure_its_reason():
    text = table_text(night())
    lines = text.splitlines()
    assert lines[0] == "Night nightly-7: 1 of 3 devices passed"
    header, *rows = lines[2:6]
    assert header.split("  ")[0] == "device" and all(len(r) <= len(max(lines, key=len)) for r in rows)
    assert [r.split()[0] for r in rows] == ["ort-1t", "tflite-1t", "cortex-m4"]
    assert header.index("verdict") == rows[0].index("PASSED") == rows[2].index("FAILED in compress")
    assert "  cortex-m4: compress: ModelConfigError: no layer left to prune" in lines
    assert any(line.startswith("  tflite-1t: latency: timed 0.7 ms") for line in lines)


def test_pareto_points_hold_the_device_measurement_and_compress_baselines_at_the_same_budget():
    points = {p["method"]: p for p in pareto_points(night().devices[0])}
    assert set(points) == {"baseline", "compressed", "deepiot", "l1", "uniform"}
    assert (points["baseline"]["latency_ratio"], points["baseline"]["size_ratio"]) == (1.0, 1.0)
    assert points["compressed"]["on_device"] and not points["l1"]["on_device"]
    assert points["l1"]["latency_ratio"] == pytest.approx(0.3) and points["l1"]["size_ratio"] == pytest.approx(0.32)
    assert points["uniform"]["accuracy"] == 0.84 and points["uniform"]["low"] == pytest.approx(0.82)
    assert pareto_points(night().devices[2]) == []  # failed before validate: nothing to place


def test_trend_orders_nights_and_keeps_each_devices_own_figures():
    nights = [(2000, {"ort-1t.accuracy": 0.91, "ort-1t.passed": 1.0, "ort-1t.champion_accuracy": 0.91}),
              (1000, {"ort-1t.accuracy": 0.88, "ort-1t.passed": 0.0, "tflite-1t.accuracy": 0.8}),
              (3000, {"devices": 0.0})]  # a night that reached no device
    rows = trend(nights, ["ort-1t", "tflite-1t", "cortex-m4"])
    assert [r["time_ms"] for r in rows["ort-1t"]] == [1000, 2000]
    assert [r["accuracy"] for r in rows["ort-1t"]] == [0.88, 0.91]
    assert rows["ort-1t"][0]["champion_accuracy"] is None and rows["ort-1t"][1]["champion_accuracy"] == 0.91
    assert [r["accuracy"] for r in rows["tflite-1t"]] == [0.8] and rows["cortex-m4"] == []
    last = trend(nights, ["ort-1t", "tflite-1t"], last=1)  # per device: its own last night
    assert [r["time_ms"] for r in last["ort-1t"]] == [2000] and [r["time_ms"] for r in last["tflite-1t"]] == [1000]


def test_the_html_is_one_page_with_the_gates_of_every_device_and_its_images_inside():
    page = summary_html(night(), {"Pareto": "data:image/png;base64,iVBORw0KGgo="})
    assert page.startswith("<!doctype html>") and "<script" not in page
    assert "<img alt='Pareto' src='data:image/png;base64,iVBORw0KGgo='>" in page
    assert "<td class='FAIL' title='timed 0.7 ms vs the baseline&#39;s 1 ms'>FAIL 0.7 / 0.4</td>" in page
    assert "<td colspan='4'>FAILED in compress</td>" in page
    assert "<h3 class='FAILED'>cortex-m4: FAILED in compress</h3>" in page
    assert "`" not in page and "v3 @candidate @champion" in page  # Markdown's code marks stay in Markdown

