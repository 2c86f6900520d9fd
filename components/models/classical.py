"""The classical reference: per-axis statistics of the time-domain windows + a random forest.

Trained and scored on exactly the same users as the deep model, so the deep
baseline's number has something to be compared with.
"""

from __future__ import annotations

import numpy as np

from components.settings.train import ClassicalParams


def features(signal: np.ndarray) -> np.ndarray:
    """signal [N, sensors, axes, time] -> [N, features]: statistics per axis and of each sensor's magnitude."""
    magnitude = np.sqrt((signal.astype(np.float64) ** 2).sum(axis=2, keepdims=True))
    channels = np.concatenate([signal.astype(np.float64), magnitude], axis=2)  # [N, S, A+1, L]
    diffs = np.abs(np.diff(channels, axis=-1))
    stats = [
        channels.mean(-1), channels.std(-1), channels.min(-1), channels.max(-1), np.median(channels, -1),
        np.percentile(channels, 10, axis=-1), np.percentile(channels, 90, axis=-1),
        (channels ** 2).mean(-1), diffs.mean(-1), diffs.std(-1),
    ]
    return np.stack(stats, axis=-1).reshape(len(signal), -1)


def fit_predict(train_signal: np.ndarray, y_train: np.ndarray, test_signal: np.ndarray, cfg: ClassicalParams,
                seed: int, threads: int) -> np.ndarray:
    from sklearn.ensemble import RandomForestClassifier

    forest = RandomForestClassifier(n_estimators=cfg.n_estimators, max_depth=cfg.max_depth, random_state=seed,
                                    n_jobs=threads)
    forest.fit(features(train_signal), y_train)
    return forest.predict(features(test_signal))
