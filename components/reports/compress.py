"""compress's report: `comparison.md`, the methods side by side at the budget, and how the search got there."""

from __future__ import annotations

from components.reports.tables import interval_text, markdown_table


def comparison_markdown(device: str, metrics: dict) -> str:
    methods = metrics["methods"]
    latency = all("predicted_latency_ms" in r for r in methods.values())
    lines = [f"# {device}: compression at budget {metrics['budget']} of the baseline's {metrics['cost']} "
             f"({'met' if metrics['budget_met'] else 'NOT MET'})", "",
             *_floor_lines(metrics.get("floor", {}), metrics["cost"]),
             f"Test accuracy is the mean over {methods['baseline']['test_accuracy_ci']['users']} held-out users; "
             f"DeepIoT's change against the baseline, user by user: "
             f"{interval_text(metrics['accuracy_change_ci'], 4)}.", "",
             *_validation_lines(metrics),
             f"Accuracy floor (mean over the validation users): {metrics['accuracy_floor']:.3f}; the lowest "
             f"{metrics['cost']} width pruning can reach: {metrics['cost_floor']:.3f} of the baseline's.", ""]
    energy = all(r.get("energy_mj") is not None for r in methods.values())
    header = ["method", "params", "relative cost", *(["predicted ms"] if latency else []),
              *(["energy mJ"] if energy else []), "test accuracy (95 % CI over users)", "validation accuracy", "fits"]
    lines += markdown_table(header, [
        [name, r["params"], f"{r['relative_cost']:.3f}", *([f"{r['predicted_latency_ms']:.3f}"] if latency else []),
         *([f"{r['energy_mj']:.4g}"] if energy else []),
         interval_text(r["test_accuracy_ci"], 3, short=True), f"{r['val_accuracy']:.3f}", r["fits"]]
        for name, r in methods.items()])
    lines += _energy_lines(metrics.get("energy") or {}) + _form_lines(metrics.get("deployed") or {})
    lines += _fallback_lines(metrics.get("fallback", {}), metrics["cost"])
    lines += _refit_lines(metrics.get("refit", [])) + _selection_lines(metrics.get("selection", {}))
    return "\n".join(lines) + "\n"


def _form_lines(form: dict) -> list[str]:
    """Float or int8: each form run on the validation users and timed against the baseline, and the one taken."""
    if not form.get("candidates"):
        return ["", f"Deployed as {form['format']} ({form['why']})."] if form.get("format") else []
    rows = []
    for fmt, c in form["candidates"].items():
        if not c.get("ok"):
            rows.append([fmt, f"did not run: {c.get('error', '')}", "", "", ""])
            continue
        ratio = "-" if c.get("measured_ratio") is None else f"{c['measured_ratio']:.3f}"
        energy = "-" if c.get("energy_mj") is None else f"{c['energy_mj']:.4g}"
        rows.append([fmt + (" (deployed)" if fmt == form["format"] else ""), f"{c['val_accuracy']:.4f}", ratio,
                     energy, ", ".join(c.get("float_operators") or []) or "-"])
    return ["", "## Float or int8", "", *markdown_table(
        ("form", "validation accuracy", "measured latency / the baseline's", "energy mJ", "kept in float"), rows),
        "", f"Deployed as {form['format']}: {form['why']}."]


def _energy_lines(energy: dict) -> list[str]:
    """How the energy per inference is known, and the energy budget's verdict where there is one."""
    if energy.get("compressed_mj") is None:
        return ["", f"Energy per inference: {energy.get('source') or 'none'}."] if energy else []
    line = (f"Energy per inference: {energy['compressed_mj']:.4g} mJ against the baseline's "
            f"{energy['baseline_mj']:.4g} mJ ({energy.get('ratio', float('nan')):.3f}x; {energy['source']})")
    if "budget_mj" in energy:
        line += (f"; budget {energy['budget_mj']:g} mJ ({energy['aim']:.3f} of the baseline's): "
                 + ("met" if energy["met"] else "NOT MET"))
    return ["", line + "."]


def _validation_lines(metrics: dict) -> list[str]:
    v = metrics.get("validation") or {}
    if not v:
        return []
    if v["by"] != "users":
        return [f"Decisions here (the floor, the selection, the fine-tune's early stop) rest on {v['windows']} "
                "windows of the training users (the set has too few users for a validation group): they "
                "flatter the model.", ""]
    saw = "the baseline was trained on them" if v["baseline_trained_on_them"] else "nor was the baseline"
    return [f"Every decision here (the search's floor, the candidate selection, the fine-tune's early stop) is "
            f"judged on the validation users {', '.join(v['users'])} ({v['windows']} windows): whole training users "
            f"the compressed model is never trained on ({saw}). DeepIoT's change against the baseline on them, "
            f"user by user: {interval_text(metrics.get('val_accuracy_change_ci') or {}, 4)}.", ""]


def _fallback_lines(fallback: dict, cost: str) -> list[str]:
    if not fallback:
        return []
    if "params" not in fallback:
        return ["", f"No fallback: {fallback.get('why', 'none was made')}."]
    measured = f", measured {fallback['measured_ratio']:.3f}" if fallback.get("measured_ratio") is not None else ""
    return ["", "## Fallback (one step back along the search's path)", "",
            f"Deployed by validate instead if the model misses only the accuracy gate: "
            f"{100 * fallback['share']:.0f} % of the way back, {fallback['params']} "
            f"parameters at {fallback['relative_cost']:.3f} of the baseline's {cost} (aim {fallback['aim']:.3f}"
            f"{measured}); change against the baseline on the validation users "
            f"{interval_text(fallback.get('val_accuracy_change_ci') or {}, 4)}, on the held-out users "
            f"{interval_text(fallback.get('accuracy_change_ci') or {}, 4)}."]


def _floor_lines(floor: dict, cost: str) -> list[str]:
    if not floor:
        return []
    measured = f", measured {floor['measured']:.3f}" if floor.get("measured") is not None else ""
    line = (f"One element per layer (the lowest width pruning reaches): predicted {floor['predicted']:.3f}"
            f"{measured} of the baseline's {cost}.")
    if floor.get("above_budget"):
        line += f" **The budget is below it: the search aimed at {floor['aim']:.3f}, the best this device can reach.**"
    return [line, ""]


def _refit_lines(rounds: list[dict]) -> list[str]:
    if not rounds:
        return []
    lines = ["", "## The latency model, refitted where the search went", "",
             "Newly profiled compressed structures, predicted (ratio to the baseline) before and after each refit:",
             ""]
    rows = []
    for r in rounds:
        b, a = r.get("before_refit", {}), r.get("after_refit", {})
        rows.append([r["round"], r["profiled"], b.get("candidates", 0), _pct(b, "within_5_pct"),
                     _pct(b, "within_10_pct"), _pct(b, "mape_pct", 1), _pct(a, "mape_pct", 1)])
    return lines + markdown_table(("round", "configurations profiled", "structures", "within +-5 % before",
                                   "within +-10 % before", "MAPE before", "MAPE after"), rows)


def _selection_lines(selection: dict) -> list[str]:
    timed = selection.get("timed")
    if not timed:
        return ["", f"Structure taken: {selection['method']}."] if selection else []
    p = selection["prediction"]
    lines = ["", "## Candidates timed on the device against the baseline (same rounds)", "",
             f"Predicted ratio within +-5 % of the measured one: {_pct(p, 'within_5_pct')}, within +-10 %: "
             f"{_pct(p, 'within_10_pct')} ({p['candidates']} candidates).", ""]
    rows = [[r["name"], r["params"], f"{r['accuracy']:.3f}", f"{r['predicted_ratio']:.3f}",
             f"{r['measured_ratio']:.3f}", "**yes**" if r["chosen"] else ""] for r in timed]
    return lines + markdown_table(("candidate", "params", "validation accuracy", "predicted ratio", "measured ratio",
                                   "chosen"), rows)


def _pct(d: dict, key: str, digits: int = 0) -> str:
    return f"{d[key]:.{digits}f} %" if key in d else "-"
