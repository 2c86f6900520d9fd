"""Latency-model accuracy per device and layer kind, against the baselines, and the speed of prediction.

For every timed device of the pool (or --devices): profile a large sample of
configurations into a work folder (resumable: a rerun times only what is
missing), run the `fit_latency` stage on it, and print

- per layer kind, on held-out configurations: MAPE and the share within
  +-10 % for the tree, linear regression on FLOPs, gradient boosting and a
  random forest (all fitted on the same rows);
- whole models held out one at a time: the same figures;
- how fast the saved model predicts: `predict(layer)` per call,
  `predict_layers` per layer, `predict_model` per DeepSense model.

Aims (issue 5): tree MAPE <= 5 % per kind, >= 95 % of whole models within
+-10 %, the tree at least as accurate as gradient boosting.

    python benchmarks/latency_model.py [--devices ort-1t tflite-1t] [--configs-per-kind 120] [--models 30]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from components.config import load_params
from components.devices.pool import chosen
from components.latency.fit import PREDICTORS
from components.latency.model import load
from components.models import spec_from_params
from components.stages import execute

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", nargs="*", default=None, help="default: every timed device of the pool")
    parser.add_argument("--configs-per-kind", type=int, default=120)
    parser.add_argument("--models", type=int, default=30)
    parser.add_argument("--work", type=Path, default=ROOT / ".state" / "benchmarks" / "latency_model",
                        help="profiles, models and reports (kept: a rerun re-times nothing)")
    parser.add_argument("-p", dest="overrides", action="append", default=[], help="section.key=value")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    work = args.work.resolve()
    params = load_params(ROOT / "params.yaml", [
        f"profile.sampler.configs_per_kind={args.configs_per_kind}", f"profile.sampler.models={args.models}",
        f"profile.output_dir={work / 'profile'}", f"profile.report_dir={work / 'reports' / 'profile'}",
        f"fit_latency.output_dir={work / 'fit_latency'}", f"fit_latency.report_dir={work / 'reports' / 'fit'}",
        f"pipeline.state_dir={work / 'state'}", *args.overrides])
    timed = [d for d in chosen(params, args.devices) if d.runtime != "mcu"]
    results = {}
    for device in timed:
        started = time.perf_counter()
        execute("profile", params, device.name)
        profiled_s = time.perf_counter() - started
        result = execute("fit_latency", params, device.name)
        results[device.name] = result
        print(f"{device.name}: profiled in {profiled_s:.0f} s (resumed), fitted and evaluated in "
              f"{result.metrics['fit_s']:.1f} s", flush=True)
    print()
    _accuracy_table(results)
    print()
    _speed_table(params, results)


def _accuracy_table(results: dict) -> None:
    print("| device | held out | rows | " + " | ".join(f"{p} MAPE % (within ±10 %)" for p in PREDICTORS) + " |")
    print("|" + "---|" * (3 + len(PREDICTORS)))
    for device, result in results.items():
        m = result.metrics
        groups = [("configurations", kind, by) for kind, by in m.get("configurations", {}).items()]
        groups += [("whole_models", "whole models", m["whole_models"]["model"])] if "whole_models" in m else []
        for _, label, by in groups:
            best = min(by[p]["mape_pct"] for p in PREDICTORS)
            cells = [(f"**{by[p]['mape_pct']:.1f}**" if by[p]["mape_pct"] == best else f"{by[p]['mape_pct']:.1f}")
                     + f" ({by[p]['within_pct']:.0f} %)" for p in PREDICTORS]
            rows = by["tree"]["rows"]
            print(f"| {device} | {label} | {rows} | " + " | ".join(cells) + " |")
        if m.get("fallback_kinds"):
            print(f"| {device} | FALLBACK for {', '.join(m['fallback_kinds'])} | | | | | |")


def _speed_table(params, results: dict) -> None:
    from components.profiling.sampler import sampler_params

    spec = spec_from_params("deepsense", params.train, tuple(sampler_params(params).model_input_shape),
                            tuple(f"c{i}" for i in range(6)))
    layers = list(spec.layers)
    print("| device | predict(layer) µs/call | predict_layers µs/layer | predict_model µs/model "
          f"({len(layers)} layers) |")
    print("|---|---|---|---|")
    for device, result in results.items():
        model = load(result.model_path)
        single = _per_call(lambda: [model.predict(layer) for layer in layers], len(layers))
        batch = _per_call(lambda: model.predict_layers(layers * 50), 50 * len(layers))
        whole = _per_call(lambda: model.predict_model(spec), 1)
        print(f"| {device} | {single:.1f} | {batch:.1f} | {whole:.1f} |")


def _per_call(fn, calls_per_run: int, seconds: float = 0.5) -> float:
    """Microseconds per call: the best of several timed batches (the machine is shared)."""
    fn()
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        for _ in range(20):
            fn()
        best = min(best, (time.perf_counter() - started) / (20 * calls_per_run))
    return best * 1e6


if __name__ == "__main__":
    main()
