"""Ingest throughput and peak memory: UCI HAPT's raw recordings, and large HHAR-format CSVs.

`--dataset uci_hapt` (the default): the shared UCI HAPT RawData (24 users, 49
experiments, 884,457 rows per sensor), and copies of it with the users and
experiments renumbered (`--copies 1 4`: 1x and 4x the rows), each ingested by
the stage in a fresh process pinned to one core.

`--dataset hhar_raw`: builds accelerometer and gyroscope files in the UCI layout
by repeating the real shared rows (raw/Phones_*.csv.gz, user a, nexus4_1) with
shifted timestamps, at two sizes, then runs the `ingest` stage on each in a
fresh process pinned to one core.

Either way it prints:

- rows/s end to end (the whole stage in a fresh process: imports, MLflow,
  validation, writing; the MLflow store already exists, as on a nightly run),
- rows/s of the streaming part alone (read + validate + resample + window + write),
- peak RSS of the process,

so that throughput and whether memory grows with file size can be read off
one run. Usage:

    python benchmarks/ingest_throughput.py [--dataset uci_hapt] [--copies 1 4] [--keep DIR]
    python benchmarks/ingest_throughput.py --dataset hhar_raw [--rows 5000000 10000000] [--chunk-rows N]

--rows are rows per sensor file; the stage reads both files, so the total is twice that.
For uci_hapt, rows are counted per sensor file too, both sensors together.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
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


def build_hapt(source: Path, target: Path, copies: int) -> int:
    """RawData with `copies` copies of every experiment, users and experiments renumbered; rows per sensor."""
    target.mkdir(parents=True, exist_ok=True)
    users = max(int(re.search(r"user(\d+)", p.name).group(1)) for p in source.glob("acc_*.txt"))
    experiments = max(int(re.search(r"exp(\d+)", p.name).group(1)) for p in source.glob("acc_*.txt"))
    labels, rows = [], 0
    for c in range(copies):
        for line in (source / "labels.txt").read_text().splitlines():
            e, u, *rest = line.split()
            labels.append(" ".join([str(int(e) + c * experiments), str(int(u) + c * users), *rest]))
        for path in source.glob("*_exp*_user*.txt"):
            kind, e, u = re.match(r"(acc|gyro)_exp(\d+)_user(\d+)", path.stem).groups()
            name = f"{kind}_exp{int(e) + c * experiments:02d}_user{int(u) + c * users:02d}.txt"
            (target / name).symlink_to(path.resolve())
            rows += sum(1 for _ in open(path)) if kind == "acc" else 0
    (target / "labels.txt").write_text("\n".join(labels) + "\n")
    return rows


def run_once(work: Path, rows: int, params_path: Path, chunk_rows: int | None, dataset: str = "hhar_raw") -> dict:
    data_root = load_params(params_path).data_root()
    t = time.perf_counter()
    if dataset == "uci_hapt":
        raw = work / f"hapt_x{rows}"
        built = build_hapt(data_root / load_params(params_path).ingest.uci_hapt.dir, raw / "RawData", rows)
        print(f"  built {rows} cop{'y' if rows == 1 else 'ies'} of UCI HAPT: 2 x {built:,} rows "
              f"in {time.perf_counter() - t:.1f} s", flush=True)
        overrides = ["ingest.dataset=uci_hapt", f"ingest.data_root={raw}", "ingest.uci_hapt.dir=RawData"]
        cleanup, rows = [raw], built
    else:
        acc, gyro = work / f"acc_{rows}.csv", work / f"gyro_{rows}.csv"
        build_csv(data_root / "hhar/raw/Phones_accelerometer.csv.gz", acc, rows)
        build_csv(data_root / "hhar/raw/Phones_gyroscope.csv.gz", gyro, rows)
        print(f"  built 2 x {rows:,} rows ({(acc.stat().st_size + gyro.stat().st_size) / 1e6:.0f} MB) "
              f"in {time.perf_counter() - t:.1f} s", flush=True)
        overrides = ["ingest.dataset=hhar_raw", f"ingest.data_root={work}",
                     f"ingest.hhar_raw.accelerometer_files=[{acc.name}]",
                     f"ingest.hhar_raw.gyroscope_files=[{gyro.name}]",
                     "ingest.expectations.min_windows_per_class=0", "ingest.expectations.min_rows_per_class=0"]
        cleanup = [acc, gyro]
        if chunk_rows:
            overrides.append(f"ingest.hhar_raw.chunk_rows={chunk_rows}")
    overrides += [f"ingest.output_dir={work / 'out'}", f"ingest.report_dir={work / 'reports'}",
                  f"pipeline.state_dir={work / 'state'}"]
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
    for path in cleanup:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=("uci_hapt", "hhar_raw"), default="uci_hapt")
    parser.add_argument("--rows", type=int, nargs="+", default=[5_000_000, 10_000_000], help="hhar_raw: rows per sensor file")
    parser.add_argument("--copies", type=int, nargs="+", default=[1, 4], help="uci_hapt: copies of the shared RawData")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--chunk-rows", type=int, default=None, help="override ingest.hhar_raw.chunk_rows")
    parser.add_argument("--keep", type=Path, default=None, help="work folder to keep (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        chunk = args.chunk_rows or load_params(args.params).ingest.hhar_raw.chunk_rows
        what = "one experiment at a time" if args.dataset == "uci_hapt" else f"chunk_rows={chunk:,}"
        print(f"ingest throughput, {args.dataset}: one core ({os.cpu_count()} on the machine), {what}")
        print(f"{'rows':>12} {'windows':>8} {'total s':>8} {'stream s':>8} "
              f"{'rows/s e2e':>11} {'rows/s stream':>13} {'peak RSS MB':>11}")
        run_once(work, 20_000, args.params.resolve(), args.chunk_rows)  # warm-up: creates the MLflow store
        sizes = args.copies if args.dataset == "uci_hapt" else args.rows
        for rows in sizes:
            r = run_once(work, rows, args.params.resolve(), args.chunk_rows, args.dataset)
            print(f"{r['rows']:>12,} {r['windows']:>8,} {r['total_s']:>8.1f} "
                  f"{r['stream_s']:>8.1f} {r['rows'] / r['total_s']:>11,.0f} {r['rows'] / r['stream_s']:>13,.0f} "
                  f"{r['peak_rss_mb']:>11.0f}", flush=True)


if __name__ == "__main__":
    main()
