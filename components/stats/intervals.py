"""Scores over held-out users: means with 95 % bootstrap intervals, and paired differences.

reports/tables.py writes them as text (`interval_text`).

A user, not a window, is the unit of evaluation: windows of one user are
alike (same body, same phone, same way of holding it), so 500 windows of one
user say little about the next user. Accuracy is therefore averaged per user
first (each held-out user counts once), and its 95 % interval comes from a
percentile bootstrap over the held-out users (resampling users with
replacement). Two models scored on the same users are compared user by user
(a paired difference), which removes the between-user spread both share.

With few users the percentile bootstrap is too narrow (with 5 users it
covers the truth less often than 95 %); the report says how many users an
interval rests on, and with one user there is no interval at all.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

LEVEL = 0.95


def mean_ci(values: Mapping[str, float] | np.ndarray, resamples: int = 10000, seed: int = 0) -> dict:
    """Mean of per-user values with its 95 % percentile-bootstrap interval over the users.

    Returns {"mean", "low", "high", "users", "std"}; low = high = mean for a single user (no interval).
    """
    v = np.asarray(list(values.values()) if isinstance(values, Mapping) else values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return {"mean": None, "low": None, "high": None, "users": 0, "std": None}
    mean = float(v.mean())
    if len(v) == 1 or resamples <= 0:
        return {"mean": mean, "low": mean, "high": mean, "users": int(len(v)), "std": 0.0}
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(resamples, len(v)))].mean(axis=1)
    low, high = np.quantile(means, [(1 - LEVEL) / 2, 1 - (1 - LEVEL) / 2])
    return {"mean": mean, "low": float(low), "high": float(high), "users": int(len(v)), "std": float(v.std(ddof=1))}


def paired_ci(a: Mapping[str, float], b: Mapping[str, float], resamples: int = 10000, seed: int = 0) -> dict:
    """a - b over the users both were scored on: mean difference with its bootstrap interval."""
    users = sorted(set(a) & set(b))
    return mean_ci(np.array([a[u] - b[u] for u in users]), resamples, seed) | {"paired_users": users}


def per_user(scores: Mapping[str, Mapping[str, float]], metric: str) -> dict[str, float]:
    """{user: value of `metric`} from {user: {metric: value, ...}}."""
    return {u: float(s[metric]) for u, s in scores.items()}


def summary(per_user_scores: Mapping[str, Mapping[str, float]], resamples: int, seed: int,
            metrics: tuple[str, ...] = ("accuracy", "macro_f1")) -> dict:
    """{metric: mean_ci(...)} for each metric of a per-user table."""
    return {m: mean_ci(per_user(per_user_scores, m), resamples, seed) for m in metrics}
