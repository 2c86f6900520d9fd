"""What the published per-user standardisation does to a set's windows: amplitude per class against class mix.

The AdaTime files of WISDM and HHAR_SA are standardised per user and channel (each user's own mean and
standard deviation), so a window's amplitude in those units depends on what else that user recorded: a user
who never jogged is divided by a smaller deviation, and their walking looks as strong as other users'
jogging. For every user this prints the class mix and the median within-window amplitude (standard deviation
over time, mean over axes) of each class; then, over users, how walking's amplitude moves with the share of
the most energetic class; and, given a k-fold report of `train_baseline.py --json`, each user's held-out
accuracy beside its mix, and where its commonest errors went.

    python benchmarks/per_user_scale.py [--dataset wisdm] [--kfold results.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from components.config import load_params
from components.data.window_sets import load_hhar_sa, load_wisdm

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=["wisdm", "hhar_sa"], default="wisdm")
    parser.add_argument("--kfold", type=Path, default=None,
                        help="train_baseline.py --json output with this data set: adds each user's accuracy")
    args = parser.parse_args()
    params = load_params(ROOT / "params.yaml", [])
    root = params.path(params.ingest.data_root)
    ws = (load_wisdm(root / params.ingest.wisdm.dir) if args.dataset == "wisdm"
          else load_hhar_sa(root / params.ingest.hhar_sa.dir))
    names = list(ws.label_names)
    amplitude = ws.signal[:, 0].std(axis=2).mean(axis=1)
    per_class = np.array([np.median(amplitude[ws.label == c]) for c in range(len(names))])
    loud = int(per_class.argmax())  # the most energetic class: jogging on WISDM, stairsdown on HHAR_SA
    walk = next(i for i, n in enumerate(names) if n in ("walking", "walk"))  # WISDM's name, HHAR_SA's
    accuracy, errors = _accuracies(args.kfold, args.dataset)

    print(f"{args.dataset}: {len(ws.label)} windows, {len(set(ws.user))} users; median amplitude per class over "
          "every user: " + ", ".join(f"{n} {a:.2f}" for n, a in zip(names, per_class)))
    print(f"\n| user | windows | {' | '.join(f'{n} share' for n in names)} | "
          f"{names[walk]} amplitude | {names[loud]} amplitude |"
          + (" held-out accuracy | commonest errors (windows) |" if accuracy else "")
          + "\n|---|---|" + "---|" * (len(names) + 2) + ("---|---|" if accuracy else ""))
    rows = []
    for user in sorted(set(ws.user)):
        mine = ws.user == user
        mix = np.bincount(ws.label[mine], minlength=len(names)) / mine.sum()
        amp = [float(np.median(amplitude[mine & (ws.label == c)])) if (mine & (ws.label == c)).any() else np.nan
               for c in (walk, loud)]
        rows.append((user, mix, amp, accuracy.get(user)))
        print(f"| {user} | {mine.sum()} | " + " | ".join(f"{s:.2f}" for s in mix) + " | "
              + " | ".join("-" if np.isnan(a) else f"{a:.2f}" for a in amp) + " |"
              + (f" {accuracy[user]:.3f} | {', '.join(f'{k} ({n})' for k, n in errors.get(user, {}).items())} |"
                 if user in accuracy else ""))

    share = np.array([r[1][loud] for r in rows])
    walking = np.array([r[2][0] for r in rows])
    has = ~np.isnan(walking)
    print(f"\n{names[walk]} amplitude, users with no {names[loud]}: "
          f"{_spread(walking[has & (share == 0)])}; users with {names[loud]}: {_spread(walking[has & (share > 0)])}; "
          f"{names[loud]} amplitude over every user: {_spread(np.array([r[2][1] for r in rows]))}")
    print(f"correlation over users of {names[loud]} share and {names[walk]} amplitude: "
          f"{np.corrcoef(share[has], walking[has])[0, 1]:+.2f}")
    if accuracy:
        acc = np.array([r[3] if r[3] is not None else np.nan for r in rows])
        ok = ~np.isnan(acc)
        print(f"correlation over users of {names[walk]} amplitude and held-out accuracy: "
              f"{np.corrcoef(walking[ok & has], acc[ok & has])[0, 1]:+.2f}")
        print(f"held-out accuracy, users with no {names[loud]}: {_spread(acc[ok & (share == 0)])}; "
              f"the others: {_spread(acc[ok & (share > 0)])}")


def _accuracies(path: Path | None, dataset: str) -> tuple[dict[str, float], dict[str, dict]]:
    """Each user's held-out accuracy and commonest errors from a train_baseline.py --json file."""
    if path is None:
        return {}, {}
    for result in json.loads(path.read_text()):
        if result["dataset"] == dataset:
            per_user = result["report"]["kfold"]["per_user"]
            return ({u: r["deep_accuracy"] for u, r in per_user.items()},
                    {u: r.get("deep_errors", {}) for u, r in per_user.items()})
    raise SystemExit(f"{path} holds no k-fold report of {dataset}")


def _spread(values: np.ndarray) -> str:
    values = values[~np.isnan(values)]
    if not len(values):
        return "-"
    return f"median {np.median(values):.2f} ({values.min():.2f}-{values.max():.2f}, {len(values)} users)"


if __name__ == "__main__":
    main()
