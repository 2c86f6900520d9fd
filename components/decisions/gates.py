"""validate's gates: what a compressed model must show on the device before it may be registered.

The accuracy gate asks for "no loss" with evidence: the drop against the
baseline, paired user by user over the held-out users, must be small on the
mean *and* at the upper end of its 95 % interval (`validate.gates`; the rule
was chosen from benchmarks/gate_errors.py). The others: it ran, it agrees
with the torch model, latency, energy and size within their budgets, it fits
the part, and the latency model predicted it within its tolerance.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from components.devices.base import get_backend


@dataclass(frozen=True)
class Gate:
    name: str
    passed: bool | None  # None: does not apply to this device (said in `detail`)
    value: float | None
    limit: float | None
    detail: str

    def to_dict(self) -> dict:
        return asdict(self)


def check_gates(base: dict, comp: dict, device, g, energy_budget_mj: float | None = None) -> list[Gate]:
    """Every gate on the compressed model (`comp`) against the baseline (`base`), same device and format.

    `energy_budget_mj`: the device's absolute energy budget (compress.energy_budget_mj), checked beside the ratio.
    """
    if not comp.get("ok"):
        return [Gate("runs", False, None, None, f"the compressed model did not run: {comp.get('error')}")]
    gates = [Gate("runs", True, None, None, "checksum verified, loaded and ran on every test window")]
    if not base.get("ok"):
        gates.append(Gate("baseline_runs", False, None, None,
                          f"the baseline did not run, so nothing can be compared: {base.get('error')}"))
        return gates
    gates.append(accuracy_gate(base, comp, g))
    gates.append(Gate("agreement", comp["agreement"] >= g.min_agreement, comp["agreement"], g.min_agreement,
                      "share of test windows predicted as the torch model predicts them"))
    ratio = comp["latency_ms"] / base["latency_ms"]
    gates.append(Gate("latency", ratio <= g.latency_budget, ratio, g.latency_budget,
                      f"{comp['latency_method']} {comp['latency_ms']:.4g} ms vs the baseline's "
                      f"{base['latency_ms']:.4g} ms"))
    gates.append(energy_gate(base, comp, g, energy_budget_mj))
    size = comp["bytes"] / base["bytes"]
    gates.append(Gate("size", size <= g.size_budget, size, g.size_budget,
                      f"{comp['bytes']} bytes vs the baseline's {base['bytes']}"))
    limits = get_backend(device.runtime).limits(device)
    if limits:
        fits = all(comp[key] <= limit for key, limit in limits.items())
        gates.append(Gate("fits_device", fits, None, None,
                          "; ".join(f"{key.replace('_', ' ')} {comp[key]} of {limit}" for key, limit in limits.items())))
    error = comp.get("latency_error")
    if comp.get("prediction_note"):
        gates.append(Gate("latency_prediction", None, None, g.max_latency_error,
                          f"not applicable: {comp['prediction_note']}"))
    elif comp["latency_method"] == "computed":
        gates.append(Gate("latency_prediction", None, None, g.max_latency_error,
                          "not applicable: the latency is computed by the same model that predicts it"))
    elif error is None:
        gates.append(Gate("latency_prediction", False, None, g.max_latency_error,
                          "no latency model for this device (run fit_latency)"))
    else:
        ratios = (f"measured {comp['measured_ratio']:.3f}, predicted {comp['predicted_ratio']:.3f} of the baseline's "
                  "latency (timed together); " if "measured_ratio" in comp else "")
        gates.append(Gate("latency_prediction", error <= g.max_latency_error, error, g.max_latency_error,
                          f"{ratios}measured {comp['latency_ms']:.4g} ms, predicted "
                          f"{comp['predicted_latency_ms']:.4g} ms"))
    return gates


def deployed_pair(report: dict) -> tuple[dict, dict]:
    """(baseline, compressed) as the gates compared them: the deployed form against the baseline's float form
    where compress chose int8 (`deployed_pair`), else both in the deployed format."""
    pair = report.get("deployed_pair")
    if pair:
        return pair["baseline"], pair["compressed"]
    fmt = report["deployed_format"]
    return report["models"]["baseline"][fmt], report["models"]["compressed"][fmt]


def energy_gate(base: dict, comp: dict, g, budget_mj: float | None) -> Gate:
    """Energy per inference against the baseline's (same kind of figure) and, where given, an absolute budget.

    Not applicable (None) where the device has no energy figure: the pool file says how to give it one.
    """
    from components.devices.energy import energy_ratio

    ratio = energy_ratio(comp, base)
    if ratio is None:
        why = comp.get("energy_source") if comp.get("energy_mj") is None else \
            f"the baseline's figure is {base.get('energy_source')}, the compressed model's {comp.get('energy_source')}"
        return Gate("energy", None, None, g.energy_budget, f"not applicable: {why}")
    passed = ratio <= g.energy_budget
    detail = (f"{comp['energy_mj']:.4g} mJ vs the baseline's {base['energy_mj']:.4g} mJ per inference "
              f"({comp['energy_source']})")
    if budget_mj is not None:
        passed = passed and comp["energy_mj"] <= budget_mj
        detail += f"; the device's budget {budget_mj:g} mJ (compress.energy_budget_mj)"
    return Gate("energy", passed, ratio, g.energy_budget, detail)


def accuracy_drop(base: dict, comp: dict, resamples: int = 10000, seed: int = 0) -> dict:
    """Baseline minus compressed accuracy, user by user over the held-out users, with its 95 % interval.

    Records without per-user accuracies (one pooled figure) give the plain difference and no interval.
    """
    from components.stats import intervals as evaluation

    if base.get("per_user_accuracy") and comp.get("per_user_accuracy"):
        return evaluation.paired_ci(base["per_user_accuracy"], comp["per_user_accuracy"], resamples, seed)
    drop = base["accuracy"] - comp["accuracy"]
    return {"mean": drop, "low": drop, "high": drop, "users": 1, "std": 0.0, "paired_users": []}


def accuracy_gate(base: dict, comp: dict, g) -> Gate:
    """"No loss", with evidence: the mean paired per-user drop at most `max_accuracy_drop` and the upper end of
    its 95 % interval at most `max_accuracy_drop_upper`. The gate's value is the mean drop."""
    from components.reports.tables import interval_text

    drop = comp.get("accuracy_drop") or accuracy_drop(base, comp)
    mean_ok = drop["mean"] <= g.max_accuracy_drop + 1e-12
    upper_ok = drop["high"] <= g.max_accuracy_drop_upper + 1e-12
    missed = [] if mean_ok else [f"mean drop {100 * drop['mean']:.2f} points > {100 * g.max_accuracy_drop:g}"]
    if not upper_ok:
        missed.append(f"upper end {100 * drop['high']:.2f} points > {100 * g.max_accuracy_drop_upper:g}")
    return Gate("accuracy_drop", mean_ok and upper_ok, drop["mean"], g.max_accuracy_drop,
                f"on-device accuracy {comp['accuracy']:.4f} vs the baseline's {base['accuracy']:.4f} (means over "
                f"held-out users); drop per user {interval_text(drop, 4)}; {accuracy_rule(g)}"
                + (f": missed ({'; '.join(missed)})" if missed else ""))


def accuracy_rule(g) -> str:
    """The accuracy gate's rule in words (the report and the model card say it)."""
    rule = f"passes when the mean drop is at most {100 * g.max_accuracy_drop:g} point(s)"
    if g.max_accuracy_drop_upper < 1:
        rule += f" and the upper end of its 95 % interval at most {100 * g.max_accuracy_drop_upper:g}"
    return rule


def only_accuracy_failed(gates: list[Gate]) -> bool:
    return [g.name for g in gates if g.passed is False] == ["accuracy_drop"]


