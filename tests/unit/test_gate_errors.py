"""benchmarks/gate_errors.py's replay: what a night registers under an accuracy rule, and the rows it keeps."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import benchmark_module


@pytest.fixture(scope="module")
def gate_errors():
    return benchmark_module("gate_errors")


def _row(fold: int, role: str, drops: list[float], further: list[float], **gates) -> dict:
    return {"dataset": "d", "fold": fold, "device": "ort-1t", "role": role,
            "gates": {"accuracy_drop": None, "latency": True} | gates,
            "test_drop": {f"u{i}": d for i, d in enumerate(drops)},
            "further_drop": {f"r{i}": d for i, d in enumerate(further)}}


def test_replay_takes_the_chosen_model_else_the_fallback_only_after_a_missed_accuracy_gate(gate_errors):
    rule = gate_errors.RULES["mean <= 1"]
    rows = [
        _row(0, "chosen", [0.0, 0.01], [0.0]), _row(0, "fallback", [0.0], [0.0]),  # chosen passes
        _row(1, "chosen", [0.03, 0.03], [0.0]), _row(1, "fallback", [0.0, 0.01], [0.02]),  # retried: fallback
        _row(2, "chosen", [0.0], [0.0], latency=False), _row(2, "fallback", [0.0], [0.0]),  # no retry: latency
    ]
    nights = {n["night"][1]: n for n in gate_errors.replay(rows, rule)}
    assert nights[0]["registered"]["role"] == "chosen" and nights[0]["refused"] == []
    assert nights[1]["registered"]["role"] == "fallback" and [r["role"] for r in nights[1]["refused"]] == ["chosen"]
    assert nights[2]["registered"] is None and [r["role"] for r in nights[2]["refused"]] == ["chosen"]


def test_rules_judge_the_held_out_drops_with_their_interval(gate_errors):
    steady, scattered = np.full(5, 0.008), np.array([-0.03, 0.05, -0.02, 0.04, 0.0])  # means 0.8 and 0.8 points
    assert gate_errors.RULES["mean <= 1"](steady) and gate_errors.RULES["mean <= 1"](scattered)
    assert gate_errors.RULES["mean <= 1, bootstrap upper <= 2"](steady)
    assert not gate_errors.RULES["mean <= 1, bootstrap upper <= 2"](scattered)  # the evidence is too thin


def test_saved_rows_are_read_per_data_set(gate_errors, tmp_path):
    for dataset, fold in (("a", 0), ("a", 1), ("b", 0)):
        (tmp_path / dataset).mkdir(exist_ok=True)
        (tmp_path / dataset / f"fold{fold}_ort-1t.json").write_text(json.dumps([{"dataset": dataset, "fold": fold}]))
    assert len(gate_errors.saved_rows(tmp_path)) == 3
    assert [r["fold"] for r in gate_errors.saved_rows(tmp_path, ["a"])] == [0, 1]
