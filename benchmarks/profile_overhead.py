"""Profiling overhead and repeatability per device, and where latency is not proportional to FLOPs.

For every timed device of the pool, profiles the same configurations twice
into fresh temporary logs (12 per layer kind + 2 whole models = 50 by
default) and prints:

- overhead: profiling wall time / the sum of the timed inference runs, per
  run (aim: at most 1.5; the runs themselves are the physical limit);
- repeatability: the median over configurations of |run1 - run2| / mean
  (aim: at most 5 %);
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

from components import profile
from components.config import load_params

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
        base = ["profile.sampler.configs_per_kind=12", "profile.sampler.models=2",
                f"pipeline.state_dir={work / 'state'}", *args.overrides]
        params = load_params(ROOT / "params.yaml", base)
        chosen = [d for d in profile.devices(params, args.devices) if d.runtime != "mcu"]
        print(f"{'device':<11} {'configs':>7} {'wall s':>7} {'timed s':>7} {'overhead':>8} {'rerun':>6} "
              f"{'repeat diff':>11} {'IQR/med':>7} {'convert s':>9}")
        sweeps = {}
        for device in chosen:
            runs = []
            for attempt in (1, 2):
                out = work / f"run{attempt}" / device.name
                result = profile.run(params, device.name, out, out / "report")
                runs.append((result, pq.read_table(result.table_path).to_pylist()))
            (first, rows1), (second, rows2) = runs
            diff = _repeat_diff(rows1, rows2)
            m1, m2 = first.metrics, second.metrics
            convert_s = sum(r["convert_s"] or 0.0 for r in rows1)
            print(f"{device.name:<11} {m1['configs_ok']:>7} {m1['wall_s']:>7.1f} {m1['timed_s']:>7.1f} "
                  f"{m1['overhead_ratio']:>8.2f} {m2['overhead_ratio']:>6.2f} {diff:>11.1%} "
                  f"{m1['median_relative_iqr']:>7.1%} {convert_s:>9.1f}")
            sweeps[device.name] = rows1
            if args.keep:
                target = args.keep / device.name
                shutil.rmtree(target, ignore_errors=True)
                shutil.copytree(work / "run1" / device.name / "report", target)
                shutil.copy(first.table_path, target / "profile.parquet")
        print()
        for name, rows in sweeps.items():
            _print_sweeps(name, rows)


def _repeat_diff(rows1: list[dict], rows2: list[dict]) -> float:
    second = {r["config_id"]: r["latency_ms"] for r in rows2 if r["status"] == "ok"}
    diffs = [abs(r["latency_ms"] - second[r["config_id"]]) / ((r["latency_ms"] + second[r["config_id"]]) / 2)
             for r in rows1 if r["status"] == "ok" and r["config_id"] in second]
    return statistics.median(diffs) if diffs else float("nan")


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
