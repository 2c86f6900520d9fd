"""Means over held-out users with bootstrap intervals, and paired differences."""

from __future__ import annotations

import numpy as np
import pytest

from components.reports.tables import interval_text
from components.stats.intervals import mean_ci, paired_ci, summary


def test_the_interval_brackets_the_mean_narrows_with_more_users_and_is_seeded():
    rng = np.random.default_rng(1)
    few = {f"u{i}": v for i, v in enumerate(rng.normal(0.9, 0.03, 5))}
    many = {f"u{i}": v for i, v in enumerate(rng.normal(0.9, 0.03, 40))}
    a, b = mean_ci(few, 2000, 0), mean_ci(many, 2000, 0)
    assert a["low"] <= a["mean"] <= a["high"] and a["users"] == 5
    assert a["mean"] == pytest.approx(np.mean(list(few.values())))
    assert (b["high"] - b["low"]) < (a["high"] - a["low"])
    assert mean_ci(few, 2000, 0) == a and mean_ci(few, 2000, 1) != a


def test_one_user_has_no_interval_and_says_so():
    ci = mean_ci({"a": 0.8})
    assert ci["low"] == ci["high"] == ci["mean"] == 0.8 and ci["users"] == 1
    assert interval_text(ci) == "0.800 (one user: no interval)"
    assert mean_ci({})["mean"] is None and interval_text(mean_ci({})) == "n/a"


def test_a_paired_difference_removes_the_spread_between_users():
    users = {f"u{i}": 0.6 + 0.07 * i for i in range(6)}  # users differ a lot
    better = {u: v + 0.01 for u, v in users.items()}  # ... but the model is one point better on each
    diff = paired_ci(better, users, 2000, 0)
    assert diff["mean"] == pytest.approx(0.01) and diff["low"] == pytest.approx(0.01)
    assert diff["paired_users"] == sorted(users)
    unpaired = mean_ci(better, 2000, 0)
    assert unpaired["high"] - unpaired["low"] > 0.05  # the same users, not paired: the gain is lost in the spread
    only_shared = paired_ci({"a": 1.0, "b": 0.5}, {"a": 0.9, "c": 0.1})
    assert only_shared["users"] == 1 and only_shared["mean"] == pytest.approx(0.1)


def test_summary_and_text():
    table = {"a": {"accuracy": 0.9, "macro_f1": 0.8}, "b": {"accuracy": 0.7, "macro_f1": 0.6}}
    s = summary(table, 1000, 0)
    assert s["accuracy"]["mean"] == pytest.approx(0.8) and s["macro_f1"]["mean"] == pytest.approx(0.7)
    assert interval_text(s["accuracy"]).startswith("0.800 (95 % CI 0.700 to 0.900, 2 users)")
