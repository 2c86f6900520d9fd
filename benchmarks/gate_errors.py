"""How often the gates are wrong: the nightly decision on one fold of users, scored on a further fold nobody saw.

For each data set (--datasets, default uci_hapt and uci_har) the users are dealt into `ingest.split.folds`
folds, as ingest deals them. For each fold f (--folds, default every one) one night runs as the nightly
default runs, with fold f's users held out (they decide the gates) and fold f+1's users reserved
(`ingest.split.reserve_users`: no stage trains, validates or decides on them): ingest, train, then per device
(--devices, default ort-1t, tflite-1t and cortex-m4) compress and validate with params.yaml's settings,
retry included. profile and fit_latency run once per data set (they read no user). A model that passes
every gate is one register would register.

Each model the night made (the chosen structure, and compress's fallback) is then run in the device's
deployed format, through the device's own worker, on the held-out users and on the reserved users, beside
the baseline's deployed file; drops are paired user by user (baseline minus model: positive is a loss).

Printed per data set and device, and over all:

- each night's outcome: registered (the chosen model or, after a retry, the fallback) or refused, and why;
- false passes: registered models that lose more than 1 point on the reserved users, over the registered;
- false rejections: models the accuracy gate refused that were within 1 point on the reserved users, over
  the models it refused;
- the mean drop of the registered models on the reserved users, with a 95 % bootstrap interval over models;
- candidate accuracy rules judged on every model made (chosen and fallback, each by the rule alone, on the
  held-out users' paired drops): how many each passes and how often it is wrong;
- the same rules replayed over the nights (the chosen model, else after a missed accuracy gate the fallback,
  each also needing every other gate): what each rule would have registered.

    python benchmarks/gate_errors.py [--datasets uci_hapt uci_har] [--folds 0 1 2 3 4]
        [--devices ort-1t tflite-1t cortex-m4] [-p section.key=value] [--work DIR]
    python benchmarks/gate_errors.py --rows   # the tables of every night measured so far, and stop

Each finished night's rows (one file per data set, fold and device) go to --rows-dir, by default
benchmarks/results/gate_errors/, which is committed: a rerun skips every night found there, so the
benchmark can be finished over several sittings (delete a file to redo that night). Work folders are kept
too: a rerun also reuses a night's finished stages.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np

from components import validate
from components.config import load_params
from components.data.windows import load_windows
from components.decisions.gates import deployed_pair
from components.devices import scoring
from components.devices.pool import chosen
from components.stages import execute
from components.stats.intervals import mean_ci

ROOT = Path(__file__).resolve().parents[1]
LOSS = 0.01  # "no loss": at most 1 point lost on the mean over users
RULES = {  # name -> passes(drops per held-out user): the accuracy gate's candidate rules
    "mean <= 2 (the old default)": lambda d: d.mean() <= 0.02,
    "mean <= 1": lambda d: d.mean() <= 0.01,
    "mean <= 0.5": lambda d: d.mean() <= 0.005,
    "mean <= 1, bootstrap upper <= 3": lambda d: d.mean() <= 0.01 and _boot_upper(d) <= 0.03,
    "mean <= 1, bootstrap upper <= 2.5": lambda d: d.mean() <= 0.01 and _boot_upper(d) <= 0.025,
    "mean <= 1, bootstrap upper <= 2": lambda d: d.mean() <= 0.01 and _boot_upper(d) <= 0.02,
    "mean <= 1, bootstrap upper <= 1.5": lambda d: d.mean() <= 0.01 and _boot_upper(d) <= 0.015,
    "bootstrap upper <= 1": lambda d: _boot_upper(d) <= 0.01,
    "mean <= 1, t upper <= 2": lambda d: d.mean() <= 0.01 and _t_upper(d) <= 0.02,
    "mean <= 1, t upper <= 3": lambda d: d.mean() <= 0.01 and _t_upper(d) <= 0.03,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="*", default=["uci_hapt", "uci_har"])
    parser.add_argument("--folds", nargs="*", type=int, default=None, help="default: every fold of users")
    parser.add_argument("--devices", nargs="*", default=["ort-1t", "tflite-1t", "cortex-m4"])
    parser.add_argument("--work", type=Path, default=ROOT / ".state" / "benchmarks" / "gate_errors")
    parser.add_argument("-p", dest="overrides", action="append", default=[], help="section.key=value")
    parser.add_argument("--rows-dir", type=Path, default=ROOT / "benchmarks" / "results" / "gate_errors",
                        help="where each finished night's rows are kept (nights found there are not rerun)")
    parser.add_argument("--rows", action="store_true", help="print the tables of every night in --rows-dir and stop")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.rows:
        report(saved_rows(args.rows_dir))
        return
    started = time.perf_counter()
    for dataset in args.datasets:
        run_dataset(dataset, args)
    report(saved_rows(args.rows_dir, args.datasets))
    print(f"\nevery row: {args.rows_dir} ({time.perf_counter() - started:.0f} s)")


def saved_rows(rows_dir: Path, datasets: list[str] | None = None) -> list[dict]:
    """Every night's rows kept in `rows_dir` (`<data set>/fold<f>_<device>.json`), of `datasets` if given."""
    files = sorted(rows_dir.glob("*/fold*_*.json"))
    return [row for path in files if datasets is None or path.parent.name in datasets
            for row in json.loads(path.read_text())]


def _rows_file(rows_dir: Path, dataset: str, fold: int, device: str) -> Path:
    return rows_dir / dataset / f"fold{fold}_{device}.json"


def run_dataset(dataset: str, args) -> None:
    work = args.work.resolve() / dataset
    shared = [f"ingest.dataset={dataset}", f"pipeline.state_dir={work / 'state'}",
              f"profile.output_dir={work / 'profile'}", f"profile.report_dir={work / 'r/profile'}",
              f"fit_latency.output_dir={work / 'fit_latency'}", f"fit_latency.report_dir={work / 'r/fit_latency'}",
              *args.overrides]
    everyone = load_params(ROOT / "params.yaml", [*shared, f"ingest.output_dir={work / 'ingest'}",
                                                  f"ingest.report_dir={work / 'r/ingest'}"])
    if not (work / "ingest" / "split.json").exists():
        execute("ingest", everyone)
    folds = {int(k): v for k, v in json.loads((work / "ingest" / "split.json").read_text())["folds"].items()}
    for device in chosen(everyone, args.devices):  # the latency models read no user: once per data set
        if not (work / "fit_latency" / device.name).exists():
            execute("profile", everyone, device.name)
            execute("fit_latency", everyone, device.name)
    for f in args.folds if args.folds is not None else sorted(folds):
        files = {d: _rows_file(args.rows_dir, dataset, f, d) for d in args.devices}
        if all(path.exists() for path in files.values()):
            continue
        further = folds[(f + 1) % len(folds)]
        print_nights(run_night(dataset, f, further, shared, files, work / f"fold{f}"))


def night_params(shared: list[str], fold: int, further: list[str], here: Path):
    folders = [f"{stage}.{kind}_dir={here / (stage if kind == 'output' else 'r/' + stage)}"
               for stage in ("ingest", "train", "compress", "validate") for kind in ("output", "report")]
    return load_params(ROOT / "params.yaml", [*shared, *folders, f"ingest.split.test_fold={fold}",
                                              f"ingest.split.reserve_users=[{', '.join(further)}]"])


def run_night(dataset: str, fold: int, further: list[str], shared: list[str], files: dict[str, Path],
              here: Path) -> list[dict]:
    """One night with `fold` held out and `further` reserved; each model it made scored on both groups of users."""
    params = night_params(shared, fold, further, here)
    rows = []
    for name, stage in (("ingest", "ingest"), ("train", "train")):
        if not (here / name / "checksums.json").exists():
            started = time.perf_counter()
            execute(stage, params)
            print(f"{dataset} fold {fold}: {stage} in {time.perf_counter() - started:.0f} s", flush=True)
    for device, done in files.items():
        if done.exists():
            rows += json.loads(done.read_text())
            continue
        started = time.perf_counter()
        if not (here / "r" / "compress" / device / "metrics.json").exists():
            execute("compress", params, device)
        if not (here / "r" / "validate" / device / "report.json").exists():
            execute("validate", params, device)
        night_s = time.perf_counter() - started
        device_rows = score_night(params, dataset, fold, device, here)
        for row in device_rows:
            row["night_s"] = round(night_s, 1)
        done.parent.mkdir(parents=True, exist_ok=True)
        done.write_text(json.dumps(device_rows, indent=2))
        rows += device_rows
    return rows


def score_night(params, dataset: str, fold: int, device_name: str, here: Path) -> list[dict]:
    """The chosen model and the fallback, each validated (every gate), then run in the deployed format on the
    reserved users beside the baseline's file."""
    (device,) = chosen(params, [device_name])
    bundle = here / "validate" / device_name
    report = json.loads((bundle / "report.json").read_text())
    compressed = json.loads((here / "r" / "compress" / device_name / "metrics.json").read_text())
    fmt = report["deployed_format"]
    retry = report.get("retry")
    judged = {"chosen": (retry["first_try"] if retry else report), "fallback": report if retry else None}
    folders = {"baseline": bundle / "baseline", "chosen": bundle / "compressed"}
    if retry:
        folders["fallback"] = bundle / validate.FALLBACK_DIR
    elif (here / "compress" / device_name / validate.FALLBACK_DIR).exists():
        judged["fallback"], folders["fallback"] = validate_fallback(params, device_name, here)
    windows = load_windows(here / "ingest")
    reserved = np.flatnonzero(windows.meta["split"].to_numpy() == "reserved")
    labels = windows.meta["label"].to_numpy().astype(np.int64)
    users = windows.meta["user"].to_numpy().astype(str)
    # the baseline in the form the gates compared it in: its float file where compress deployed int8
    reference = (report.get("deployed_pair") or {}).get("baseline_format") or fmt
    further = {}
    for form, names in ((fmt, [n for n in folders if n != "baseline"]), (reference, ["baseline"])):
        further |= scoring.score_exported(params, device, form, {n: folders[n] for n in names}, windows.x[reserved],
                                          labels[reserved], users[reserved], len(windows.classes))
    registered = "fallback" if retry and report["passed"] else ("chosen" if report["passed"] else None)
    rows = []
    for role in [r for r in ("chosen", "fallback") if r in folders]:
        night = judged[role]
        base, model = deployed_pair(night | {"deployed_format": fmt})
        figures = compressed["methods"]["deepiot"] if role == "chosen" else compressed.get("fallback", {})
        rows.append({
            "dataset": dataset, "fold": fold, "device": device_name, "role": role, "format": fmt,
            "registered": registered == role, "validated_by_the_night": role == "chosen" or bool(retry),
            "gates": {g["name"]: g["passed"] for g in night["gates"]},
            "retried": bool(retry), "night_passed": report["passed"],
            "params": figures.get("params"), "measured_ratio": figures.get("measured_ratio"),
            "relative_cost": figures.get("relative_cost"),
            "test_drop": _drops(base, model), "further_drop": _drops(further["baseline"], further[role]),
            "test_users": sorted(base["per_user_accuracy"]), "further_users": sorted(set(users[reserved].tolist())),
        })
    return rows


def validate_fallback(params, device_name: str, here: Path) -> tuple[dict, Path]:
    """compress's fallback validated on its own, as validate would have after a retry (every gate; the same
    test and calibration windows, the latency model compress refitted), so any rule can be replayed."""
    from components.latency.model import REFITTED_DIR
    from components.stages import Place

    source = here / "compress" / device_name
    alone = here / "fallback_alone" / device_name
    if not (alone / "v" / "report.json").exists():
        shutil.rmtree(alone, ignore_errors=True)
        shutil.copytree(source / validate.FALLBACK_DIR, alone / "compress" / "model")
        if (source / REFITTED_DIR).exists():
            shutil.copytree(source / REFITTED_DIR, alone / "compress" / REFITTED_DIR)
        validate.run(params, device_name, ingest=here / "ingest", train=here / "train",
                     fit_latency=params.path(params.fit_latency.output_dir) / device_name,
                     compress=alone / "compress", out=Place(alone / "v", alone / "r"))
    return json.loads((alone / "v" / "report.json").read_text()), alone / "v" / "compressed"


def _drops(base: dict, model: dict) -> dict[str, float]:
    """Baseline minus model accuracy, per user (positive: the model loses)."""
    if not (base.get("ok") and model.get("ok")):
        raise RuntimeError(f"a model did not run: {base.get('error') or model.get('error')}")
    return {u: base["per_user_accuracy"][u] - model["per_user_accuracy"][u] for u in base["per_user_accuracy"]}


def _boot_upper(drops: np.ndarray) -> float:
    return mean_ci(drops)["high"]


def _t_upper(drops: np.ndarray) -> float:
    from scipy import stats

    if len(drops) < 2:
        return float(drops.mean())
    return float(drops.mean() + stats.t.ppf(0.975, len(drops) - 1) * drops.std(ddof=1) / np.sqrt(len(drops)))


def _mean(per_user: dict) -> float:
    return float(np.mean(list(per_user.values())))


# ---- tables ---------------------------------------------------------------------------------------------------


def print_nights(rows: list[dict]) -> None:
    print("\n| data set | fold | device | model | night's verdict | held-out drop, points (95 % CI) | "
          "further drop, points (95 % CI) | params | measured ratio |\n|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        failed = [name for name, ok in r["gates"].items() if ok is False]
        if r["registered"]:
            verdict = "**registered**" + (" (after a retry)" if r["role"] == "fallback" else "")
        elif r["validated_by_the_night"]:
            verdict = "refused: " + ", ".join(failed)
        else:
            verdict = "not needed" + (f" (alone: fails {', '.join(failed)})" if failed else " (alone: passes)")
        ratio = f"{r['measured_ratio']:.3f}" if r.get("measured_ratio") is not None else \
            (f"{r['relative_cost']:.3f} (computed)" if r.get("relative_cost") is not None else "-")
        print(f"| {r['dataset']} | {r['fold']} | {r['device']} | {r['role']} | {verdict} | {_ci(r['test_drop'])} | "
              f"{_ci(r['further_drop'])} | {r['params']} | {ratio} |")


def _ci(per_user: dict) -> str:
    ci = mean_ci(per_user)
    return f"{100 * ci['mean']:+.1f} ({100 * ci['low']:+.1f} to {100 * ci['high']:+.1f})"


def replay(rows: list[dict], rule) -> list[dict]:
    """What the nights register under an accuracy rule: the chosen model if it passes every gate, else, if it
    missed only the accuracy gate, the fallback if it passes every gate; one row per night, the model or None."""
    nights: dict[tuple, dict] = {}
    for r in rows:
        nights.setdefault((r["dataset"], r["fold"], r["device"]), {})[r["role"]] = r
    out = []
    for key, models in sorted(nights.items()):
        chosen_model, fallback = models.get("chosen"), models.get("fallback")
        registered, refused = None, []
        if _passes(chosen_model, rule):
            registered = chosen_model
        else:
            refused.append(chosen_model)
            if _others_pass(chosen_model) and fallback is not None:
                if _passes(fallback, rule):
                    registered = fallback
                else:
                    refused.append(fallback)
        out.append({"night": key, "registered": registered, "refused": refused})
    return out


def _passes(row: dict, rule) -> bool:
    return _others_pass(row) and rule(np.array(list(row["test_drop"].values())))


def _others_pass(row: dict) -> bool:
    return all(ok is not False for name, ok in row["gates"].items() if name != "accuracy_drop")


def report(rows: list[dict]) -> None:
    print_nights(rows)
    print("\n## The nights as they ran (the default rule, retry included), scored on the reserved users\n")
    pairs = sorted({(r["dataset"], r["device"]) for r in rows})
    _decisions_table(rows, pairs + [("all", device) for device in sorted({d for _, d in pairs})] + [("all", "all")])
    print("\n## What the held-out users tell about the reserved users\n")
    evidence(rows)
    print("\n## Each rule on every model made, the accuracy gate alone, scored on the reserved users\n")
    rules_alone(rows)
    print("\n## Each rule replayed over every night (every gate of both models known), scored on the reserved "
          "users\n")
    print("| rule | nights | registered | false passes (> 1 point lost) | refused by accuracy | false rejections "
          "(within 1 point) | mean drop of registered, points (95 % CI over models) | worst registered |\n"
          "|---|---|---|---|---|---|---|---|")
    for name, rule in RULES.items():
        nights = replay(rows, rule)
        registered = [n["registered"] for n in nights if n["registered"] is not None]
        by_accuracy = [r for n in nights for r in n["refused"] if _others_pass(r)]
        lost = [_mean(r["further_drop"]) > LOSS for r in registered]
        kept = [_mean(r["further_drop"]) <= LOSS for r in by_accuracy]
        worst = max((_mean(r["further_drop"]) for r in registered), default=None)
        print(f"| {name} | {len(nights)} | {len(registered)} | {_share(sum(lost), len(lost))} | {len(by_accuracy)} | "
              f"{_share(sum(kept), len(kept))} | {_models_ci(registered)} | "
              f"{'-' if worst is None else f'{100 * worst:+.1f}'} |")


def evidence(rows: list[dict]) -> None:
    """How much the held-out users' drop says about the reserved users': what any rule on them can do."""
    test = np.array([_mean(r["test_drop"]) for r in rows])
    further = np.array([_mean(r["further_drop"]) for r in rows])
    spread = np.median([np.std(list(r["test_drop"].values()), ddof=1) for r in rows])
    users = np.median([len(r["test_drop"]) for r in rows])
    print(f"{len(rows)} models: mean drop {100 * test.mean():+.2f} points on the held-out users, "
          f"{100 * further.mean():+.2f} on the reserved; correlation over models of the two "
          f"{np.corrcoef(test, further)[0, 1]:+.2f}; "
          f"one user's drop varies by {100 * spread:.1f} points (median standard deviation over models), so the mean "
          f"over {users:.0f} held-out users is known to about {100 * spread / np.sqrt(users):.1f} points")
    print("\n| device | models | mean drop on the reserved users, points (95 % CI over models) |\n|---|---|---|")
    for device in sorted({r["device"] for r in rows}):
        print(f"| {device} | {sum(r['device'] == device for r in rows)} | "
              f"{_models_ci([r for r in rows if r['device'] == device])} |")


def rules_alone(rows: list[dict]) -> None:
    """Each rule on every model made (chosen and fallback), the accuracy gate alone: the timed gates are left
    out, since a busy machine moves them and not the accuracy."""
    print("| rule | models | passed | false passes (> 1 point lost) | refused | false rejections (within 1 point) | "
          "mean drop of passed, points (95 % CI over models) |\n|---|---|---|---|---|---|---|")
    for name, rule in RULES.items():
        passed = [r for r in rows if rule(np.array(list(r["test_drop"].values())))]
        refused = [r for r in rows if r not in passed]
        lost = [_mean(r["further_drop"]) > LOSS for r in passed]
        kept = [_mean(r["further_drop"]) <= LOSS for r in refused]
        print(f"| {name} | {len(rows)} | {len(passed)} | {_share(sum(lost), len(lost))} | {len(refused)} | "
              f"{_share(sum(kept), len(kept))} | {_models_ci(passed)} |")


def _decisions_table(rows: list[dict], groups: list[tuple[str, str]]) -> None:
    print("| data set | device | nights | registered | false passes (> 1 point lost) | refused by the accuracy gate | "
          "false rejections (within 1 point) | refused by other gates | mean drop of registered, points "
          "(95 % CI over models) |\n|---|---|---|---|---|---|---|---|---|")
    for dataset, device in groups:
        mine = [r for r in rows if dataset in ("all", r["dataset"]) and device in ("all", r["device"])]
        nights = {(r["dataset"], r["fold"], r["device"]) for r in mine}
        registered = [r for r in mine if r["registered"]]
        judged = [r for r in mine if r["validated_by_the_night"] and not r["registered"]]
        by_accuracy = [r for r in judged if _others_pass(r)]
        lost = [_mean(r["further_drop"]) > LOSS for r in registered]
        kept = [_mean(r["further_drop"]) <= LOSS for r in by_accuracy]
        print(f"| {dataset} | {device} | {len(nights)} | {len(registered)} | {_share(sum(lost), len(lost))} | "
              f"{len(by_accuracy)} | {_share(sum(kept), len(kept))} | {len(judged) - len(by_accuracy)} | "
              f"{_models_ci(registered)} |")


def _models_ci(registered: list[dict]) -> str:
    if not registered:
        return "-"
    ci = mean_ci(np.array([_mean(r["further_drop"]) for r in registered]))
    return f"{100 * ci['mean']:+.2f} ({100 * ci['low']:+.2f} to {100 * ci['high']:+.2f})"


def _share(k: int, n: int) -> str:
    return f"{k}/{n} ({100 * k / n:.0f} %)" if n else "-"


if __name__ == "__main__":
    main()
