"""Profiling overhead and repeatability per device, and where latency is not proportional to FLOPs.

For every timed device of the pool, profiles the same configurations twice
into fresh temporary logs (12 per layer kind + 8 whole models + the reference
model = 57 by default) and prints:

- overhead: profiling wall time / the sum of the timed inference runs, per
  run (aim: at most 1.5; the runs themselves are the physical limit);
- repeatability: the median over configurations of |run1 - run2| / mean
  (aim: at most 5 %), of the milliseconds and of the ratio to the reference
  model timed in the same rounds (devices/timing.py), over all
  configurations, per layer kind and over the whole models;
- noise: the median IQR / median within a run;
- the width sweeps of the first run: latency and FLOPs relative to the
  sweep's first width, to show where time is not proportional to FLOPs.

    python benchmarks/profile_overhead.py [--devices ort-1t tflite-1t] [-p profile.sampler.configs_per_kind=24]

Plots and tables of the first run are kept in --keep DIR if given.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

from components.config import load_params
from components.devices.pool import chosen
from components.stages import Place, execute

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", nargs="*", default=None, help="default: every timed device of the pool")
    parser.add_argument("-p", dest="overrides", action="append", default=[], help="section.key=value")
    parser.add_argument("--keep", type=Path, default=None, help="copy the first run's tables and plots here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="profile-bench-") as tmp:
        work = Path(tmp)
        base = ["profile.sampler.configs_per_kind=12", "profile.sampler.models=8",
                f"pipeline.state_dir={work / 'state'}", *args.overrides]
        params = load_params(ROOT / "params.yaml", base)
        timed = [d for d in chosen(params, args.devices) if d.runtime != "mcu"]
        print(f"{'device':<11} {'configs':>7} {'wall s':>7} {'timed s':>7} {'overhead':>8} {'rerun':>6} "
              f"{'repeat diff':>11} {'ratio diff':>10} {'IQR/med':>7} {'convert s':>9}")
        sweeps, by_kind = {}, {}
        for device in timed:
            runs = []
            for attempt in (1, 2):
                out = work / f"run{attempt}" / device.name
                result = execute("profile", params, device.name, out=Place(out, out / "report"))
                runs.append((result, pq.read_table(result.table_path).to_pylist()))
            (first, rows1), (second, rows2) = runs
            diff, ratio_diff = _repeat_diff(rows1, rows2), _repeat_diff(rows1, rows2, "ratio")
            m1, m2 = first.metrics, second.metrics
            convert_s = sum(r["convert_s"] or 0.0 for r in rows1)
            print(f"{device.name:<11} {m1['configs_ok']:>7} {m1['wall_s']:>7.1f} {m1['timed_s']:>7.1f} "
                  f"{m1['overhead_ratio']:>8.2f} {m2['overhead_ratio']:>6.2f} {diff:>11.1%} {ratio_diff:>10.1%} "
                  f"{m1['median_relative_iqr']:>7.1%} {convert_s:>9.1f}")
            sweeps[device.name] = rows1
            by_kind[device.name] = (rows1, rows2, m1.get("reference_ms"), m2.get("reference_ms"))
            if args.keep:
                target = args.keep / device.name
                shutil.rmtree(target, ignore_errors=True)
                shutil.copytree(work / "run1" / device.name / "report", target)
                shutil.copy(first.table_path, target / "profile.parquet")
        print()
        _print_by_kind(by_kind)
        print()
        for name, rows in sweeps.items():
            _print_sweeps(name, rows)


def _repeat_diff(rows1: list[dict], rows2: list[dict], column: str = "latency_ms", kind: str | None = None) -> float:
    """Median over the configurations (of `kind`, if given) of |run1 - run2| / mean of `column`."""
    def values(rows):
        return {r["config_id"]: r[column] for r in rows
                if r["status"] == "ok" and r.get(column) is not None and kind in (None, r["kind"])}

    first, second = values(rows1), values(rows2)
    diffs = [abs(v - second[k]) / ((v + second[k]) / 2) for k, v in first.items() if k in second]
    return statistics.median(diffs) if diffs else float("nan")


def _print_by_kind(by_kind: dict) -> None:
    """Repeat diff of milliseconds and of the ratio per layer kind and for whole models (the reference's row too)."""
    print(f"{'device':<11} {'kind':<7} {'configs':>7} {'ms diff':>8} {'ratio diff':>10} {'reference ms run1/run2':>23}")
    for name, (rows1, rows2, ref1, ref2) in by_kind.items():
        for kind in ("conv1d", "gru", "lstm", "linear", "model"):
            n = sum(1 for r in rows1 if r["kind"] == kind and r["status"] == "ok")
            refs = f"{ref1:.4f} / {ref2:.4f}" if ref1 and ref2 else "-"
            print(f"{name:<11} {kind:<7} {n:>7} {_repeat_diff(rows1, rows2, kind=kind):>8.1%} "
                  f"{_repeat_diff(rows1, rows2, 'ratio', kind):>10.1%} {refs:>23}")


def _print_sweeps(device: str, rows: list[dict]) -> None:
    for kind in ("conv1d", "gru", "lstm", "linear"):
        sweep = sorted((r for r in rows if r["kind"] == kind and r["sweep"] == "width" and r["status"] == "ok"),
                       key=lambda r: r["out_features"])
        if len(sweep) < 2:
            continue
        t0, f0 = sweep[0]["latency_ms"], sweep[0]["flops"]
        cells = " ".join(f"{r['out_features']}:{r['latency_ms']:.4f}ms({r['latency_ms'] / t0:.2f}x time,"
                         f"{r['flops'] / f0:.2f}x FLOPs)" for r in sweep)
        print(f"{device} {kind} sweep: {cells}")


if __name__ == "__main__":
    main()
