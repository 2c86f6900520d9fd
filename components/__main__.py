"""Command line: `python -m components <stage>`, a loop over the stage table (components/stages.py).

The same functions Airflow, Kubeflow and DVC call, with the same folders
(`stages.Layout`); `--input`, `--output` and `--report` point one stage's
folders elsewhere.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path

from components import stages
from components.config import ConfigError, default_params_path, load_params


def _parser(table: tuple[stages.Stage, ...]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m components", description=__doc__,
                                epilog="stages: " + "; ".join(f"{s.name}: {s.doc}" for s in table))
    p.add_argument("command", choices=(*(s.name for s in table), "pipeline", "summary", "report", "mlflow-ui"),
                   help="a stage; `pipeline`: every stage, then the night's summary on the parent run; `summary`: "
                        "the summary of pipeline run --pipeline-key on its parent run, which it ends (a scheduler's "
                        "last step; exit status 1 when a device failed a stage); `report`: the last night's "
                        "per-device table (exit status 0 when every device passed, else 1)")
    p.add_argument("--params", default=None, help="params file (default: $IOT_COMPRESS_PARAMS or ./params.yaml)")
    p.add_argument("-p", "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one param, e.g. -p ingest.dataset=hhar_raw (repeatable)")
    p.add_argument("--device", action="append", default=[], metavar="NAME",
                   help="per-device stages: this device of the pool (repeatable; default: profile.devices, else all)")
    p.add_argument("--input", action="append", default=[], metavar="STAGE=DIR",
                   help="read that stage's output from DIR instead of the layout's folder (repeatable)")
    p.add_argument("--output", default=None, metavar="DIR", help="write the stage's data here")
    p.add_argument("--report", default=None, metavar="DIR", help="write the stage's reports here")
    p.add_argument("--run-key", default=None,
                   help="lay the folders out under pipeline.runs_dir/<run key>/ (as an Airflow run does)")
    p.add_argument("--pipeline-key", default=None, help="nest the MLflow run under this pipeline run")
    p.add_argument("--run", default=None, metavar="RUN_ID", help="report: this pipeline (parent) run, not the latest")
    p.add_argument("--port", type=int, default=5000, help="mlflow-ui: port on 127.0.0.1")
    return p


def main(argv: list[str] | None = None, table: tuple[stages.Stage, ...] | None = None) -> int:
    table = table or stages.STAGES
    args = _parser(table).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("alembic", "mlflow.store", "great_expectations"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        params_path = args.params or default_params_path()
        params = load_params(params_path, args.overrides)
        if args.command == "mlflow-ui":
            return _mlflow_ui(params, args.port)
        if args.command == "report":
            from components.tracking.night import report

            return report(params, args.run)
        layout = stages.Layout(params, args.run_key, table)
        if args.command == "pipeline":
            return _pipeline(params, layout, load_params(params_path))
        if args.command == "summary":
            return _close(params, layout, load_params(params_path), args.pipeline_key, args.device, args.report)
        return run_stage(stages.stage_named(args.command, table), params, layout, args.device,
                         _inputs(args.input), args.output, args.report, args.pipeline_key)
    except stages.final_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _inputs(items: list[str]) -> dict[str, Path]:
    pairs = [item.partition("=") for item in items]
    bad = [item for item, (name, eq, folder) in zip(items, pairs) if not (name and eq and folder)]
    if bad:
        raise ConfigError(f"--input takes STAGE=DIR, not {', '.join(bad)}")
    return {name: Path(folder) for name, _, folder in pairs}


def run_stage(stage: stages.Stage, params, layout: stages.Layout, device_names=(), inputs=None, output=None,
              report=None, pipeline_key=None) -> int:
    """Run `stage` (for each chosen device), printing each summary line.

    A device raising one of the stage's DEVICE_FAILURES is reported and
    skipped: it does not stop the others, but fails the command (exit status 1).
    """
    from components.devices.pool import chosen

    module = stages.module_of(stage)
    devices = [d.name for d in chosen(params, device_names)] if stage.per_device else [None]
    if (output or report) and len(devices) > 1:
        raise ConfigError("--output/--report need exactly one --device (each device has its own folders)")
    failures = getattr(module, "DEVICE_FAILURES", ())
    failed = []
    for device in devices:
        place = layout.place(stage.name, device)
        place = stages.Place(Path(output) if output else place.data, Path(report) if report else place.report)
        try:
            result = stages.execute(stage, params, device, layout=layout, inputs=inputs, out=place,
                                    pipeline_key=pipeline_key)
            print(module.summary(result))
        except failures as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed.append(device)
    if failed:
        print(f"error: {stage.name} failed on {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _pipeline(params, layout: stages.Layout, file_params) -> int:
    """Every stage in order, nested under one MLflow pipeline run (the embedded default), then the night's summary.

    The summary is written also when a stage failed (it says which and why); `file_params` is the params file
    without this command's `-p` overrides, so the parent run's params are just those overrides.
    """
    from components.tracking import runs as tracking
    from components.tracking import server

    key = f"local-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    code = 0
    try:
        for stage in layout.table:
            code = run_stage(stage, params, layout, pipeline_key=key)
            if code:
                break
    except (KeyboardInterrupt, tracking.Terminated):  # stopped, not broken: the stage's run ended KILLED too
        tracking.end_pipeline_run(params, key, "KILLED")
        raise
    except BaseException:
        _summarise(params, layout, key, file_params, quiet=True)
        tracking.end_pipeline_run(params, key, "FAILED")
        raise
    summarised = _summarise(params, layout, key, file_params, quiet=bool(code))
    tracking.end_pipeline_run(params, key, "FAILED" if code else "FINISHED")
    if code:
        return code
    print(f"pipeline {key}: done. Browse it with `make mlflow-ui` ({server.tracking_uri(params)})")
    return 0 if summarised else 1


def _summarise(params, layout: stages.Layout, key: str, file_params, quiet: bool) -> bool:
    """The night's summary on the parent run, and its table here; `quiet`: a stage failed already, whose error is
    the one that counts, so a summary that fails too is only logged."""
    from components.devices.pool import chosen
    from components.reports.night import table_text
    from components.tracking.night import summarise

    try:
        night = summarise(params, key, file_params=file_params, devices=[d.name for d in chosen(params)],
                          out=layout.summary(), table=layout.table)
    except Exception as exc:  # noqa: BLE001 - see the docstring
        if quiet:
            logging.getLogger(__name__).warning("the night's summary could not be written: %s", exc)
        else:
            print(f"error: the night's summary could not be written: {exc}", file=sys.stderr)
        return False
    print(table_text(night), end="")
    return True


def _close(params, layout: stages.Layout, file_params, key: str | None, devices: list[str], report: str | None
           ) -> int:
    """`summary`: the night's summary of pipeline run `key` (every device it covered, or `devices`), its table
    here; 1 when a device failed a stage, as the Airflow DAG's summary task fails."""
    from components.devices.pool import chosen
    from components.reports.night import table_text
    from components.tracking.night import close_night, stage_failures

    if not key:
        raise ConfigError("summary needs --pipeline-key: the pipeline run whose parent run gets the summary")
    devices = [d.name for d in chosen(params, devices)] if devices else None  # a typo is refused, not "failed"
    night = close_night(params, key, file_params=file_params, devices=devices,
                        out=Path(report) if report else layout.summary(), table=layout.table)
    print(table_text(night), end="")
    failed = stage_failures(night)
    if failed:
        print(f"error: devices that failed a stage: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def _mlflow_ui(params, port: int) -> int:
    from components.tracking import server

    uri = server.tracking_uri(params)
    print(f"MLflow UI for {uri} on http://127.0.0.1:{port}")
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port)]
    # no job-consumer processes: the pipeline submits no server-side jobs, and they slow the start
    return subprocess.call(cmd, env=os.environ | {"MLFLOW_DISABLE_TELEMETRY": "true",
                                                  "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})


if __name__ == "__main__":
    sys.exit(main())
