"""The model card of a registered version: what it is, how good, how fast, which gates, how to load it.

Written from validate's report (the dict register reads) as Markdown, which
MLflow's UI renders as the version's description. A model version's
description holds at most MAX_CHARS characters in MLflow's SQL stores
(PostgreSQL enforces it), so a long card first shortens the gates' details,
then the widths, and is only cut as a last resort, pointing to the report
among the version's artifacts.
"""

from __future__ import annotations

from components.decisions.gates import deployed_pair
from components.reports.tables import interval_text, markdown_table
from components.reports.validate import fmt_value, retry_sentence

MAX_CHARS = 5000  # MLflow's model_versions.description is a VARCHAR(5000)
_VERDICT = {True: "PASS", False: "**FAIL**", None: "n/a"}


def model_card(report: dict, name: str, version: str, max_chars: int = MAX_CHARS) -> str:
    """The version's card, within `max_chars` characters."""
    for detail_chars, all_widths in ((None, True), (160, True), (80, False)):
        card = "\n".join(_lines(report, name, version, detail_chars, all_widths)) + "\n"
        if len(card) <= max_chars:
            return card
    note = "\n\n… (cut to fit MLflow's description; the whole report is `report.html` in the version's artifacts)\n"
    return card[: max_chars - len(note)] + note


def registered_model_description(report: dict, name: str) -> str:
    """The registered model's description: one task and device, what its versions and aliases are."""
    return (f"**{report['dataset']}** activity classifier ({', '.join(report['classes'])}), compressed for device "
            f"**{report['device']}** ({report['runtime']}, deployed as `{report['deployed_format']}`). Every version "
            "passed validate's gates on that device; its description is its model card. "
            f"`models:/{name}@champion` is the one to deploy, `models:/{name}@candidate` the newest.")


def _lines(report: dict, name: str, version: str, detail_chars: int | None, all_widths: bool) -> list[str]:
    fmt = report["deployed_format"]
    base, comp = deployed_pair(report)
    against = (report.get("deployed_pair") or {}).get("baseline_format")
    lines = [f"# {name} version {version}", "",
             f"A **{report['dataset']}** activity classifier compressed for **{report['device']}** "
             f"({report['runtime']}, {report['threads']} thread(s)), deployed as `{fmt}`"
             + (f", compared with the baseline as `{against}`." if against else "."), ""]
    lines += _what(report, all_widths) + _accuracy(report, comp, base) + _cost(report, comp, base)
    return lines + _gates(report, detail_chars) + _load(report, name, version, comp)


def _what(report: dict, all_widths: bool) -> list[str]:
    users = report["test_users"]
    lines = ["## What it is", "",
             f"- Data set: `{report['dataset']}`, data hash `{report['data_hash'][:16]}`",
             f"- Held-out users: {', '.join(users)} ({report['test_windows']} test windows, never trained on)",
             f"- Classes: {', '.join(report['classes'])}; input: float32 windows "
             f"[{', '.join(str(n) for n in report['input_shape'])}]"]
    arch = report.get("architecture", {})
    comp, base = arch.get("compressed"), arch.get("baseline")
    if comp:
        share = f" ({100 * comp['params'] / base['params']:.1f} % of the baseline's {base['params']:,})" if base \
            else ""
        lines.append(f"- Architecture: {comp['arch']}, {comp['params']:,} parameters{share}, "
                     f"{comp['macs']:,} MACs per window")
        widths = comp["widths"]
        if all_widths:
            was = (base or {}).get("widths", {})
            shown = [f"{layer} removed" if w == 0 else
                     f"{layer} {w}" + (f" (of {was[layer]})" if was.get(layer, w) != w else "")
                     for layer, w in widths.items()]
            lines.append(f"- Widths: {', '.join(shown)}")
        else:
            kept = [w for w in widths.values() if w]
            gone = len(widths) - len(kept)
            lines.append(f"- Widths: {len(kept)} layers, {min(kept)} to {max(kept)} wide"
                         + (f"; {gone} removed whole" if gone else ""))
    return lines + [""]


def _accuracy(report: dict, comp: dict, base: dict) -> list[str]:
    lines = [f"## Accuracy on {report['device']}", "",
             "Means over the held-out users, each user counting once, with a 95 % bootstrap interval over them.", ""]
    rows = []
    for label, r in (("compressed", comp), ("baseline", base)):
        if not r.get("ok"):
            rows.append([label, f"did not run: {r.get('error', '')}", "", ""])
            continue
        ci = r.get("accuracy_ci") or {"mean": r["accuracy"], "users": 1}
        f1 = r.get("macro_f1_ci") or {"mean": r.get("macro_f1"), "users": 1}
        rows.append([f"{label} ({report['deployed_format']})", interval_text(ci, 4), interval_text(f1, 4),
                     fmt_value(r.get("agreement"))])
    lines += markdown_table(("model", "accuracy", "macro-F1", "agreement with its torch model"), rows)
    if comp.get("accuracy_drop"):
        lines += ["", f"Accuracy drop against the baseline, user by user: {interval_text(comp['accuracy_drop'], 4)}."]
    if report.get("accuracy_rule"):
        lines += ["", f"The accuracy gate {report['accuracy_rule']}: \"no loss\" on users this model never saw, "
                  "with evidence (how often this rule passes a model that loses more than a point on further users "
                  "is measured by the project's `benchmarks/gate_errors.py`)."]
    retry = retry_sentence(report)
    if retry:
        lines += ["", retry]
    return lines + [""]


def _cost(report: dict, comp: dict, base: dict) -> list[str]:
    if not (comp.get("ok") and base.get("ok")):
        return []
    how = comp.get("latency_method", "timed")
    table = []
    rows = [(f"latency ms ({'measured' if how == 'timed' else how})", "latency_ms"),
            ("predicted latency ms", "predicted_latency_ms"), ("file bytes", "bytes"),
            ("peak memory bytes", "peak_memory_bytes"), ("flash bytes", "flash_bytes"),
            ("peak SRAM bytes", "peak_sram_bytes"),
            (f"energy mJ per inference ({(comp.get('energy_source') or 'none').split(':')[0]})", "energy_mj")]
    for label, key in rows:
        c, b = comp.get(key), base.get(key)
        if c is None:
            continue
        table.append([label, fmt_value(c), fmt_value(b), f"{c / b:.3f}" if b else "-"])
    energy = [f"Energy: {comp['energy_source']}.", ""] if comp.get("energy_mj") is not None else []
    return [f"## Latency, energy and size on {report['device']}", "",
            *markdown_table(("", "compressed", "baseline", "ratio"), table), "", *energy]


def _gates(report: dict, detail_chars: int | None) -> list[str]:
    verdict = "every gate passed" if report["passed"] else f"failed {', '.join(report['failed_gates'])}"
    rows = []
    for g in report["gates"]:
        detail = g["detail"] if detail_chars is None or len(g["detail"]) <= detail_chars \
            else g["detail"][: detail_chars - 1] + "…"
        rows.append([g["name"], _VERDICT[g["passed"]], fmt_value(g["value"]), fmt_value(g["limit"]), detail])
    return [f"## Gates ({verdict})", "", *markdown_table(("gate", "result", "value", "limit", "detail"), rows), ""]


def _load(report: dict, name: str, version: str, comp: dict) -> list[str]:
    runtime, fmt = report["load_runtime"], report["deployed_format"]
    shape = ", ".join(str(n) for n in report["input_shape"])
    return ["## How to load it", "",
            "```python", "import mlflow", "",
            f'model = mlflow.pyfunc.load_model("models:/{name}/{version}")  # this version',
            f'# or "models:/{name}@champion", whichever version is the device\'s champion now',
            f"logits = model.predict(windows)  # float32 [n, {shape}] -> [n, {len(report['classes'])}]", "```", "",
            f"It runs the `{fmt}` file ({fmt_value(comp.get('bytes'))} bytes, sha256 `{str(comp.get('sha256'))[:16]}…`, "
            f"checked before loading) in **{runtime}**; the other formats and report.html are in the version's "
            "artifacts.", "",
            "## Lineage", "",
            f"validation `{report['validation_id']}` by validate run `{report['validate_run_id']}`"
            + (f", pipeline run `{report['pipeline_run']}`" if report.get("pipeline_run") else "") + "."]
