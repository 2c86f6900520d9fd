"""One tracking call through `components.tracking.runs`, in its own process, reported as one JSON line.

    python -m tests.deployment.tracking_probe PARAMS upload FILE
    python -m tests.deployment.tracking_probe PARAMS download ARTIFACT_URI DIR

A separate process, so MLflow's global tracking URI and the retry settings
tracking/server.py puts in the environment never leak into the test session; the
test starts and stops services around it and reads what happened.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    from components.config import load_params
    from components.tracking import runs as tracking

    params_path, action, *rest = argv
    params = load_params(Path(params_path))
    result: dict = {"action": action}
    start = time.monotonic()
    try:
        if action == "upload":
            with tracking.stage_run(params, "s3_outage") as run:
                result["run_id"] = run.run_id
                result["artifact_uri"] = f"{run.run.info.artifact_uri}/probe/{Path(rest[0]).name}"
                start = time.monotonic()  # the upload alone
                run.log_artifact(Path(rest[0]), "probe")
        else:
            result["path"] = str(tracking.download_artifacts(params, rest[0], Path(rest[1])))
        result["ok"] = True
    except Exception as exc:
        result.update(ok=False, type=type(exc).__name__, error=str(exc))
    result["elapsed_s"] = round(time.monotonic() - start, 2)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
