"""DeepIoT, FastDeepIoT, L1 pruning and uniform scaling, k-fold over users, timed on the devices as ratios.

For each data set (default: uci_har and uci_hapt): ingest it, profile and fit
every device's latency model (--devices, default ort-1t and tflite-1t), deal
the users into `ingest.split.folds` folds and, for each fold (--folds, default
all), train the DeepSense baseline with that fold's users held out, then run
the `compress` stage:

- DeepIoT: parameter cost at --params-budget, with L1-norm pruning and
  uniform width scaling at the same budget and the same fine-tuning;
- FastDeepIoT: each device's latency model as the cost, at --latency-budget
  (with the stage's refit rounds and measured selection on that device).

Every model of the fold is then timed on every device *together with the
baseline, in the same rounds* (`profile`'s protocol and workers, the
baseline as the reference): each figure is a ratio to the baseline measured
in the same phase of the machine, so a slow phase cancels. The timed graphs
are built from each model's description with seeded weights: dense float
latency depends on the shapes, not on the values.

Accuracy is the mean over held-out users (every user of the set is held out
exactly once over the folds) with its 95 % percentile-bootstrap interval
over users; the change against the baseline is paired, user by user. The
latency model's accuracy on compressed candidates comes from the stage's own
measurements: structures profiled in a refit round were predicted *before*
the refit (out of sample), and the candidates of the measured selection.

FastDeepIoT's model is also weighed in its runtime's int8 form (compress's
"pruned, then quantized" step: ONNX Runtime QDQ, TFLite full-integer, run on
the validation users and timed against the baseline's float file); the form
compress deploys is scored on the held-out users from its exported file, and
the "deployed form" table gives its measured latency and energy ratios and
its paired change, per device, with the issue's aims beside them.

Prints per fold and a summary per data set; writes every row to
<work>/results.json. Work folders are kept: a rerun reuses ingested data,
profiles, trained baselines and finished compress runs.

    python benchmarks/compression.py [--datasets uci_har uci_hapt] [--folds 0 1] [--devices ort-1t tflite-1t]
        [--params-budget 0.05] [--latency-budget 0.2] [--steps 600] [-p section.key=value]
    python benchmarks/compression.py --rows results.json --latency-budget 0.15   # summary of saved rows
    python benchmarks/compression.py --datasets uci_hapt --folds 0 1 2 --matched 0.7   # + the matched comparison

--matched F answers "is latency steering faster than size steering at the
same accuracy?" directly: per fold and device, FastDeepIoT is run again with
its budget set to F x DeepIoT's *measured* ratio on that device, then the
three (baseline, DeepIoT, this run) are timed together; the accuracy change
against DeepIoT is paired user by user. The aim (>= 30 % less time within
0.5 point) holds where F <= 0.7 keeps the change within -0.5 point.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np

from components import compress, models
from components.config import load_params
from components.data.windows import load_windows
from components.devices.base import get_backend
from components.devices.pool import chosen
from components.profiling.items import Item
from components.profiling.runner import TimedProfiler
from components.pruning.costs import resized_spec
from components.stages import Place, execute
from components.stats.intervals import mean_ci, paired_ci

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="*", default=["uci_har", "uci_hapt"])
    parser.add_argument("--folds", nargs="*", type=int, default=None, help="default: every fold of users")
    parser.add_argument("--devices", nargs="*", default=["ort-1t", "tflite-1t"])
    parser.add_argument("--params-budget", type=float, default=0.05)
    parser.add_argument("--latency-budget", type=float, default=0.2)
    parser.add_argument("--steps", type=int, default=600, help="compress.search.max_steps")
    parser.add_argument("--configs-per-kind", type=int, default=60, help="profile sample for each latency model")
    parser.add_argument("--models", type=int, default=16, help="whole models in the profile sample")
    parser.add_argument("--work", type=Path, default=ROOT / ".state" / "benchmarks" / "compression")
    parser.add_argument("-p", dest="overrides", action="append", default=[], help="section.key=value")
    parser.add_argument("--matched", type=float, default=None,
                        help="also run FastDeepIoT at this factor x DeepIoT's measured ratio, per fold and device")
    parser.add_argument("--rows", type=Path, default=None,
                        help="print the summary of rows saved by an earlier run (results.json) and stop")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.rows is not None:
        saved = json.loads(args.rows.read_text())
        for dataset in dict.fromkeys(r["dataset"] for r in saved):
            summarise([r for r in saved if r["dataset"] == dataset], args)
        return
    rows: list[dict] = []
    for dataset in args.datasets:
        rows += run_dataset(dataset, args)
        summarise([r for r in rows if r["dataset"] == dataset], args)
    out = args.work.resolve() / "results.json"
    out.write_text(json.dumps(rows, indent=2))
    print(f"\nevery row: {out}")


def run_dataset(dataset: str, args) -> list[dict]:
    work = args.work.resolve() / dataset
    overrides = [
        f"ingest.dataset={dataset}", f"ingest.output_dir={work / 'ingest'}", f"ingest.report_dir={work / 'r/ingest'}",
        f"profile.output_dir={work / 'profile'}", f"profile.report_dir={work / 'r/profile'}",
        f"profile.sampler.configs_per_kind={args.configs_per_kind}", f"profile.sampler.models={args.models}",
        f"fit_latency.output_dir={work / 'fit_latency'}", f"fit_latency.report_dir={work / 'r/fit_latency'}",
        f"pipeline.state_dir={work / 'state'}", f"compress.search.max_steps={args.steps}",
        f"compress.budget.params={args.params_budget}", f"compress.budget.latency={args.latency_budget}",
        "train.evaluation=split", *args.overrides]
    params = load_params(ROOT / "params.yaml", overrides)
    if not (work / "ingest" / "windows.parquet").exists():
        execute("ingest", params)
    meta = load_windows(work / "ingest").meta
    fold_users = {int(f): sorted(set(meta.loc[meta["fold"] == f, "user"].astype(str))) for f in set(meta["fold"])
                  if f >= 0}
    devices = chosen(params, args.devices)
    for device in devices:
        started = time.perf_counter()
        execute("profile", params, device.name)
        fitted = execute("fit_latency", params, device.name)
        whole = fitted.metrics.get("whole_models", {}).get("model", {}).get("tree", {})
        print(f"{dataset} {device.name}: latency model profiled and fitted in {time.perf_counter() - started:.0f} s; "
              f"whole models held out: {whole.get('within_pct', float('nan')):.0f} % within +-10 %, "
              f"MAPE {whole.get('mape_pct', float('nan')):.1f} %", flush=True)
    rows = []
    for fold in args.folds if args.folds is not None else sorted(fold_users):
        fold_rows = run_fold(dataset, fold, fold_users[fold], overrides, devices, work)
        print_rows(fold_rows, header=not rows)
        rows += fold_rows
        if args.matched is not None:
            rows += run_matched(dataset, fold, fold_rows, overrides, devices, work, args.matched)
    return rows


def run_fold(dataset: str, fold: int, users: list[str], overrides: list[str], devices, work: Path) -> list[dict]:
    here = work / "folds" / f"fold{fold}"
    done = here / "rows.json"
    if done.exists():
        return json.loads(done.read_text())
    held_out = "[" + ", ".join(users) + "]"

    def params_with(*extra: str):
        return load_params(ROOT / "params.yaml", [
            *overrides, f"train.test_users={held_out}", f"train.output_dir={here / 'train'}",
            f"train.report_dir={here / 'r/train'}", *extra])

    started = time.perf_counter()
    if not (here / "train" / "model").exists():
        execute("train", params_with())
    train_s = time.perf_counter() - started
    baseline = models.load(here / "train" / "model")
    runs = {"deepiot": ("params", None)} | {f"fastdeepiot@{d.name}": ("latency", d) for d in devices}
    metrics = {}
    for name, (cost, device) in runs.items():
        extra = ["compress.baselines=[l1, uniform]"] if cost == "params" else ["compress.baselines=[]"]
        device_name = device.name if device is not None else devices[0].name
        result = compress.run(params_with(f"compress.cost={cost}", *extra), device_name, ingest=work / "ingest",
                              train=here / "train", profile=work / "profile" / device_name,
                              fit_latency=work / "fit_latency" / device_name, out=Place(here / name, here / f"r/{name}"))
        metrics[name] = result.metrics
    methods = {"baseline": metrics["deepiot"]["methods"]["baseline"],
               "deepiot": metrics["deepiot"]["methods"]["deepiot"],
               "l1": metrics["deepiot"]["methods"]["l1"], "uniform": metrics["deepiot"]["methods"]["uniform"]}
    methods |= {name: metrics[name]["methods"]["deepiot"] for name in runs if name.startswith("fastdeepiot")}
    specs = {name: resized_spec(baseline.spec, m["widths"]) for name, m in methods.items()}
    measured = {d.name: time_together(params_with(), d, specs, baseline.spec, here / "timing" / d.name)
                for d in devices}
    rows = []
    base = methods["baseline"]
    for name, m in methods.items():
        run = name if name.startswith("fastdeepiot") else "deepiot"
        row = {"dataset": dataset, "fold": fold, "users": users, "method": name, "params": m["params"],
               "params_kept": m["params"] / base["params"], "test_accuracy": m["test_accuracy"],
               "per_user": m["test_accuracy_per_user"], "base_per_user": base["test_accuracy_per_user"],
               "budget_met": None if name == "baseline" else metrics[run]["budget_met"],
               "wall_s": train_s if name == "baseline" else metrics[run]["wall_s"], "widths": m["widths"]}
        for d in devices:
            row[f"ratio@{d.name}"] = measured[d.name][name]
        if name.startswith("fastdeepiot"):
            row["refit"] = metrics[run].get("refit", [])
            row["selection"] = metrics[run].get("selection", {})
            row["floor"] = metrics[run].get("floor", {})
            row |= deployed_form(params_with(), name, metrics[run], devices, here, work, row["per_user"])
        rows.append(row)
    done.write_text(json.dumps(rows, indent=2))
    return rows


def deployed_form(params, name: str, metrics: dict, devices, here: Path, work: Path, torch_per_user: dict) -> dict:
    """The form compress deploys (float or int8) for a FastDeepIoT run: its measured latency and energy ratios to
    the baseline's float file, and its accuracy per held-out user, from the exported file run on the device."""
    from components.devices.scoring import score_exported

    form = metrics.get("deployed") or {}
    fmt = form.get("format")
    chosen = (form.get("candidates") or {}).get(fmt) or {}
    out = {"form": fmt, "forms": form.get("candidates") or {}, "form_ratio": chosen.get("measured_ratio"),
           "form_energy_ratio": chosen.get("energy_ratio"), "form_per_user": torch_per_user}
    if not fmt or fmt == form.get("float_format"):
        return out  # the float file computes what torch computes (validate's agreement test)
    device = next(d for d in devices if d.name == name.split("@", 1)[1])
    windows = load_windows(work / "ingest")
    users = windows.meta["user"].to_numpy().astype(str)
    test = np.flatnonzero(np.isin(users, sorted(torch_per_user)))
    scored = score_exported(params, device, fmt, {"compressed": here / name / "forms" / "compressed"},
                            windows.x[test], windows.meta["label"].to_numpy()[test].astype(np.int64), users[test],
                            len(windows.classes))["compressed"]
    if not scored.get("ok"):
        raise RuntimeError(f"{name}: the deployed {fmt} file did not run on the held-out users: {scored['error']}")
    return out | {"form_per_user": scored["per_user_accuracy"]}


def run_matched(dataset: str, fold: int, fold_rows: list[dict], overrides: list[str], devices, work: Path,
                factor: float) -> list[dict]:
    """FastDeepIoT per device at `factor` x DeepIoT's measured ratio there; timed with DeepIoT and the baseline."""
    here = work / "folds" / f"fold{fold}"
    by_method = {r["method"]: r for r in fold_rows}
    deepiot, base = by_method["deepiot"], by_method["baseline"]
    rows = []
    for device in devices:
        name = f"fastdeepiot@{device.name}~matched"
        done = here / f"{name}.json"
        if done.exists():
            rows.append(json.loads(done.read_text()))
            continue
        budget = round(factor * deepiot[f"ratio@{device.name}"], 4)
        held_out = "[" + ", ".join(deepiot["users"]) + "]"
        params = load_params(ROOT / "params.yaml", [
            *overrides, f"train.test_users={held_out}", "compress.cost=latency", "compress.baselines=[]",
            f"compress.budget.latency={budget}"])
        result = compress.run(params, device.name, ingest=work / "ingest", train=here / "train",
                              profile=work / "profile" / device.name, fit_latency=work / "fit_latency" / device.name,
                              out=Place(here / name, here / f"r/{name}"))
        fast = result.metrics["methods"]["deepiot"]
        baseline = models.load(here / "train" / "model")
        specs = {"baseline": baseline.spec, "deepiot": resized_spec(baseline.spec, deepiot["widths"]),
                 "matched": resized_spec(baseline.spec, fast["widths"])}
        ratios = time_together(params, device, specs, baseline.spec, here / "timing-matched" / device.name)
        row = {"dataset": dataset, "fold": fold, "users": deepiot["users"], "method": name, "device": device.name,
               "factor": factor, "budget": budget, "params": fast["params"],
               "params_kept": fast["params"] / base["params"], "test_accuracy": fast["test_accuracy"],
               "per_user": fast["test_accuracy_per_user"], "deepiot_per_user": deepiot["per_user"],
               "base_per_user": base["per_user"], "ratio": ratios["matched"], "deepiot_ratio": ratios["deepiot"],
               "budget_met": result.metrics["budget_met"], "wall_s": result.metrics["wall_s"],
               "widths": fast["widths"]}
        done.write_text(json.dumps(row, indent=2))
        print(f"{dataset:>8} {fold:>4} {name:>30}: budget {budget:.3f}, measured {row['ratio']:.3f} vs DeepIoT "
              f"{row['deepiot_ratio']:.3f} ({100 * (1 - row['ratio'] / row['deepiot_ratio']):+.0f} % less), accuracy "
              f"{100 * (fast['test_accuracy'] - deepiot['test_accuracy']):+.1f} points against it", flush=True)
        rows.append(row)
    return rows


def matched_lines(rows: list[dict]) -> None:
    """Latency-steered against size-steered at a matched, lower time: measured time saved and the paired change."""
    for device in dict.fromkeys(r["device"] for r in rows):
        runs = [r for r in rows if r["device"] == device]
        less = [1 - r["ratio"] / r["deepiot_ratio"] for r in runs]
        per_user = {u: a for r in runs for u, a in r["per_user"].items()}
        size = {u: a for r in runs for u, a in r["deepiot_per_user"].items()}
        change = paired_ci(per_user, size)
        print(f"- {device}, FastDeepIoT at {runs[0]['factor']}x DeepIoT's measured time ({len(runs)} folds): "
              f"{100 * np.mean(less):.0f} % less measured time ({100 * min(less):.0f}-{100 * max(less):.0f} % over "
              f"folds), accuracy {100 * change['mean']:+.1f} points against DeepIoT (paired 95 % CI "
              f"{100 * change['low']:+.1f} to {100 * change['high']:+.1f}, {change.get('users', len(per_user))} "
              f"users); budget met {sum(bool(r['budget_met']) for r in runs)}/{len(runs)}")


def time_together(params, device, specs: dict, reference, work: Path) -> dict[str, float]:
    """Each description's latency on the device relative to the baseline's, all timed in the same rounds.

    The baseline is also the reference every sample is paired with; its own
    item's ratio (ideally 1, off by the protocol's noise) divides the others,
    as the stage's measured selection does.
    """
    backend = get_backend(device.runtime)
    items = {name: Item(model=spec) for name, spec in specs.items()}
    profiler = TimedProfiler(device, backend, params.profile, work, backend.version(),
                             reference=Item(model=reference))
    rows = {row["config_id"]: row for row in profiler.rows(list({i.key: i for i in items.values()}.values()))}
    ratios = {}
    for name, item in items.items():
        row = rows[item.key]
        if row["status"] != "ok" or not row.get("ratio"):
            raise RuntimeError(f"timing {name} on {device.name} failed at {row.get('failed_step')}: "
                               f"{row.get('error') or 'no ratio to the reference'}")
        ratios[name] = row["ratio"]
    return {name: r / ratios["baseline"] for name, r in ratios.items()}


def print_rows(rows: list[dict], header: bool) -> None:
    devices = [k.split("@", 1)[1] for k in rows[0] if k.startswith("ratio@")]
    if header:
        print(f"{'set':>8} {'fold':>4} {'method':>22} {'params':>7} {'kept %':>7} {'test acc':>8} {'change':>7} "
              + " ".join(f"{d:>10}" for d in devices) + f" {'met':>5} {'wall s':>7}")
    base = next(r for r in rows if r["method"] == "baseline")
    for r in rows:
        met = "" if r["budget_met"] is None else ("yes" if r["budget_met"] else "NO")
        print(f"{r['dataset']:>8} {r['fold']:>4} {r['method']:>22} {r['params']:>7} {100 * r['params_kept']:>7.1f} "
              f"{r['test_accuracy']:>8.3f} {100 * (r['test_accuracy'] - base['test_accuracy']):>+7.1f} "
              + " ".join(f"{r[f'ratio@{d}']:>10.3f}" for d in devices) + f" {met:>5} {r['wall_s']:>7.0f}",
              flush=True)


def summarise(rows: list[dict], args) -> None:
    """Per method: accuracy over every held-out user (95 % CI), paired change, parameters and measured ratios."""
    matched = [r for r in rows if r["method"].endswith("~matched")]
    rows = [r for r in rows if not r["method"].endswith("~matched")]
    dataset = rows[0]["dataset"]
    devices = [k.split("@", 1)[1] for k in rows[0] if k.startswith("ratio@")]
    folds = sorted({r["fold"] for r in rows})
    print(f"\n{dataset}: {len(folds)} folds, {sum(len(r['users']) for r in rows if r['method'] == 'baseline')} "
          f"held-out users; params budget {args.params_budget}, latency budget {args.latency_budget}, "
          f"{args.steps} search steps. Intervals: 95 % bootstrap over held-out users; ratios: mean over folds "
          "(min-max) of the model's time / the baseline's, timed in the same rounds.")
    print("| method | params kept % | test accuracy (95 % CI) | change, points (paired 95 % CI) | "
          + " | ".join(f"{d} ratio" for d in devices) + " | budget met | wall s |")
    print("|---|---|---|---|" + "---|" * len(devices) + "---|---|")
    summary = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        chosen = [r for r in rows if r["method"] == method]
        per_user = {u: a for r in chosen for u, a in r["per_user"].items()}
        base = {u: a for r in chosen for u, a in r["base_per_user"].items()}
        acc = mean_ci(per_user)
        change = paired_ci(per_user, base)
        ratios = {d: [r[f"ratio@{d}"] for r in chosen] for d in devices}
        kept = [r["params_kept"] for r in chosen]
        met = "" if method == "baseline" else f"{sum(bool(r['budget_met']) for r in chosen)}/{len(chosen)}"
        summary[method] = {"accuracy": acc, "change": change, "ratios": ratios, "kept": kept}
        print(f"| {method} | {100 * np.mean(kept):.1f} ({100 * min(kept):.1f}-{100 * max(kept):.1f}) | "
              f"{acc['mean']:.3f} ({acc['low']:.3f}-{acc['high']:.3f}) | "
              f"{100 * change['mean']:+.1f} ({100 * change['low']:+.1f} to {100 * change['high']:+.1f}) | "
              + " | ".join(f"{np.mean(v):.3f} ({min(v):.3f}-{max(v):.3f})" for v in ratios.values())
              + f" | {met} | {np.mean([r['wall_s'] for r in chosen]):.0f} |")
    candidates_line(rows)
    forms_table(rows, devices)
    for d in devices:
        fast, size = summary.get(f"fastdeepiot@{d}"), summary["deepiot"]
        if fast is None:
            continue
        less = 1 - np.mean(fast["ratios"][d]) / np.mean(size["ratios"][d])
        gap = 100 * (fast["accuracy"]["mean"] - size["accuracy"]["mean"])
        print(f"- {d}: FastDeepIoT takes {100 * less:+.0f} % less measured time than DeepIoT "
              f"({np.mean(fast['ratios'][d]):.3f}x vs {np.mean(size['ratios'][d]):.3f}x), accuracy {gap:+.1f} points "
              "against it (the aim counts only within +-0.5 point)")
    if matched:
        matched_lines(matched)


AIMS = {"onnxruntime": 0.15, "tflite": 0.08}  # issue 32: the deployed form's ratio at <= 1 point mean loss


def forms_table(rows: list[dict], devices: list[str]) -> None:
    """FastDeepIoT's deployed form per device: which form, its measured latency and energy ratios, its change."""
    fast = [r for r in rows if r["method"].startswith("fastdeepiot@") and r.get("form")]
    if not fast:
        return
    runtimes = {d.name: d.runtime for d in chosen(load_params(ROOT / "params.yaml"), devices)}
    print("\n| device | form deployed (folds) | latency ratio, deployed form | energy ratio | int8 form's ratio | "
          "change, points (paired 95 % CI) | aim |")
    print("|---|---|---|---|---|---|---|")
    for d in devices:
        runs = [r for r in fast if r["method"] == f"fastdeepiot@{d}"]
        if not runs:
            continue
        forms = {f: sum(r["form"] == f for r in runs) for f in dict.fromkeys(r["form"] for r in runs)}
        ratio = [r["form_ratio"] for r in runs if r["form_ratio"] is not None]
        energy = [r["form_energy_ratio"] for r in runs if r.get("form_energy_ratio") is not None]
        int8 = [c["measured_ratio"] for r in runs for f, c in r["forms"].items()
                if f.endswith("int8") and c.get("ok") and c.get("measured_ratio")]
        change = paired_ci({u: a for r in runs for u, a in r["form_per_user"].items()},
                           {u: a for r in runs for u, a in r["base_per_user"].items()})
        aim = AIMS.get(runtimes.get(d))
        met = "" if aim is None or not ratio else (
            f"<= {aim}x at <= 1 point: " + ("met" if np.mean(ratio) <= aim and -change["mean"] <= 0.01 else "missed"))

        def spread(v):
            return f"{np.mean(v):.3f} ({min(v):.3f}-{max(v):.3f})" if v else "-"

        print(f"| {d} | {', '.join(f'{f} {n}' for f, n in forms.items())} | {spread(ratio)} | {spread(energy)} | "
              f"{spread(int8)} | {100 * change['mean']:+.1f} ({100 * change['low']:+.1f} to "
              f"{100 * change['high']:+.1f}) | {met} |")


def candidates_line(rows: list[dict]) -> None:
    """The latency model on compressed candidates: refit rounds (before refitting) and the measured selection."""
    by_device: dict[str, dict] = {}
    for r in rows:
        if not r["method"].startswith("fastdeepiot"):
            continue
        d = by_device.setdefault(r["method"].split("@", 1)[1], {"before": [], "selection": []})
        for rnd in r.get("refit", []):
            b = rnd.get("before_refit", {})
            if b.get("candidates"):
                d["before"].append((b["candidates"], b["within_5_pct"], b["within_10_pct"]))
        errors = [abs(t["error"]) for t in r.get("selection", {}).get("timed", [])]
        d["selection"] += errors
    for device, d in by_device.items():
        n = sum(c for c, _, _ in d["before"])
        w10 = sum(c * w / 100 for c, _, w in d["before"]) / n if n else float("nan")
        w5 = sum(c * w / 100 for c, w, _ in d["before"]) / n if n else float("nan")
        sel = np.array(d["selection"])
        print(f"- {device}: compressed structures predicted before the refit (out of sample): "
              f"{100 * w5:.0f} % within +-5 %, {100 * w10:.0f} % within +-10 % ({n}); selection candidates after "
              f"it: {100 * np.mean(sel <= 0.05):.0f} % / {100 * np.mean(sel <= 0.10):.0f} % ({len(sel)})")


if __name__ == "__main__":
    main()
