"""Synthetic stage outputs for the night's summary: validate's report.json and compress's metrics.json, as dicts.

Only the fields the summary reads, shaped as components/validate.py `_report` and components/compress.py
`_metrics` write them; the numbers are chosen so that each verdict is easy to tell.
"""

from __future__ import annotations

USERS = ["u1", "u2", "u3", "u4", "u5"]


def _ci(mean: float, half: float = 0.02) -> dict:
    return {"mean": mean, "low": mean - half, "high": mean + half, "users": len(USERS), "std": half / 2}

MODELLED = "modelled: 6 W active (declared) x the latency"


def validate_report(device: str, *, accuracy: float = 0.90, baseline: float = 0.91, latency_ms: float = 0.3,
                    bytes_: int = 40_000, fmt: str = "onnx", dataset: str = "hhar_sa",
                    validation_id: str | None = None, limits: dict | None = None) -> dict:
    """A validate report whose gates are judged as validate judges them: drop, latency ratio, size ratio."""
    limits = {"accuracy_drop": 0.02, "latency": 0.4, "size": 0.6} | (limits or {})
    base = {"ok": True, "error": "", "accuracy": baseline, "accuracy_ci": _ci(baseline), "latency_ms": 1.0,
            "bytes": 100_000, "latency_method": "timed", "energy_mj": 6.0, "energy_source": MODELLED}
    drop = baseline - accuracy
    comp = {"ok": True, "error": "", "accuracy": accuracy, "accuracy_ci": _ci(accuracy), "latency_ms": latency_ms,
            "bytes": bytes_, "latency_method": "timed", "accuracy_drop": _ci(drop, 0.01),
            "energy_mj": 6.0 * latency_ms, "energy_source": MODELLED, "energy_ratio": latency_ms}
    values = {"accuracy_drop": drop, "latency": latency_ms / 1.0, "size": bytes_ / 100_000}
    details = {"accuracy_drop": f"on-device accuracy {accuracy:.4f} vs the baseline's {baseline:.4f}",
               "latency": f"timed {latency_ms:.4g} ms vs the baseline's 1 ms",
               "size": f"{bytes_} bytes vs the baseline's 100000"}
    gates = [{"name": "runs", "passed": True, "value": None, "limit": None, "detail": "ran"}]
    gates += [{"name": n, "passed": values[n] <= limits[n] + 1e-12, "value": values[n], "limit": limits[n],
               "detail": details[n]} for n in ("accuracy_drop", "latency", "size")]
    failed = [g["name"] for g in gates if g["passed"] is False]
    return {"device": device, "runtime": "onnxruntime", "threads": 1, "deployed_format": fmt, "formats": [fmt],
            "passed": not failed, "failed_gates": failed, "gates": gates,
            "models": {"baseline": {fmt: base}, "compressed": {fmt: comp}}, "test_users": USERS,
            "test_windows": 500, "dataset": dataset, "data_hash": "abc",
            "validation_id": validation_id or f"vid-{device}", "validate_run_id": "r", "pipeline_run": "k"}


def compress_metrics(device: str, cost: str = "latency") -> dict:
    """compress's metrics with DeepIoT and the two baselines at the same budget."""
    def method(params: int, predicted_ms: float, accuracy: float) -> dict:
        return {"params": params, "predicted_latency_ms": predicted_ms, "relative_cost": predicted_ms / 2.0,
                "test_accuracy": accuracy, "test_accuracy_ci": _ci(accuracy)}

    return {"device": device, "cost": cost, "budget": 0.3, "budget_met": True,
            "methods": {"baseline": method(10_000, 2.0, 0.91), "deepiot": method(3_000, 0.6, 0.90),
                        "l1": method(3_200, 0.6, 0.86), "uniform": method(2_900, 0.6, 0.84)}}
