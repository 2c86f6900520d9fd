"""The night's summary: one verdict per device, its headline numbers, and the settings the night changed.

Pure logic on plain dicts (validate's `report.json`, compress's `metrics.json`,
the registry's answer, the failed stage and its error), so that it is tested
without a store; `components/tracking/night.py` reads those from MLflow and
writes what this module makes onto the pipeline's parent run, and
`summary_plots.py` draws it.

A device *passed* when every stage ran and its compressed model passed every
gate; failing gates are a result, a failed stage is said with its error.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from components.decisions.gates import deployed_pair
from components.reports.tables import interval_text, markdown_table, render
from components.tracking.runs import flatten

# The headline numbers of a device, logged on the parent run as `<device>.<key>` so nights sort and chart alike.
HEADLINE = ("accuracy", "accuracy_low", "accuracy_high", "baseline_accuracy", "accuracy_drop", "accuracy_drop_low",
            "accuracy_drop_high", "latency_ratio", "size_ratio", "energy_mj", "energy_ratio", "passed", "registered",
            "champion_version", "champion_accuracy")


@dataclass(frozen=True)
class DeviceNight:
    """What one night did for one device."""

    device: str
    report: dict | None = None  # validate's report.json (None: validate did not finish)
    compress: dict | None = None  # compress's metrics.json (the baselines at the same budget: `methods`)
    registered: dict | None = None  # {name, version, aliases, decision} of the version this night's model is
    champion: dict | None = None  # {version, accuracy, latency_ms} of the model's champion after the night
    failed_stage: str | None = None  # the first stage that failed or did not run for this device
    error: str = ""  # what stopped it (the stage run's `error` tag)
    model_name: str = ""

    @property
    def passed(self) -> bool:
        return self.failed_stage is None and bool(self.report and self.report["passed"])

    @property
    def failed_gates(self) -> list[str]:
        return list(self.report["failed_gates"]) if self.report else []

    @property
    def verdict(self) -> str:
        if self.failed_stage:
            return f"FAILED in {self.failed_stage}"
        if self.report is None:
            return "NO RESULT"
        retried = " (after a retry with the fallback)" if self.report.get("retry") else ""
        return ("PASSED" if self.report["passed"] else f"FAILED gates {', '.join(self.failed_gates)}") + retried


@dataclass(frozen=True)
class Night:
    key: str  # the pipeline run key (the Airflow run id, or the CLI's local-<time>-<hex>)
    run_id: str  # the parent run
    devices: tuple[DeviceNight, ...]
    params_changed: dict[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.devices) and all(d.passed for d in self.devices)


def _deployed(report: dict) -> tuple[dict, dict]:
    return deployed_pair(report)


def headline(d: DeviceNight) -> dict[str, float | None]:
    """Accuracies (deployed format, means over held-out users) with intervals, ratios to the baseline, outcome."""
    out: dict[str, float | None] = dict.fromkeys(HEADLINE)
    out["passed"] = float(d.passed)
    out["registered"] = float(d.registered is not None)
    if d.champion:
        out["champion_version"] = _number(d.champion.get("version"))
        out["champion_accuracy"] = _number(d.champion.get("accuracy"))
    if not d.report:
        return out
    base, comp = _deployed(d.report)
    if comp.get("ok"):
        ci = comp.get("accuracy_ci") or {}
        out |= {"accuracy": comp.get("accuracy"), "accuracy_low": ci.get("low"), "accuracy_high": ci.get("high")}
    if base.get("ok"):
        out["baseline_accuracy"] = base.get("accuracy")
    drop = comp.get("accuracy_drop") or {}
    out |= {"accuracy_drop": drop.get("mean"), "accuracy_drop_low": drop.get("low"),
            "accuracy_drop_high": drop.get("high")}
    if comp.get("ok") and base.get("ok"):
        out["latency_ratio"] = _ratio(comp.get("latency_ms"), base.get("latency_ms"))
        out["size_ratio"] = _ratio(comp.get("bytes"), base.get("bytes"))
        out["energy_mj"] = comp.get("energy_mj")
        out["energy_ratio"] = comp.get("energy_ratio")
    return out


def _ratio(a, b) -> float | None:
    return a / b if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else None


def _number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def night_metrics(night: Night) -> dict[str, float]:
    """`<device>.<headline key>` for every number known, plus how many devices ran and passed."""
    metrics = {"devices": float(len(night.devices)), "devices_passed": float(sum(d.passed for d in night.devices))}
    for d in night.devices:
        for key, value in headline(d).items():
            if _number(value) is not None:
                metrics[f"{d.device}.{key}"] = float(value)
    return metrics


def params_diff(night: Mapping, file: Mapping) -> dict[str, str]:
    """The flattened settings whose value in `night` differs from the params file's (as MLflow params: strings)."""
    ours, theirs = flatten(night), flatten(file)
    missing = object()
    return {key: _param_text(ours.get(key)) for key in sorted(set(ours) | set(theirs))
            if ours.get(key, missing) != theirs.get(key, missing)}


def _param_text(value) -> str:
    return json.dumps(list(value)) if isinstance(value, (list, tuple)) else str(value)


# ---- words -------------------------------------------------------------------------------------------------------


def _acc(value, ci_low=None, ci_high=None) -> str:
    both = ci_low is not None and ci_high is not None
    return interval_text({"mean": value, "low": ci_low, "high": ci_high, "users": 2 if both else 1}, 3, short=True)


def _num(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}g}"


def registered_text(d: DeviceNight) -> str:
    if d.registered:
        aliases = " ".join(f"@{a}" for a in d.registered.get("aliases", ()))
        return f"{d.registered['name']} v{d.registered['version']} {aliases}".strip()
    if d.failed_stage:
        return "not registered"
    if d.report and not d.report["passed"]:
        return "not registered (failed gates)"
    return "not registered"


def gate_lines(d: DeviceNight) -> list[str]:
    """One line per failed gate: its name, detail and value against its limit."""
    lines = []
    for g in (d.report or {}).get("gates", ()):
        if g["passed"] is False:
            versus = f" ({_num(g['value'], 4)} vs limit {_num(g['limit'], 4)})" if g["value"] is not None else ""
            lines.append(f"{g['name']}: {g['detail']}{versus}")
    return lines


def device_paragraph(d: DeviceNight) -> list[str]:
    """The device's verdict as Markdown lines (plain text but for the bold first line and the bullets): why it
    failed, or what passed and where its model went."""
    lines = [f"**{d.device}: {d.verdict}**"]
    if d.failed_stage:
        lines.append(f"- {d.failed_stage}: {d.error or 'no run recorded (it did not start; see the log)'}")
    if d.report:
        h = headline(d)
        lines.append(f"- accuracy {_acc(h['accuracy'], h['accuracy_low'], h['accuracy_high'])} vs the baseline's "
                     f"{_acc(h['baseline_accuracy'])} ({d.report['deployed_format']}, means over "
                     f"{len(d.report.get('test_users', ()))} held-out users, 95 % CI); drop per user "
                     f"{_acc(h['accuracy_drop'], h['accuracy_drop_low'], h['accuracy_drop_high'])}")
        lines.append(f"- latency ratio {_num(h['latency_ratio'])} ({_latency_method(d.report)}), size ratio "
                     f"{_num(h['size_ratio'])}, {_energy_text(d.report, h)}")
        failed = gate_lines(d)
        if failed:
            lines += [f"- gate {line}" for line in failed]
        else:
            lines.append("- every gate passed: " + ", ".join(g["name"] for g in d.report["gates"]
                                                             if g["passed"] is not None))
    if d.registered:
        lines.append(f"- registered {registered_text(d)}: {d.registered.get('decision') or ''}".rstrip(": "))
    elif not d.failed_stage:
        lines.append(f"- {registered_text(d)}")
    return lines


def _energy_text(report: dict, h: dict) -> str:
    """Energy per inference with its ratio and how it is known, or why there is none."""
    comp = _deployed(report)[1]
    if h["energy_mj"] is None:
        return f"energy: {comp.get('energy_source') or 'none'}"
    return (f"energy {_num(h['energy_mj'], 4)} mJ per inference, ratio {_num(h['energy_ratio'])} "
            f"({comp['energy_source'].split(':')[0]})")


def _latency_method(report: dict) -> str:
    return _deployed(report)[1].get("latency_method", "timed")


def _code_aliases(text: str) -> str:
    """`@champion` as code: MLflow's Markdown would link a bare @word to a GitHub user's page."""
    return re.sub(r"(?<![`\w])@(\w+)", r"`@\1`", text)


TABLE = ("device", "verdict", "accuracy (95 % CI)", "baseline", "drop per user", "latency ratio", "size ratio",
         "energy mJ", "registered")


def table_rows(night: Night) -> list[list[str]]:
    rows = []
    for d in night.devices:
        h = headline(d)
        rows.append([d.device, d.verdict, _acc(h["accuracy"], h["accuracy_low"], h["accuracy_high"]),
                     _acc(h["baseline_accuracy"]), _acc(h["accuracy_drop"]), _num(h["latency_ratio"]),
                     _num(h["size_ratio"]), _num(h["energy_mj"], 4), registered_text(d)])
    return rows


def title(night: Night) -> str:
    passed = sum(d.passed for d in night.devices)
    return f"Night {night.key}: {passed} of {len(night.devices)} devices passed"


def description_markdown(night: Night, artifact: str = "summary/summary.html", limit: int = 7500) -> str:
    """The parent run's description (`mlflow.note.content`): the table, each device's verdict, what was changed."""
    lines = [f"### {title(night)}"]
    for d in night.devices:  # the verdicts first: the UI shows the description's first lines until "Show more"
        lines += ["", *map(_code_aliases, device_paragraph(d))]
    lines += ["", *map(_code_aliases, markdown_table(TABLE, table_rows(night)))]
    changed = ", ".join(f"`{k}` = {v}" for k, v in night.params_changed.items()) or "none"
    lines += ["", f"Settings that differ from the params file: {changed}.",
              f"Every device side by side, the Pareto view and the trend: `{artifact}`."]
    text = "\n".join(lines) + "\n"
    return text if len(text) <= limit else text[: limit - 40] + "\n\n(cut short: see the artifact)\n"


def table_text(night: Night) -> str:
    """The per-device table for a terminal: fixed-width columns, then each failure's reason on its own line."""
    rows = [list(TABLE), *table_rows(night)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(TABLE))]
    lines = [title(night), ""] + ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    for d in night.devices:
        reasons = ([f"{d.failed_stage}: {d.error or 'no run recorded'}"] if d.failed_stage else []) + gate_lines(d)
        lines += [f"  {d.device}: {reason}" for reason in reasons]
    return "\n".join(lines) + "\n"


# ---- the Pareto view and the trend (numbers for summary_plots) -----------------------------------------------------


def pareto_points(d: DeviceNight) -> list[dict]:
    """(method, latency, size and energy ratios, accuracy, interval, measured) for the baseline, the compressed model
    as validated on the device, and compress's methods (DeepIoT, and the l1 / uniform baselines at the same
    budget: predicted ratios, torch test accuracy)."""
    points = []
    if d.report:
        base, comp = _deployed(d.report)
        h = headline(d)
        if base.get("ok"):
            ci = base.get("accuracy_ci") or {}
            points.append(_point("baseline", 1.0, 1.0, base["accuracy"], ci.get("low"), ci.get("high"), True,
                                 1.0 if base.get("energy_mj") else None))
        if comp.get("ok") and h["latency_ratio"] is not None:
            points.append(_point("compressed", h["latency_ratio"], h["size_ratio"], h["accuracy"],
                                 h["accuracy_low"], h["accuracy_high"], True, h["energy_ratio"]))
    methods = (d.compress or {}).get("methods") or {}
    base = methods.get("baseline") or {}
    for name, m in methods.items():
        if name == "baseline":
            continue
        latency = m.get("measured_ratio") or _ratio(m.get("predicted_latency_ms"), base.get("predicted_latency_ms"))
        if latency is None and (d.compress or {}).get("cost") == "latency":
            latency = m.get("relative_cost")
        ci = m.get("test_accuracy_ci") or {}
        points.append(_point(name, latency, _ratio(m.get("params"), base.get("params")), m.get("test_accuracy"),
                             ci.get("low"), ci.get("high"), False, _ratio(m.get("energy_mj"), base.get("energy_mj"))))
    return points


def _point(method, latency_ratio, size_ratio, accuracy, low, high, on_device: bool, energy_ratio=None) -> dict:
    return {"method": method, "latency_ratio": latency_ratio, "size_ratio": size_ratio, "energy_ratio": energy_ratio,
            "accuracy": accuracy, "low": low, "high": high, "on_device": on_device}


TREND_KEYS = ("accuracy", "champion_accuracy", "latency_ratio", "passed", "champion_version", "from_registry")


def trend(nights: Sequence[tuple[float, Mapping[str, float]]], devices: Sequence[str], last: int | None = None
          ) -> dict[str, list[dict]]:
    """Per device, oldest first: each night's (start time in ms, its metrics) as the device's figures, the `last`
    nights that name the device at most. A night read back from the registry has `from_registry` 1."""
    out: dict[str, list[dict]] = {d: [] for d in devices}
    for started_ms, metrics in sorted(nights, key=lambda n: n[0]):
        for device in devices:
            row = {key: metrics.get(f"{device}.{key}") for key in TREND_KEYS}
            if any(row[key] is not None for key in TREND_KEYS[:-1]):
                out[device].append({"time_ms": started_ms, **row})
    return {device: rows[-last:] if last else rows for device, rows in out.items()}


# ---- HTML ----------------------------------------------------------------------------------------------------------

def summary_html(night: Night, images: Mapping[str, str]) -> str:
    """One self-contained page: the table, the gates of every device, the figures (`images`: caption -> data URI)."""
    names = list(dict.fromkeys(g["name"] for d in night.devices for g in (d.report or {}).get("gates", ())))
    details = []
    for d in night.devices:
        first, *rest = device_paragraph(d)
        details.append({"css": "PASSED" if d.passed else "FAILED", "head": first.strip("*"),
                        "lines": [line.removeprefix("- ") for line in rest]})
    return render("night.html.j2", title=title(night), header=TABLE, rows=table_rows(night),
                  changed=list(night.params_changed.items()), gate_names=names,
                  gate_rows=[{"name": d.device, "verdict": d.verdict, "cells": _gate_cells(d, names)}
                             for d in night.devices],
                  images=images, details=details)


def _gate_cells(d: DeviceNight, names: list[str]) -> list[dict]:
    """Each gate's cell for one device: its result, then value / limit; none where validate did not report."""
    gates = {g["name"]: g for g in (d.report or {}).get("gates", ())}
    if not gates:
        return []
    cells = []
    for name in names:
        g = gates.get(name)
        if g is None:
            cells.append({"css": "na", "text": "-", "detail": ""})
            continue
        word, css = ("n/a", "na") if g["passed"] is None else (("PASS",) * 2 if g["passed"] else ("FAIL",) * 2)
        value = f" {_num(g['value'], 3)} / {_num(g['limit'], 3)}" if g["value"] is not None else ""
        cells.append({"css": css, "text": f"{word}{value}", "detail": g["detail"]})
    return cells
