"""benchmarks/train_baseline.py --paired: two k-fold runs compared user by user."""

from __future__ import annotations

import pytest

from tests.conftest import benchmark_module


@pytest.fixture(scope="module")
def bench():
    return benchmark_module("train_baseline")


def _run(dataset: str, accuracies: dict[str, float]) -> dict:
    return {"dataset": dataset, "report": {"kfold": {"per_user": {
        u: {"deep_accuracy": a} for u, a in accuracies.items()}}}}


def test_the_difference_is_paired_over_the_users_both_runs_scored(bench):
    a = [_run("uci_har", {"s1": 0.95, "s2": 0.90, "s3": 0.80}), _run("wisdm", {"u1": 0.7})]
    b = [_run("uci_har", {"s1": 0.94, "s2": 0.88, "s4": 0.99})]
    rows = bench.paired(a, b).splitlines()
    assert len(rows) == 3  # header, rule, uci_har only: wisdm is not in B
    # s3 and s4 were scored by one run each: the pair is s1, s2 (+0.01, +0.02)
    assert rows[2].startswith("| uci_har | 2 | 0.925 (") and "| +0.0150 (+0.0100 to +0.0200) |" in rows[2]
