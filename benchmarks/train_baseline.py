"""k-fold over users on every data set: the deep baseline against the random forest, with 95 % intervals.

For each data set: ingest it (into a temporary folder, or --keep DIR), then run
the `train` stage with `train.evaluation=kfold`: the users are dealt into
`ingest.split.folds` folds and each fold is held out once, so every user is
scored exactly once, by a model that never saw them. Prints per data set the
mean accuracy and macro-F1 over users with their 95 % bootstrap intervals
(DeepSense and the random forest on the same folds), the paired difference
DeepSense - forest with its interval, the per-user spread (worst, median,
best user), parameters and wall time per fold; and a table over every set.

    python benchmarks/train_baseline.py [--datasets uci_hapt uci_har wisdm hhar_sa] [-p train.epochs=30]
                                        [--json results.json] [--keep DIR]
    python benchmarks/train_baseline.py --paired A.json B.json   # A - B per user, from two --json files

Uses every core the machine gives torch (train.threads).
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from components.config import load_params
from components.reports.tables import interval_text
from components.stages import execute

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ("uci_hapt", "uci_har", "wisdm", "hhar_sa")
AIMS = {"uci_har": 0.94, "uci_hapt": 0.93, "wisdm": 0.85, "hhar_sa": 0.80}  # issues 16 and 30: mean over held-out users


def run_one(dataset: str, work: Path, overrides: list[str]) -> dict:
    folder = work / dataset
    params = load_params(ROOT / "params.yaml", [
        f"ingest.dataset={dataset}", f"ingest.output_dir={folder / 'ingest'}", f"ingest.report_dir={folder / 'r'}",
        f"train.output_dir={folder / 'train'}", f"train.report_dir={folder / 'r' / 'train'}",
        f"pipeline.state_dir={work / 'state'}", "train.evaluation=kfold", *overrides])
    started = time.perf_counter()
    execute("ingest", params)
    ingest_s = time.perf_counter() - started
    result = execute("train", params)
    wall_s = time.perf_counter() - started
    report = json.loads((result.output_dir / "metrics.json").read_text())
    timings = json.loads((params.path(params.train.report_dir) / "timings.json").read_text())
    return {"dataset": dataset, "report": report, "ingest_s": ingest_s, "wall_s": wall_s,
            "fit_s": {k: v for k, v in timings.items() if k.startswith("fit_s.")}}


def describe(r: dict) -> str:
    k = r["report"]["kfold"]
    per_user = k["per_user"]
    acc = np.array([u["deep_accuracy"] for u in per_user.values()])
    worst = min(per_user, key=lambda u: per_user[u]["deep_accuracy"])
    lines = [
        f"== {r['dataset']}: {len(per_user)} users in {len(k['folds'])} folds, "
        f"{r['report']['arch']} {r['report']['params']:,} parameters, input "
        f"{r['report'].get('input_shape', '')}",
        f"   DeepSense accuracy {interval_text(k['deep']['accuracy'])}, macro-F1 {interval_text(k['deep']['macro_f1'])}",
        f"   forest    accuracy {interval_text(k['classical']['accuracy'])}, macro-F1 "
        f"{interval_text(k['classical']['macro_f1'])}",
        f"   DeepSense - forest (paired over users): accuracy {interval_text(k['deep_minus_classical']['accuracy'])}",
        f"   per-user accuracy: worst {acc.min():.3f} ({worst}), median {np.median(acc):.3f}, best {acc.max():.3f}",
        f"   wall {r['wall_s']:.0f} s (ingest {r['ingest_s']:.0f} s); fit s per fold: "
        + ", ".join(f"{v:.0f}" for v in r["fit_s"].values()),
    ]
    return "\n".join(lines)


def table(results: list[dict]) -> str:
    rows = ["| data set | users | DeepSense accuracy (95 % CI) | DeepSense macro-F1 | forest accuracy | "
            "DeepSense - forest | worst user | aim | wall s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        k = r["report"]["kfold"]
        deep, forest, diff = k["deep"]["accuracy"], k["classical"]["accuracy"], k["deep_minus_classical"]["accuracy"]
        f1 = k["deep"]["macro_f1"]
        worst = min(u["deep_accuracy"] for u in k["per_user"].values())
        aim = AIMS.get(r["dataset"])
        verdict = "" if aim is None else f"{aim} {'met' if deep['mean'] >= aim else 'missed'}"
        rows.append(f"| {r['dataset']} | {deep['users']} | {deep['mean']:.3f} ({deep['low']:.3f}-{deep['high']:.3f}) | "
                    f"{f1['mean']:.3f} ({f1['low']:.3f}-{f1['high']:.3f}) | "
                    f"{forest['mean']:.3f} ({forest['low']:.3f}-{forest['high']:.3f}) | "
                    f"{diff['mean']:+.3f} ({diff['low']:+.3f} to {diff['high']:+.3f}) | {worst:.3f} | {verdict} | "
                    f"{r['wall_s']:.0f} |")
    return "\n".join(rows)


def paired(a: list[dict], b: list[dict]) -> str:
    """Two runs' DeepSense accuracy per set and their paired per-user difference (A - B), where both ran it."""
    from components.stats.intervals import mean_ci, paired_ci

    rows = ["| data set | users | A (95 % CI) | B (95 % CI) | A - B, paired over users (95 % CI) |",
            "|---|---|---|---|---|"]
    theirs = {r["dataset"]: r for r in b}
    for r in a:
        if r["dataset"] not in theirs:
            continue
        ours, other = (_accuracies(x) for x in (r, theirs[r["dataset"]]))
        diff = paired_ci(ours, other)
        if not diff["paired_users"]:
            continue
        mine, them = (mean_ci({u: x[u] for u in diff["paired_users"]}) for x in (ours, other))
        rows.append(f"| {r['dataset']} | {len(diff['paired_users'])} | {_span(mine)} | {_span(them)} | "
                    f"{diff['mean']:+.4f} ({diff['low']:+.4f} to {diff['high']:+.4f}) |")
    return "\n".join(rows)


def _span(ci: dict) -> str:
    return f"{ci['mean']:.3f} ({ci['low']:.3f}-{ci['high']:.3f})"


def _accuracies(result: dict) -> dict[str, float]:
    return {u: s["deep_accuracy"] for u, s in result["report"]["kfold"]["per_user"].items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("-p", dest="overrides", action="append", default=[], help="section.key=value")
    parser.add_argument("--json", type=Path, default=None, help="also write every report here")
    parser.add_argument("--keep", type=Path, default=None, help="work folder to keep (default: a temp dir)")
    parser.add_argument("--paired", type=Path, nargs=2, metavar=("A", "B"), default=None,
                        help="only compare two --json files: per set, A - B paired over users")
    args = parser.parse_args()
    if args.paired:
        a, b = (json.loads(path.read_text()) for path in args.paired)
        print(paired(a, b))
        return
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("components.train").setLevel(logging.INFO)  # a line per fold: the run takes a while
    results = []
    with tempfile.TemporaryDirectory(prefix="train-bench-") as tmp:
        work = args.keep or Path(tmp)
        for dataset in args.datasets:
            results.append(run_one(dataset, work, args.overrides))
            print(describe(results[-1]), flush=True)
            if args.json:
                args.json.write_text(json.dumps(results, indent=2))
    print()
    print("Means over held-out users (each user held out once, k-fold over users); 95 % percentile-bootstrap")
    print("intervals over users; DeepSense - forest is the paired per-user difference.")
    print(table(results))


if __name__ == "__main__":
    main()
