"""Command line: `python -m components <stage>`; the same functions Airflow and DVC call."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import uuid
from datetime import datetime, timezone

from components.config import ConfigError, default_params_path, load_params
from components.tracking import TrackingUnavailable
from components.data.errors import DataError
from components.devices.base import BackendError
from components.models.spec import ModelConfigError
from components.validation import ValidationFailed

STAGES = ("ingest", "train", "profile", "fit_latency", "compress", "validate", "register")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m components", description=__doc__)
    p.add_argument("command", choices=(*STAGES, "pipeline", "mlflow-ui"))
    p.add_argument("--params", default=None, help="params file (default: $IOT_COMPRESS_PARAMS or ./params.yaml)")
    p.add_argument("-p", "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one param, e.g. -p ingest.dataset=hhar_raw (repeatable)")
    p.add_argument("--output-dir", default=None, help="write the stage's output here instead of the params path")
    p.add_argument("--input-dir", default=None,
                   help="read the previous stage's output from here (train: ingest's; fit_latency: one device's "
                        "profile folder)")
    p.add_argument("--pipeline-key", default=None, help="nest the MLflow run under this pipeline run")
    p.add_argument("--device", action="append", default=[], metavar="NAME",
                   help="profile, fit_latency, compress, validate, register: this device of the pool (repeatable; default: profile.devices, "
                        "else all)")
    p.add_argument("--port", type=int, default=5000, help="mlflow-ui: port on 127.0.0.1")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("alembic", "mlflow.store", "great_expectations"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        params = load_params(args.params or default_params_path(), args.overrides)
        if args.command == "mlflow-ui":
            return _mlflow_ui(params, args.port)
        if args.command == "pipeline":
            return _pipeline(params)
        return _run_stage(args.command, params, args.output_dir, args.pipeline_key, args.input_dir, args.device)
    except (ConfigError, DataError, ValidationFailed, ModelConfigError, BackendError, TrackingUnavailable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run_stage(stage: str, params, output_dir=None, pipeline_key=None, input_dir=None, device_names=()) -> int:
    if stage == "ingest":
        from components import ingest

        result = ingest.run(params, output_dir, pipeline_key)
        print(f"ingest: {result.windows} windows -> {result.output_dir} (MLflow run {result.run_id})")
    elif stage == "train":
        from components import train

        from components.evaluation import interval_text

        result = train.run(params, output_dir, input_dir, pipeline_key)
        print(f"train: accuracy {interval_text(result.accuracy_ci)} over held-out users, macro-F1 "
              f"{result.macro_f1:.3f} -> {result.output_dir} (MLflow run {result.run_id})")
    elif stage == "profile":
        return _profile(params, output_dir, pipeline_key, device_names)
    elif stage == "fit_latency":
        return _fit_latency(params, output_dir, pipeline_key, input_dir, device_names)
    elif stage == "compress":
        return _compress(params, output_dir, pipeline_key, device_names)
    elif stage == "validate":
        return _validate(params, output_dir, pipeline_key, device_names)
    elif stage == "register":
        return _register(params, pipeline_key, device_names)
    return 0


def _each_device(params, device_names, one_folder: bool, what: str, run_one, failure=()) -> int:
    """`run_one(device name)` for each chosen device, printing its summary line.

    A device raising `failure` is reported and skipped: it does not stop the
    others, but fails the command (exit status 1).
    """
    from components.devices.pool import chosen

    devices = chosen(params, device_names)
    if one_folder and len(devices) > 1:
        raise ConfigError("--output-dir/--input-dir need exactly one --device (each device has its own folders)")
    failed = []
    for device in devices:
        try:
            print(run_one(device.name))
        except failure as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed.append(device.name)
    if failed:
        print(f"error: {what} failed on {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _profile(params, output_dir, pipeline_key, device_names) -> int:
    from components import profile

    def one(name: str) -> str:
        result = profile.run(params, name, output_dir, pipeline_key=pipeline_key)
        m = result.metrics
        noise = (f", median IQR/median {m['median_relative_iqr']:.1%}" if "median_relative_iqr" in m
                 else ", computed from the graph, not timed")
        return (f"profile {name}: {m['configs_ok']}/{m['configs']} configurations ({m['method']}{noise}) "
                f"-> {result.table_path} (MLflow run {result.run_id})")

    return _each_device(params, device_names, bool(output_dir), "profiling", one, profile.ProfileFailed)


def _fit_latency(params, output_dir, pipeline_key, input_dir, device_names) -> int:
    from components import fit_latency

    def one(name: str) -> str:
        result = fit_latency.run(params, name, input_dir, output_dir, pipeline_key=pipeline_key)
        return f"fit_latency {name}: {_fit_summary(result.metrics)} -> {result.model_path} (MLflow run {result.run_id})"

    return _each_device(params, device_names, bool(output_dir or input_dir), "fitting a latency model", one,
                        fit_latency.LatencyDataError)


def _compress(params, output_dir, pipeline_key, device_names) -> int:
    """A budget not met is a result (said plainly in the line), not a failure."""
    from components import compress

    def one(name: str) -> str:
        result = compress.run(params, name, output_dir=output_dir, pipeline_key=pipeline_key)
        m, d = result.metrics, result.metrics["methods"]["deepiot"]
        return (f"compress {name}: {'budget met' if m['budget_met'] else 'BUDGET NOT MET'} "
                f"({m['cost']} {compress.reached(m)} of the baseline's, budget {m['budget']}); "
                f"{d['params']} parameters, test accuracy {d['test_accuracy']:.3f} ({m['accuracy_change']:+.3f}) "
                f"-> {result.model_dir} (MLflow run {result.run_id})")

    return _each_device(params, device_names, bool(output_dir), "compression", one)



def _validate(params, output_dir, pipeline_key, device_names) -> int:
    """Failing gates are a result (said in the line, and `register` leaves the model out), not an error."""
    from components import validate

    def one(name: str) -> str:
        result = validate.run(params, name, output_dir=output_dir, pipeline_key=pipeline_key)
        r = result.report
        comp = r["models"]["compressed"][r["deployed_format"]]
        figures = (f"accuracy {comp['accuracy']:.3f}, {comp['latency_ms']:.4g} ms, {comp['bytes']} bytes"
                   if comp["ok"] else f"did not run: {comp['error']}")
        verdict = "every gate passed" if r["passed"] else f"FAILED {', '.join(r['failed_gates'])}"
        return (f"validate {name}: {verdict} ({r['deployed_format']}: {figures}) -> {result.report_path} "
                f"(MLflow run {result.run_id})")

    return _each_device(params, device_names, bool(output_dir), "validation", one)


def _register(params, pipeline_key, device_names) -> int:
    from components import register
    from components.export import ChecksumMismatch

    def one(name: str) -> str:
        outcome = register.run(params, name, pipeline_key=pipeline_key)
        if not outcome.registered:
            return f"register {name}: {outcome.reason}"
        return (f"register {name}: {outcome.name} version {outcome.version}, alias(es) "
                f"{', '.join(outcome.aliases)} ({outcome.reason})")

    return _each_device(params, device_names, False, "registration", one,
                        (register.RegistryUnavailable, ChecksumMismatch))


def _fit_summary(m: dict) -> str:
    if m["method"] == "analytic":
        return "analytic model passed through"
    mape = ", ".join(f"{kind} {by['tree']['mape_pct']:.1f} %" for kind, by in m.get("configurations", {}).items())
    text = f"held-out MAPE {mape}" if mape else "no held-out rows"
    whole = m.get("whole_models", {}).get("model")
    if whole:
        text += f"; whole models {whole['tree']['mape_pct']:.1f} % ({whole['tree']['within_pct']:.0f} % within band)"
    if m["fallback_kinds"]:
        text += f"; FALLBACK for {', '.join(m['fallback_kinds'])}"
    return text


def _pipeline(params) -> int:
    """Every stage in order, nested under one MLflow pipeline run (the embedded default)."""
    from components import tracking

    key = f"local-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    try:
        for stage in STAGES:
            code = _run_stage(stage, params, pipeline_key=key)
            if code:
                tracking.end_pipeline_run(params, key, "FAILED")
                return code
    except BaseException:
        tracking.end_pipeline_run(params, key, "FAILED")
        raise
    tracking.end_pipeline_run(params, key)
    print(f"pipeline {key}: done. Browse it with `make mlflow-ui` ({tracking.tracking_uri(params)})")
    return 0


def _mlflow_ui(params, port: int) -> int:
    from components import tracking

    uri = tracking.tracking_uri(params)
    print(f"MLflow UI for {uri} on http://127.0.0.1:{port}")
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port)]
    # no job-consumer processes: the pipeline submits no server-side jobs, and they slow the start
    return subprocess.call(cmd, env=os.environ | {"MLFLOW_DISABLE_TELEMETRY": "true",
                                                  "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})


if __name__ == "__main__":
    sys.exit(main())
