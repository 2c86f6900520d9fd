"""Wall time of one night on the same settings: embedded CLI, `airflow dags test`, and Kubeflow's local runner.

Each driver runs the whole pipeline (ingest -> register, the night's summary
last) on the end-to-end tier's quick settings (tests/conftest.py
`quick_params`: HHAR_SA, a short training, a small search) for the same
devices, each in its own scratch folder with its own SQLite MLflow store, one
after another, `--rounds` times in rotation so the ratios compare runs made
under the same load. `airflow db migrate` is set-up, not timed.

    python benchmarks/kfp_local.py [--devices ort-1t cortex-m4] [--rounds 1] [--data-root DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def environment(folder: Path, params: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env |= {"IOT_COMPRESS_PARAMS": str(params), "IOT_COMPRESS_DEADLINE_H": "0", "AIRFLOW_HOME": str(folder / "airflow"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), str(ROOT / "infra" / "airflow"),
                                                        env.get("PYTHONPATH")]))}
    for var in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "KERAS_HOME"):
        env[var] = str(folder / var.lower())
    return env


def scratch(folder: Path, data_root: Path, devices: list[str]) -> tuple[Path, dict[str, str]]:
    import yaml

    from tests.conftest import quick_params

    folder.mkdir(parents=True)
    params = quick_params(folder, data_root)
    raw = yaml.safe_load(params.read_text())
    raw["profile"]["devices"] = devices
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    return params, environment(folder, params)


def run(driver: str, folder: Path, data_root: Path, devices: list[str], limit_s: float) -> float:
    params, env = scratch(folder, data_root, devices)
    airflow = str(Path(sys.executable).parent / "airflow")
    commands = {
        "python -m components pipeline": [sys.executable, "-m", "components", "pipeline"],
        "airflow dags test": [airflow, "dags", "test", "compress_nightly"],
        "kfp local (SubprocessRunner)": [sys.executable, str(ROOT / "infra" / "kfp" / "pipeline.py"), "--local"],
    }
    if driver == "airflow dags test":
        subprocess.run([airflow, "db", "migrate"], cwd=folder, env=env, capture_output=True, timeout=600, check=True)
    started = time.perf_counter()
    out = subprocess.run(commands[driver], cwd=folder, env=env, capture_output=True, text=True, timeout=limit_s)
    wall = time.perf_counter() - started
    failed = out.returncode != 0 or (driver == "airflow dags test" and "state=success" not in out.stdout + out.stderr)
    if failed:
        raise SystemExit(f"{driver} failed (exit {out.returncode}):\n{(out.stdout + out.stderr)[-3000:]}")
    return wall


DRIVERS = ("python -m components pipeline", "airflow dags test", "kfp local (SubprocessRunner)")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--devices", nargs="+", default=["ort-1t", "cortex-m4"])
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--data-root", type=Path, default=None, help="default: the checkout's params.yaml data root")
    p.add_argument("--limit-s", type=float, default=3600)
    args = p.parse_args()
    from components.config import load_params

    data_root = (args.data_root or load_params(ROOT / "params.yaml").data_root()).resolve()
    walls: dict[str, list[float]] = {d: [] for d in DRIVERS}
    with tempfile.TemporaryDirectory(prefix="kfp-bench-") as tmp:
        for r in range(args.rounds):
            for i, driver in enumerate(DRIVERS):
                walls[driver].append(run(driver, Path(tmp) / f"r{r}-{i}", data_root, args.devices, args.limit_s))
                print(f"round {r + 1}: {driver}: {walls[driver][-1]:.0f} s", flush=True)
    base = statistics.median(walls[DRIVERS[0]])
    print(f"\ndevices {', '.join(args.devices)}; {args.rounds} round(s); median wall time, and its ratio to the CLI's")
    print("| driver | wall s (median) | runs | / CLI |\n|---|---|---|---|")
    for driver, times in walls.items():
        print(f"| {driver} | {statistics.median(times):.0f} | {', '.join(f'{t:.0f}' for t in times)} | "
              f"{statistics.median(times) / base:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
