"""The latency model on compressed structures only, out of sample: where compression goes, is it within +-10 %?

After `make run` (the nightly default's baseline in `train.output_dir`, each
device's latency model in `fit_latency.output_dir` and the one compress
refitted beside its model): draw --structures compressed DeepSense
structures from the baseline the way the search leaves them (a global keep
share, log-uniform between --low and --high, each layer's own share
scattered around it, every layer at least one element; a share of them,
--removed-share, also shallower: each layer the search may remove whole is
removed with probability one half, at least one), time each whole
model on the device together with the baseline (`profile`'s protocol and
workers, the baseline as the reference, so each figure is a ratio to it
measured in the same rounds), and compare the latency model's predicted
ratio with the measured one: |predicted - measured| / measured, the way
compress and validate judge it. None of these structures was profiled when
the model was fitted: every figure is out of sample.

Prints, per device and latency model (fit_latency's; compress's refitted
one; each also without its local correction from timed whole models,
`Residuals`, to tell the formula's share of the error from the
correction's), the share within +-5 % and +-10 %, the MAPE, and the same by
how much of the baseline's measured time is left and by depth (every layer
kept, or some removed whole). Issue 32's aim: >= 90 % within
+-10 % on every timed device of the nightly default, at least 30
structures each.

    python benchmarks/compressed_latency.py [--devices ort-1t ort-2t tflite-1t torch-1t] [--structures 30]
        [--low 0.05] [--high 0.8] [--removed-share 0.5] [--seed 0] [--out rows.json] [--also NAME=FOLDER ...]
    python benchmarks/compressed_latency.py --median-of run1.json run2.json run3.json   # a timing repeated
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from components import models
from components.config import load_params
from components.devices.base import get_backend
from components.devices.pool import chosen
from components.latency.model import REFITTED_DIR, load_in
from components.profiling.items import Item
from components.profiling.runner import TimedProfiler
from components.pruning.costs import resized_spec
from components.pruning.groups import removable

ROOT = Path(__file__).resolve().parents[1]
BINS = ((0.0, 0.15), (0.15, 0.3), (0.3, 0.6), (0.6, 10.0))  # measured ratio to the baseline


def structures(spec, count: int, low: float, high: float, seed: int, removed_share: float = 0.0
               ) -> list[dict[str, int]]:
    """Widths of `count` compressed structures: a global keep share, each layer's scattered around it; a
    `removed_share` of them with layers removed whole (width 0), as the search can leave them."""
    rng = np.random.default_rng(seed)
    prunable = spec.layers[:-1]  # every layer but the classifier
    may_go = removable(spec)
    out = []
    while len(out) < count:
        share = float(np.exp(rng.uniform(np.log(low), np.log(high))))
        widths = {layer.name: int(np.clip(round(layer.out_features * share * rng.lognormal(0.0, 0.4)), 1,
                                          layer.out_features)) for layer in prunable}
        if may_go and rng.random() < removed_share:
            gone = [name for name in may_go if rng.random() < 0.5] or [may_go[int(rng.integers(len(may_go)))]]
            widths.update(dict.fromkeys(gone, 0))
        if widths not in out:
            out.append(widths)
    return out


def measure(params, device, baseline, drawn: list[dict], work: Path) -> list[float | None]:
    """Each structure's measured latency over the baseline's, timed together in the same rounds."""
    backend = get_backend(device.runtime)
    reference = Item(model=baseline)
    items = [Item(model=resized_spec(baseline, w)) for w in drawn]
    profiler = TimedProfiler(device, backend, params.profile, work, backend.version(), reference=reference)
    rows = {r["config_id"]: r for r in profiler.rows([reference, *{i.key: i for i in items}.values()])}
    base = rows[reference.key].get("ratio")
    return [rows[i.key]["ratio"] / base if rows[i.key].get("status") == "ok" and rows[i.key].get("ratio") and base
            else None for i in items]


def _without_residuals(latency_model):
    """The same latency model with no correction from timed whole models (the formula alone)."""
    import copy

    from components.latency.model import Residuals

    bare = copy.copy(latency_model)
    bare.residuals = Residuals()
    return bare


def summary(errors: np.ndarray) -> str:
    if not len(errors):
        return "no structures"
    return (f"{100 * np.mean(errors <= 0.05):.0f} % within +-5 %, {100 * np.mean(errors <= 0.10):.0f} % within "
            f"+-10 %, MAPE {100 * np.mean(errors):.1f} % ({len(errors)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", nargs="*", default=None, help="default: every timed device of the pool")
    parser.add_argument("--structures", type=int, default=30)
    parser.add_argument("--low", type=float, default=0.05, help="smallest global keep share drawn")
    parser.add_argument("--high", type=float, default=0.8, help="largest global keep share drawn")
    parser.add_argument("--removed-share", type=float, default=0.5,
                        help="share of the structures with layers removed whole")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=ROOT / ".state" / "benchmarks" / "compressed_latency")
    parser.add_argument("--out", type=Path, default=None, help="also write every row here (JSON)")
    parser.add_argument("--also", nargs="*", default=[], metavar="NAME=FOLDER",
                        help="more latency models to score: FOLDER/<device>/latency_model.json (a fit_latency "
                             "output folder fitted another way)")
    parser.add_argument("--median-of", nargs="*", type=Path, default=None, metavar="ROWS",
                        help="score saved runs (--out files) on the median of their measured ratios; times nothing")
    args = parser.parse_args()
    if args.median_of:
        report(median_of([json.loads(p.read_text()) for p in args.median_of]))
        return
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    params = load_params(ROOT / "params.yaml")
    model_dir = params.path(params.train.output_dir) / "model"
    if not model_dir.exists():
        raise SystemExit(f"no baseline at {model_dir}: run `make run` first")
    baseline = models.load(model_dir).spec
    drawn = structures(baseline, args.structures, args.low, args.high, args.seed, args.removed_share)
    rows = []
    for device in chosen(params, args.devices):
        if not get_backend(device.runtime).timed:
            continue
        lms = {"fit_latency": load_in(params.path(params.fit_latency.output_dir) / device.name),
               "compress (refitted)": load_in(params.path(params.compress.output_dir) / device.name / REFITTED_DIR)}
        for name, folder in (a.split("=", 1) for a in args.also):
            lms[name] = load_in(Path(folder) / device.name)
        lms = {k: v for k, v in lms.items() if v is not None}
        lms |= {f"{k} without its local correction": _without_residuals(v) for k, v in lms.items()}
        if not lms:
            print(f"{device.name}: no latency model (run `make run` first)")
            continue
        measured = measure(params, device, baseline, drawn, args.work / device.name)
        for which, lm in lms.items():
            base = lm.predict_model(baseline)
            for widths, ratio in zip(drawn, measured):
                if ratio is None:
                    continue
                predicted = lm.predict_model(resized_spec(baseline, widths)) / base
                rows.append({"device": device.name, "model": which, "widths": widths, "measured_ratio": ratio,
                             "predicted_ratio": predicted, "error": abs(predicted - ratio) / ratio})
        report([r for r in rows if r["device"] == device.name])
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1))


def report(rows: list[dict]) -> None:
    """Per device and latency model: the shares within +-5 / +-10 %, by measured ratio and by depth."""
    for device, which in dict.fromkeys((r["device"], r["model"]) for r in rows):
        mine = [r for r in rows if r["device"] == device and r["model"] == which]
        print(f"{device}, {which}: {summary(np.array([r['error'] for r in mine]))}", flush=True)
        for lo, hi in BINS:
            part = np.array([r["error"] for r in mine if lo <= r["measured_ratio"] < hi])
            if len(part):
                print(f"    measured {lo:.2f}-{min(hi, 1.0):.2f}x of the baseline: {summary(part)}")
        for label, shallower in (("every layer kept", False), ("layers removed whole", True)):
            part = np.array([r["error"] for r in mine if (0 in r["widths"].values()) == shallower])
            if len(part):
                print(f"    {label}: {summary(part)}")


def median_of(runs: list[list[dict]]) -> list[dict]:
    """Rows of several runs on the same structures and models, each structure's measured ratio the median
    of the runs' (a timing repeated), scored again against the same prediction."""
    grouped: dict[tuple, list[dict]] = {}
    for rows in runs:
        for r in rows:
            grouped.setdefault((r["device"], r["model"], json.dumps(r["widths"], sort_keys=True)), []).append(r)
    out = []
    for same in grouped.values():
        ratio = float(np.median([r["measured_ratio"] for r in same]))
        predicted = same[0]["predicted_ratio"]
        out.append({**same[0], "measured_ratio": ratio, "runs": len(same),
                    "error": abs(predicted - ratio) / ratio})
    return out


if __name__ == "__main__":
    main()
