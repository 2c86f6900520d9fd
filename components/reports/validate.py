"""The validation report: JSON for machines, Markdown and HTML tables for people, flat numbers for MLflow and DVC."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from components.artifacts.atomic import write_text_atomic
from components.devices.scoring import MODELS
from components.reports.tables import interval_text, markdown_table, render


def write_report(report: dict, reports: Path) -> list[Path]:
    reports.mkdir(parents=True, exist_ok=True)
    write_text_atomic(reports / "report.json", json.dumps(report, indent=2))
    write_text_atomic(reports / "report.md", report_markdown(report))
    write_text_atomic(reports / "report.html", report_html(report))
    write_text_atomic(reports / "metrics.json", json.dumps(flat_metrics(report), indent=2))
    return [reports / n for n in ("report.json", "report.md", "report.html", "metrics.json")]


def fmt_value(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _verdict(passed: bool | None) -> str:
    return "n/a" if passed is None else ("PASS" if passed else "FAIL")


COLUMNS = (("accuracy", "accuracy (mean over users)"), ("accuracy_interval", "95 % CI over users"),
           ("macro_f1", "macro-F1"), ("agreement", "agreement with torch"),
           ("latency_ms", "latency ms"), ("predicted_latency_ms", "predicted ms"), ("latency_error", "prediction error"),
           ("energy_mj", "energy mJ (how known)"), ("peak_memory_bytes", "peak memory bytes"), ("bytes", "file bytes"))


def _table_rows(report: dict) -> list[list[str]]:
    rows = []
    for fmt in report["formats"]:
        for name in MODELS:
            r = report["models"][name][fmt]
            cells = [_cell(r, key) for key, _ in COLUMNS] if r["ok"] else [f"did not run: {r['error']}"] + \
                [""] * (len(COLUMNS) - 1)
            rows.append([fmt + (" (deployed)" if fmt == report["deployed_format"] else ""), name, *cells])
    return rows


def _cell(record: dict, key: str) -> str:
    if key == "accuracy_interval":
        return interval_text(record.get("accuracy_ci") or {}, 4, mean=False)
    if key == "energy_mj" and record.get("energy_mj") is not None:  # measured or modelled, always said
        return f"{fmt_value(record['energy_mj'])} ({record['energy_source'].split(':')[0]})"
    return fmt_value(record.get(key))


def users_sentence(report: dict) -> str:
    users = report["test_users"]
    few = " (one user: no interval)" if len(users) < 2 else ""
    return (f"{report['test_windows']} test windows of {len(users)} held-out users ({', '.join(users)}){few}; "
            "accuracy and macro-F1 are means over those users, each with a 95 % bootstrap interval over them, and "
            "the accuracy gate judges the per-user drop")


def retry_sentence(report: dict) -> str:
    """What the first try failed and what was retried, or '' when nothing was."""
    retry = report.get("retry")
    if not retry:
        return ""
    first = retry["first_try"]
    gate = next((g for g in first["gates"] if g["name"] == "accuracy_drop"), None)
    outcome = "it passed every gate and is the model deployed here" if retry["passed"] else \
        "it did not pass either"
    return (f"First try: the compressed model missed only the accuracy gate ({gate['detail'] if gate else ''}); "
            f"retried once with compress's fallback (one step back along the search's path, a looser aim): "
            f"{outcome}.")


def report_markdown(report: dict) -> str:
    verdict = "PASSED" if report["passed"] else f"FAILED ({', '.join(report['failed_gates'])})"
    retry = retry_sentence(report)
    lines = [f"# Validation on {report['device']} ({report['runtime']}, {report['threads']} thread(s)): {verdict}",
             "", f"{users_sentence(report)}; deployed format {report['deployed_format']}; data hash "
             f"`{report['data_hash'][:16]}`.", "", *([retry, ""] if retry else []),
             *markdown_table(("gate", "result", "value", "limit", "detail"), _gate_rows(report)), ""]
    lines += markdown_table(["format", "model", *(label for _, label in COLUMNS)], _table_rows(report))
    return "\n".join(lines) + "\n"


def _gate_rows(report: dict) -> list[list[str]]:
    return [[g["name"], _verdict(g["passed"]), fmt_value(g["value"]), fmt_value(g["limit"]), g["detail"]]
            for g in report["gates"]]


def report_html(report: dict) -> str:
    gates = [dict(zip(("name", "verdict", "value", "limit", "detail"), row)) for row in _gate_rows(report)]
    return render("validate.html.j2", report=report, users=users_sentence(report), retry=retry_sentence(report),
                  gates=gates, header=["format", "model", *(label for _, label in COLUMNS)], rows=_table_rows(report))


def flat_metrics(report: dict) -> dict:
    flat = {"passed": float(report["passed"]), "test_windows": float(report["test_windows"]),
            "retried": float(bool(report.get("retry")))}
    if report.get("retry"):  # the first try's accuracy drop, beside the deployed fallback's
        first = report["retry"]["first_try"]["models"]["compressed"].get(report["deployed_format"], {}).get(
            "accuracy_drop") or {}
        if first.get("mean") is not None:
            flat["first_try.accuracy_drop"] = float(first["mean"])
    for name in MODELS:
        for fmt, r in report["models"][name].items():
            for key, _ in COLUMNS:
                value = r.get(key)
                if isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value):
                    flat[f"{name}.{fmt}.{key}"] = float(value)
            for key in ("accuracy_ci", "accuracy_drop"):
                ci = r.get(key) or {}
                if ci.get("users", 0) >= 2:
                    flat |= {f"{name}.{fmt}.{key}_low": ci["low"], f"{name}.{fmt}.{key}_high": ci["high"]}
    for g in report["gates"]:
        if g["value"] is not None:
            flat[f"gate.{g['name']}"] = float(g["value"])
    return flat


def failed_gates_text(report: dict) -> str:
    """'name: detail (value vs limit); ...' for every failed gate."""
    return "; ".join(f"{g['name']}: {g['detail']}"
                     + (f" ({fmt_value(g['value'])} vs limit {fmt_value(g['limit'])})" if g["value"] is not None else "")
                     for g in report["gates"] if g["passed"] is False)
