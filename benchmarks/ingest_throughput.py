"""Ingest throughput and peak memory on large HHAR-format CSVs.

Builds accelerometer and gyroscope files in the UCI layout by repeating the
real shared rows (raw/Phones_*.csv.gz, user a, nexus4_1) with shifted
timestamps, at two sizes, then runs the `ingest` stage on each in a fresh
process pinned to one core and prints:

- rows/s end to end (the whole stage in a fresh process: imports, MLflow,
  validation, writing; the MLflow store already exists, as on a nightly run),
- rows/s of the streaming part alone (read + validate + resample + window + write),
- peak RSS of the process,

so that throughput and whether memory grows with file size can be read off
one run. Usage:

    python benchmarks/ingest_throughput.py [--rows 5000000 10000000] [--chunk-rows N] [--keep DIR]

--rows are rows per sensor file; the stage reads both files, so the total is twice that.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from components.config import load_params
from components.data import hhar_csv

ROOT = Path(__file__).resolve().parents[1]

def build_csv(source: Path, target: Path, rows: int) -> None:
    """Repeat the real rows of `source`, shifting both timestamps so each copy follows the last."""
    base = next(hhar_csv.iter_blocks(source, 1 << 26))
    n = len(base)
    t_arrival = base["Arrival_Time"].to_numpy()
    t_creation = base["Creation_Time"].to_numpy().astype(np.int64)
    span_ms = int(t_arrival.max() - t_arrival.min()) + 1000
    columns = {c: pa.array(base[c].astype(str)) for c in ("User", "Model", "Device", "gt")}
    xyz = {c: pa.array(base[c].to_numpy()) for c in ("x", "y", "z")}
    with pacsv.CSVWriter(target, pa.schema([(c, pa.int64() if c in ("Index", "Arrival_Time", "Creation_Time")
                                               else pa.string() if c in columns else pa.float64())
                                              for c in hhar_csv.COLUMNS]),
                         write_options=pacsv.WriteOptions(quoting_style="none")) as writer:
        for copy in range((rows + n - 1) // n):
            take = min(n, rows - copy * n)
            shift = copy * span_ms
            batch = {
                "Index": pa.array(np.arange(copy * n, copy * n + take)),
                "Arrival_Time": pa.array(t_arrival[:take] + shift),
                "Creation_Time": pa.array(t_creation[:take] + shift * 1_000_000),
                **{c: a.slice(0, take) for c, a in xyz.items()},
                **{c: a.slice(0, take) for c, a in columns.items()},
            }
            writer.write(pa.record_batch([batch[c] for c in hhar_csv.COLUMNS], names=list(hhar_csv.COLUMNS)))


def run_once(work: Path, rows: int, params_path: Path, chunk_rows: int | None) -> dict:
    acc, gyro = work / f"acc_{rows}.csv", work / f"gyro_{rows}.csv"
    data_root = load_params(params_path).data_root()
    t = time.perf_counter()
    build_csv(data_root / "hhar/raw/Phones_accelerometer.csv.gz", acc, rows)
    build_csv(data_root / "hhar/raw/Phones_gyroscope.csv.gz", gyro, rows)
    print(f"  built 2 x {rows:,} rows ({(acc.stat().st_size + gyro.stat().st_size) / 1e6:.0f} MB) "
          f"in {time.perf_counter() - t:.1f} s", flush=True)
    overrides = [
        "ingest.dataset=hhar_raw", f"ingest.data_root={work}",
        f"ingest.hhar_raw.accelerometer_files=[{acc.name}]", f"ingest.hhar_raw.gyroscope_files=[{gyro.name}]",
        f"ingest.output_dir={work / 'out'}", f"ingest.report_dir={work / 'reports'}",
        f"pipeline.state_dir={work / 'state'}",
        "ingest.expectations.min_windows_per_class=0", "ingest.expectations.min_rows_per_class=0",
    ]
    if chunk_rows:
        overrides.append(f"ingest.hhar_raw.chunk_rows={chunk_rows}")
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               GX_ANALYTICS_ENABLED="false", MLFLOW_DISABLE_TELEMETRY="true")
    env.pop("MLFLOW_TRACKING_URI", None)
    one_core = min(os.sched_getaffinity(0))
    cmd = [sys.executable, "-m", "components", "ingest", "--params", str(params_path)]
    cmd += [a for o in overrides for a in ("-p", o)]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: os.sched_setaffinity(0, {one_core}))
    _, _, usage = os.wait4(proc.pid, 0)  # the child's own rusage: its peak RSS
    total_s = time.perf_counter() - started
    stderr = proc.stderr.read().decode()
    if proc.returncode not in (0, None) or "error:" in stderr:
        raise SystemExit(f"ingest failed:\n{stderr[-3000:]}")
    metrics = json.loads((work / "reports" / "metrics.json").read_text())
    timings = json.loads((work / "reports" / "timings.json").read_text())
    result = {"rows": 2 * rows, "windows": int(metrics["windows"]), "total_s": total_s,
              "stream_s": timings["stream_s"], "peak_rss_mb": usage.ru_maxrss / 1024}
    acc.unlink()
    gyro.unlink()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[5_000_000, 10_000_000], help="rows per sensor file")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--chunk-rows", type=int, default=None, help="override ingest.hhar_raw.chunk_rows")
    parser.add_argument("--keep", type=Path, default=None, help="work folder to keep (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        chunk = args.chunk_rows or load_params(args.params).ingest.hhar_raw.chunk_rows
        print(f"ingest throughput: one core ({os.cpu_count()} on the machine), chunk_rows={chunk:,}")
        print(f"{'rows':>12} {'windows':>8} {'total s':>8} {'stream s':>8} "
              f"{'rows/s e2e':>11} {'rows/s stream':>13} {'peak RSS MB':>11}")
        run_once(work, 20_000, args.params.resolve(), args.chunk_rows)  # warm-up: creates the MLflow store
        for rows in args.rows:
            r = run_once(work, rows, args.params.resolve(), args.chunk_rows)
            print(f"{r['rows']:>12,} {r['windows']:>8,} {r['total_s']:>8.1f} "
                  f"{r['stream_s']:>8.1f} {r['rows'] / r['total_s']:>11,.0f} {r['rows'] / r['stream_s']:>13,.0f} "
                  f"{r['peak_rss_mb']:>11.0f}", flush=True)


if __name__ == "__main__":
    main()
