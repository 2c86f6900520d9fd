"""DeepIoT, FastDeepIoT, L1 pruning and uniform scaling on HHAR_SA, leave one user out, timed on ONNX Runtime.

For every shared HHAR_SA user (or --users): train the DeepSense baseline on
the other users (the `train` stage with that user held out), then run the
`compress` stage twice on it:

- DeepIoT: parameter cost at --params-budget, with L1-norm pruning and
  uniform width scaling at the same budget and the same fine-tuning;
- FastDeepIoT: the device's fitted latency model as the cost, at
  --latency-budget (predicted time relative to the baseline's).

The five models of the fold (baseline and four compressed) are then timed
together, round-robin, on the device (one-thread ONNX Runtime by default)
with `profile`'s protocol, in one run so their ratios are comparable. The
timed graphs are built from each model's description with the profiler's
seeded weights: dense float latency depends on the shapes, not the values.

Prints, per fold and method, and the mean over folds: parameters kept, test
accuracy on the held-out user and its change against the baseline (points),
predicted and measured latency relative to the baseline, and the wall time
of each compression run. The latency model is profiled and fitted first, in
the work folder (kept: a rerun re-times nothing it already has, and reuses
each fold's trained baseline).

    python benchmarks/compression.py [--users a b] [--params-budget 0.05] [--latency-budget 0.2] [--steps 600]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

from components import compress, fit_latency, ingest, models, profile, train
from components.config import load_params
from components.devices.base import get_backend
from components.latency.model import load as load_latency_model
from components.profiling.items import Item
from components.profiling.runner import TimedProfiler
from components.pruning.costs import LatencyCost, resized_spec
from components.train import load_windows

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("deepiot", "fastdeepiot", "l1", "uniform")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", nargs="*", default=None, help="held-out users (default: every user)")
    parser.add_argument("--device", default="ort-1t", help="timed device of the pool (default: ort-1t)")
    parser.add_argument("--params-budget", type=float, default=0.05)
    parser.add_argument("--latency-budget", type=float, default=0.2)
    parser.add_argument("--steps", type=int, default=600, help="compress.search.max_steps")
    parser.add_argument("--configs-per-kind", type=int, default=60, help="profile sample for the latency model")
    parser.add_argument("--models", type=int, default=10)
    parser.add_argument("--work", type=Path, default=ROOT / ".state" / "benchmarks" / "compression")
    parser.add_argument("-p", dest="overrides", action="append", default=[], help="section.key=value")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    work = args.work.resolve()
    overrides = [
        "ingest.dataset=hhar_sa", f"ingest.output_dir={work / 'ingest'}", f"ingest.report_dir={work / 'r/ingest'}",
        f"profile.output_dir={work / 'profile'}", f"profile.report_dir={work / 'r/profile'}",
        f"profile.sampler.configs_per_kind={args.configs_per_kind}", f"profile.sampler.models={args.models}",
        f"fit_latency.output_dir={work / 'fit_latency'}", f"fit_latency.report_dir={work / 'r/fit_latency'}",
        f"pipeline.state_dir={work / 'state'}", f"compress.search.max_steps={args.steps}",
        f"compress.budget.params={args.params_budget}", f"compress.budget.latency={args.latency_budget}",
        *args.overrides]
    params = load_params(ROOT / "params.yaml", overrides)
    (device,) = profile.devices(params, [args.device])
    ingest.run(params)
    started = time.perf_counter()
    profile.run(params, device.name)
    fitted = fit_latency.run(params, device.name)
    print(f"{device.name}: latency model profiled and fitted in {time.perf_counter() - started:.0f} s "
          f"({fitted.model_path})", flush=True)
    users = args.users or sorted(set(load_windows(work / "ingest").meta["user"].astype(str)))
    rows = []
    for user in users:
        rows += _fold(overrides, device, user, work, fitted.model_path.parent)
        _print_rows([r for r in rows if r["user"] == user], header=user == users[0])
    print()
    _print_summary(rows, args)
    (work / "results.json").write_text(json.dumps(rows, indent=2))
    print(f"\nper-fold rows: {work / 'results.json'}")


def _fold(overrides: list[str], device, user: str, work: Path, latency_dir: Path) -> list[dict]:
    fold = work / "folds" / user

    def fold_params(*extra: str):
        return load_params(ROOT / "params.yaml", [
            *overrides, f"train.test_users=[{user}]", f"train.output_dir={fold / 'train'}",
            f"train.report_dir={fold / 'r/train'}", "train.evaluation=split", *extra])

    params = fold_params()
    trained = fold / "train" / "train_s.json"
    if trained.exists():  # kept from an earlier run of the benchmark: the same seeded training
        train_s = json.loads(trained.read_text())["train_s"]
    else:
        started = time.perf_counter()
        train.run(params)
        train_s = time.perf_counter() - started
        trained.write_text(json.dumps({"train_s": train_s}))
    baseline = models.load(fold / "train" / "model")
    runs = {
        "deepiot": fold_params("compress.cost=params", "compress.baselines=[l1, uniform]"),
        "fastdeepiot": fold_params("compress.cost=latency", "compress.baselines=[]"),
    }
    metrics = {}
    for name, q in runs.items():
        result = compress.run(q, device.name, baseline_dir=fold / "train" / "model", ingest_dir=work / "ingest",
                              latency_dir=latency_dir, output_dir=fold / name, report_dir=fold / f"r/{name}")
        metrics[name] = result.metrics
    methods = {"baseline": metrics["deepiot"]["methods"]["baseline"],
               "deepiot": metrics["deepiot"]["methods"]["deepiot"],
               "fastdeepiot": metrics["fastdeepiot"]["methods"]["deepiot"],
               "l1": metrics["deepiot"]["methods"]["l1"], "uniform": metrics["deepiot"]["methods"]["uniform"]}
    specs = {name: resized_spec(baseline.spec, m["widths"]) for name, m in methods.items()}
    measured = _time(params, device, specs, fold / "timing")
    cost = LatencyCost(baseline.spec, load_latency_model(latency_dir / "latency_model.json"), device.name)
    base = methods["baseline"]
    rows = []
    for name, m in methods.items():
        run = "fastdeepiot" if name == "fastdeepiot" else "deepiot"
        rows.append({
            "user": user, "method": name, "params": m["params"], "params_kept": m["params"] / base["params"],
            "test_accuracy": m["test_accuracy"], "accuracy_change": m["test_accuracy"] - base["test_accuracy"],
            "predicted_ms": cost.value(specs[name]), "predicted_rel": cost.relative(specs[name]),
            "measured_ms": measured[name], "measured_rel": measured[name] / measured["baseline"],
            "budget_met": None if name == "baseline" else metrics[run]["budget_met"],
            "wall_s": train_s if name == "baseline" else metrics[run]["wall_s"],
            "widths": m["widths"]})
    return rows


def _time(params, device, specs: dict, work: Path) -> dict[str, float]:
    """Median latency (ms) of each description on the device, timed round-robin in one worker."""
    backend = get_backend(device.runtime)
    items = {name: Item(model=spec) for name, spec in specs.items()}
    profiler = TimedProfiler(device, backend, params.profile, work, backend.version())
    rows = {row["config_id"]: row for row in profiler.rows(list(items.values()))}
    out = {}
    for name, item in items.items():
        row = rows[item.key]
        if row["status"] != "ok":
            raise RuntimeError(f"timing {name} on {device.name} failed at {row['failed_step']}: {row['error']}")
        out[name] = row["latency_ms"]
    return out


def _print_rows(rows: list[dict], header: bool) -> None:
    if header:
        print(f"{'user':>4} {'method':>12} {'params':>7} {'kept %':>7} {'test acc':>8} {'change':>7} "
              f"{'pred rel':>8} {'meas ms':>8} {'meas rel':>8} {'met':>5} {'wall s':>7}")
    for r in rows:
        met = "" if r["budget_met"] is None else ("yes" if r["budget_met"] else "NO")
        print(f"{r['user']:>4} {r['method']:>12} {r['params']:>7} {100 * r['params_kept']:>7.1f} "
              f"{r['test_accuracy']:>8.3f} {100 * r['accuracy_change']:>+7.1f} {r['predicted_rel']:>8.3f} "
              f"{r['measured_ms']:>8.3f} {r['measured_rel']:>8.3f} {met:>5} {r['wall_s']:>7.1f}", flush=True)


def _print_summary(rows: list[dict], args) -> None:
    mean = {}
    print(f"mean over {len({r['user'] for r in rows})} held-out users (params budget {args.params_budget}, "
          f"latency budget {args.latency_budget}, {args.steps} search steps):")
    print("| method | params kept % | test accuracy | change (points) | predicted latency (rel) "
          "| measured latency ms | measured (rel) | budget met | wall s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in ("baseline", *METHODS):
        chosen = [r for r in rows if r["method"] == name]
        m = {k: statistics.mean(r[k] for r in chosen) for k in
             ("params_kept", "test_accuracy", "accuracy_change", "predicted_rel", "measured_ms", "measured_rel",
              "wall_s")}
        met = "" if name == "baseline" else f"{sum(bool(r['budget_met']) for r in chosen)}/{len(chosen)}"
        mean[name] = m
        print(f"| {name} | {100 * m['params_kept']:.1f} | {m['test_accuracy']:.3f} | "
              f"{100 * m['accuracy_change']:+.1f} | {m['predicted_rel']:.3f} | {m['measured_ms']:.3f} | "
              f"{m['measured_rel']:.3f} | {met} | {m['wall_s']:.0f} |")
    d, f = mean["deepiot"], mean["fastdeepiot"]
    print("\naims (issue 6):")
    print(f"- DeepIoT keeps <= 5 % of parameters within 1 point: {100 * d['params_kept']:.1f} %, "
          f"{100 * d['accuracy_change']:+.1f} points")
    print(f"- measured latency <= 0.2x the baseline's: DeepIoT {d['measured_rel']:.3f}x, "
          f"FastDeepIoT {f['measured_rel']:.3f}x")
    print(f"- L1 clearly worse at the same budget: L1 {100 * mean['l1']['accuracy_change']:+.1f} points, uniform "
          f"{100 * mean['uniform']['accuracy_change']:+.1f}, DeepIoT {100 * d['accuracy_change']:+.1f}")
    print(f"- FastDeepIoT >= 30 % faster than DeepIoT at equal accuracy: measured time "
          f"{100 * (1 - f['measured_ms'] / d['measured_ms']):+.0f} % less, accuracy "
          f"{100 * (f['test_accuracy'] - d['test_accuracy']):+.1f} points against DeepIoT")


if __name__ == "__main__":
    main()
