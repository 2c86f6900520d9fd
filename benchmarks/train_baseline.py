"""Leave-one-user-out on the shared HHAR_SA users: the deep baseline against the classical reference.

Ingests HHAR_SA into a temporary folder, then for every user trains the
configured model on the other users and scores it on that user, next to the
random forest on per-axis statistics. Prints per-user and mean accuracy and
macro-F1, parameters, MACs per window and training wall time per fold.

    python benchmarks/train_baseline.py [-p train.arch=cnn] [-p ingest.hhar_sa.intervals=4] [--users a b]

Uses every core the machine gives torch (train.threads).
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from components import classical, ingest, models, training
from components.config import load_params
from components.train import load_windows

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-p", dest="overrides", action="append", default=[], help="section.key=value")
    parser.add_argument("--users", nargs="*", default=None, help="only these held-out users (default: all)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="train-bench-") as tmp:
        work = Path(tmp)
        params = load_params(ROOT / "params.yaml", [
            "ingest.dataset=hhar_sa", f"ingest.output_dir={work / 'ingest'}", f"ingest.report_dir={work / 'r'}",
            f"pipeline.state_dir={work / 'state'}", *args.overrides])
        ingest.run(params)
        windows = load_windows(work / "ingest")
        cfg = params.train
        spec = models.spec_from_params(cfg.arch, cfg, tuple(windows.x.shape[1:]), windows.classes)
        y = windows.meta["label"].to_numpy().astype(np.int64)
        users = windows.meta["user"].to_numpy().astype(str)
        print(f"{cfg.arch}: {spec.params:,} parameters, {spec.macs:,} MACs per window, input {windows.x.shape[1:]}, "
              f"torch threads {cfg.threads}")
        print(f"{'user':>5} {'windows':>7} {'deep acc':>8} {'deep F1':>8} {'RF acc':>7} {'RF F1':>6} "
              f"{'epochs':>6} {'fit s':>6}")
        rows = []
        for user in args.users or sorted(set(users.tolist())):
            train_idx, test_idx = np.flatnonzero(users != user), np.flatnonzero(users == user)
            t = time.perf_counter()
            model, history = training.fit(spec, windows.x[train_idx], y[train_idx], cfg, users=users[train_idx])
            fit_s = time.perf_counter() - t
            deep = training.scores(y[test_idx], training.predict(model, windows.x[test_idx]), users[test_idx],
                                   len(windows.classes))
            rf = training.scores(y[test_idx], classical.fit_predict(windows.signal[train_idx], y[train_idx],
                                                                    windows.signal[test_idx], cfg.classical,
                                                                    cfg.seed, cfg.threads),
                                 users[test_idx], len(windows.classes))
            rows.append((deep["accuracy"], deep["macro_f1"], rf["accuracy"], rf["macro_f1"], fit_s))
            print(f"{user:>5} {len(test_idx):>7} {deep['accuracy']:>8.3f} {deep['macro_f1']:>8.3f} "
                  f"{rf['accuracy']:>7.3f} {rf['macro_f1']:>6.3f} {len(history.epochs):>6} {fit_s:>6.1f}", flush=True)
        mean = np.mean(rows, axis=0)
        print(f"{'mean':>5} {'':>7} {mean[0]:>8.3f} {mean[1]:>8.3f} {mean[2]:>7.3f} {mean[3]:>6.3f} {'':>6} "
              f"{mean[4]:>6.1f}")


if __name__ == "__main__":
    main()
