"""The baseline against the compressed model on every device and format: accuracy, latency, size, prediction error.

Runs the `validate` stage on every device of the pool with the pipeline's
own baseline and compressed models (run `make run` first), in a work folder
of its own (exports, reports, MLflow store). Each timed device's latency is
predicted twice: by the pipeline's latency model (the small default sample
of `make run`) and by one profiled and fitted here on a larger sample
(--configs-per-kind, --models; kept in the work folder, so a rerun re-times
nothing). Each device is validated --rounds times (the timings of one round
are taken together, round-robin; rounds show how much the machine's speed
drifts between runs). Prints one row per device, format and model (latency:
the median over rounds and its spread), then the aims:

- int8 TFLite of the compressed model within 1 point of float accuracy;
- measured latency within 10 % of predicted on every timed device (deployed
  formats: the latency models are fitted on each device's float profile).

    python benchmarks/on_device.py [--devices ort-1t tflite-1t] [--configs-per-kind 60] [--models 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

from components import stages, validate
from components.config import load_params
from components.devices.pool import chosen
from components.latency.model import load as load_latency_model
from components.models import load as load_model
from components.stages import Place, execute

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", nargs="*", default=None, help="devices of the pool (default: all)")
    parser.add_argument("--configs-per-kind", type=int, default=60, help="profile sample for the larger latency model")
    parser.add_argument("--models", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="validations per device")
    parser.add_argument("--work", type=Path, default=ROOT / ".state" / "benchmarks" / "on_device")
    parser.add_argument("-p", dest="overrides", action="append", default=[], help="section.key=value")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    work = args.work.resolve()
    pipeline = load_params(ROOT / "params.yaml", args.overrides)
    params = load_params(ROOT / "params.yaml", [
        *args.overrides, f"pipeline.state_dir={work / 'state'}",
        f"profile.output_dir={work / 'profile'}", f"profile.report_dir={work / 'r/profile'}",
        f"profile.sampler.configs_per_kind={args.configs_per_kind}", f"profile.sampler.models={args.models}",
        f"fit_latency.output_dir={work / 'fit_latency'}", f"fit_latency.report_dir={work / 'r/fit_latency'}"])
    rows = []
    for device in chosen(params, args.devices or None):
        larger = None
        if device.mcu is None:
            started = time.perf_counter()
            execute("profile", params, device.name)
            larger = load_latency_model(execute("fit_latency", params, device.name).model_path)
            print(f"{device.name}: larger latency model profiled and fitted in {time.perf_counter() - started:.0f} s",
                  flush=True)
        rounds = []
        for k in range(args.rounds):
            started = time.perf_counter()
            result = execute("validate", params, device.name,
                             inputs={"fit_latency": stages.Layout(pipeline).place("fit_latency", device.name).data},
                             out=Place(work / "validate" / device.name, work / "r/validate" / device.name))
            print(f"{device.name}: validation {k + 1} of {args.rounds} in {time.perf_counter() - started:.0f} s ("
                  f"{'passed' if result.passed else 'FAILED ' + ', '.join(result.report['failed_gates'])})",
                  flush=True)
            rounds.append(_rows(result.report, work / "validate" / device.name, larger))
        rows += _merge(rounds)
    (work / "results.json").write_text(json.dumps(rows, indent=2))
    _print(rows)
    print(f"\nrows: {work / 'results.json'}")


def _rows(report: dict, folder: Path, larger) -> list[dict]:
    rows = []
    for name in validate.MODELS:
        spec = load_model(folder / report["model_dirs"][name]).spec  # relative to validate's data folder
        for fmt in report["formats"]:
            r = report["models"][name][fmt]
            row = {"device": report["device"], "format": fmt, "model": name, "ok": r["ok"], "error": r["error"],
                   "deployed": fmt == report["deployed_format"], "passed": report["passed"]}
            if r["ok"]:
                row |= {k: r.get(k) for k in ("accuracy", "macro_f1", "agreement", "latency_ms", "latency_method",
                                              "predicted_latency_ms", "latency_error", "bytes", "peak_memory_bytes")}
                if larger is not None and r["latency_method"] == "timed":
                    predicted = larger.predict_model(spec)
                    row |= {"predicted_larger_ms": predicted,
                            "latency_error_larger": abs(r["latency_ms"] - predicted) / r["latency_ms"]}
            rows.append(row)
    return rows


def _merge(rounds: list[list[dict]]) -> list[dict]:
    """One row per device, format and model: the median measured latency over rounds, its spread, the errors."""
    merged = []
    for versions in zip(*rounds):
        row = dict(versions[0])
        if row["ok"] and row["latency_method"] == "timed":
            measured = sorted(v["latency_ms"] for v in versions)
            row["latency_ms"] = statistics.median(measured)
            row["latency_rounds_ms"] = measured
            row["latency_spread"] = (measured[-1] - measured[0]) / row["latency_ms"]
            for predicted, error in (("predicted_latency_ms", "latency_error"),
                                     ("predicted_larger_ms", "latency_error_larger")):
                if row.get(predicted) is not None:
                    row[error] = abs(row["latency_ms"] - row[predicted]) / row["latency_ms"]
        merged.append(row)
    return merged


def _cell(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _print(rows: list[dict]) -> None:
    print("\n| device | format | model | accuracy | macro-F1 | agreement | latency ms | spread | "
          "predicted ms (pipeline) | error | predicted ms (larger) | error | file KB | peak memory MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if not r["ok"]:
            print(f"| {r['device']} | {r['format']} | {r['model']} | did not run: {r['error']} |")
            continue
        kind = "" if r["latency_method"] == "timed" else " (computed)"
        print(f"| {r['device']} | {r['format']}{' *' if r['deployed'] else ''} | {r['model']} | "
              f"{r['accuracy']:.3f} | {r['macro_f1']:.3f} | {r['agreement']:.3f} | {r['latency_ms']:.4g}{kind} | "
              f"{_cell(r.get('latency_spread'), '.0%')} | "
              f"{_cell(r['predicted_latency_ms'], '.4g')} | {_cell(r['latency_error'], '.1%')} | "
              f"{_cell(r.get('predicted_larger_ms'), '.4g')} | {_cell(r.get('latency_error_larger'), '.1%')} | "
              f"{r['bytes'] / 1024:.0f} | {_cell(r['peak_memory_bytes'] and r['peak_memory_bytes'] / 2**20, '.1f')} |")
    print("\n(* the device's deployed format)")
    by = {(r["device"], r["format"], r["model"]): r for r in rows if r["ok"]}
    for (device, fmt, model), r in by.items():
        if fmt == "tflite_int8" and (device, "tflite", model) in by:
            drop = by[(device, "tflite", model)]["accuracy"] - r["accuracy"]
            print(f"aim: int8 within 1 point of float, {device} {model}: {drop * 100:+.1f} points "
                  f"({'met' if abs(drop) <= 0.01 else 'NOT met'})")
    for key, label in (("latency_error", "pipeline's latency model"), ("latency_error_larger", "larger latency model")):
        errors = {(r["device"], r["format"], r["model"]): r[key] for r in rows
                  if r["ok"] and r["deployed"] and r.get(key) is not None and r["latency_method"] == "timed"}
        within = sum(1 for e in errors.values() if e <= 0.10)
        print(f"aim: measured within 10 % of predicted ({label}): {within} of {len(errors)} timed rows "
              "(deployed formats); worst "
              + (", ".join(f"{d} {f} {m} {e:.0%}" for (d, f, m), e in sorted(errors.items(), key=lambda kv: -kv[1])[:3])
                 or "-"))


if __name__ == "__main__":
    main()
