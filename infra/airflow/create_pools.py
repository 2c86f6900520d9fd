"""Create the Airflow pools the device pool file names: one slot each, so timings never share hardware.

Run with the Airflow environment of the deployment: `python infra/airflow/create_pools.py`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from components.drivers.airflow_tasks import device_routes  # noqa: E402


def main() -> int:
    airflow = str(Path(sys.executable).parent / "airflow")
    routes = device_routes()
    for pool in sorted({route["pool"] for route in routes}):
        devices = [r["device"] for r in routes if r["pool"] == pool]
        subprocess.run([airflow, "pools", "set", pool, "1", f"timing slot for {', '.join(devices)}"], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
