"""The nightly default's verdicts per device, side by side for two nights (e.g. before and after a change).

Reads each night's `summary.json` (what `python -m components pipeline` writes under
`reports/summary/`, the figures the parent MLflow run holds) and, where it is there beside it, each
device's `validate/<device>/report.json` (what the first try measured when the night retried a device
with compress's fallback). Prints one Markdown row per device and night: the verdict, the on-device
accuracy drop against the baseline paired user by user over the held-out users (mean and its 95 %
percentile-bootstrap interval over users; positive: a loss), the latency and size ratios, whether it
was registered.

    python benchmarks/nightly_verdicts.py NAME=REPORTS_DIR [NAME=REPORTS_DIR ...] [--keep DIR]

REPORTS_DIR is a night's reports folder (the one holding `summary/` and `validate/`). With --keep the
figures read are also written to DIR/<NAME>.json, and a folder of such files is read back with --rows.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def read_night(reports: Path) -> dict:
    """One night's figures per device, from its summary and (where there) validate's reports."""
    summary = json.loads((reports / "summary" / "summary.json").read_text())
    m = summary["metrics"]
    devices = [k[: -len(".passed")] for k in m if k.endswith(".passed")]
    night = {"key": summary.get("key"), "devices": {}}
    for d in devices:
        row = {k: m.get(f"{d}.{k}") for k in ("accuracy", "baseline_accuracy", "accuracy_drop", "accuracy_drop_low",
                                               "accuracy_drop_high", "latency_ratio", "size_ratio", "energy_ratio")}
        row["passed"], row["registered"] = bool(m.get(f"{d}.passed")), bool(m.get(f"{d}.registered"))
        report_file = reports / "validate" / d / "report.json"
        if report_file.exists():
            report = json.loads(report_file.read_text())
            row["failed_gates"] = report.get("failed_gates", [])
            row["form"] = report.get("deployed_format")
            row["first_try"] = _first_try(report)
        night["devices"][d] = row
    return night


def _first_try(report: dict) -> dict | None:
    """The accuracy drop of the model tried first, where the night retried with the fallback."""
    retry = report.get("retry")
    if not retry:
        return None
    figures = retry["first_try"]["models"]["compressed"].get(report["deployed_format"], {})
    drop = figures.get("accuracy_drop") or {}
    return {"accuracy_drop": drop.get("mean"), "accuracy_drop_low": drop.get("low"),
            "accuracy_drop_high": drop.get("high")}


def _points(row: dict) -> str:
    if row.get("accuracy_drop") is None:
        return "-"
    return (f"{100 * row['accuracy_drop']:+.2f} ({100 * row['accuracy_drop_low']:+.2f} to "
            f"{100 * row['accuracy_drop_high']:+.2f})")


def table(nights: dict[str, dict]) -> str:
    lines = ["| device | night | verdict | accuracy (baseline's) | accuracy drop, points (95 % CI over held-out users) "
             "| first try, where retried | deployed form | latency ratio | energy ratio | size ratio | registered |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    devices = list(dict.fromkeys(d for night in nights.values() for d in night["devices"]))
    for d in devices:
        for name, night in nights.items():
            row = night["devices"].get(d)
            if row is None:
                continue
            gates = row.get("failed_gates")
            verdict = "passed" if row["passed"] else "failed " + (", ".join(gates) if gates else "gates")
            first = _points(row["first_try"]) if row.get("first_try") else ""
            lines.append(f"| {d} | {name} | {verdict} | {_ratio(row['accuracy'])} ({_ratio(row['baseline_accuracy'])}) "
                         f"| {_points(row)} | {first} | {row.get('form') or '-'} | "
                         f"{_ratio(row['latency_ratio'])} | {_ratio(row.get('energy_ratio'))} | "
                         f"{_ratio(row['size_ratio'])} | "
                         f"{'yes' if row['registered'] else 'no'} |")
    totals = ", ".join(f"{name}: {sum(r['registered'] for r in n['devices'].values())} of {len(n['devices'])}"
                       for name, n in nights.items())
    return "\n".join(lines) + f"\n\nregistered: {totals}"


def _ratio(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("nights", nargs="*", metavar="NAME=REPORTS_DIR")
    parser.add_argument("--keep", type=Path, default=None, help="also write each night's figures to DIR/<NAME>.json")
    parser.add_argument("--rows", type=Path, default=None, help="print the table from the figures kept in DIR")
    args = parser.parse_args()
    nights: dict[str, dict] = {}
    if args.rows:
        nights = {p.stem: json.loads(p.read_text()) for p in sorted(args.rows.glob("*.json"))}
    for spec in args.nights:
        name, sep, folder = spec.partition("=")
        if not sep:
            parser.error(f"{spec}: expected NAME=REPORTS_DIR")
        nights[name] = read_night(Path(folder))
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            (args.keep / f"{name}.json").write_text(json.dumps(nights[name], indent=1) + "\n")
    if not nights:
        parser.error("no night given: NAME=REPORTS_DIR or --rows DIR")
    print(table(nights))


if __name__ == "__main__":
    main()
