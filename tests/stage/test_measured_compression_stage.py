"""compress with refit rounds and measured selection, run as a stage on a timed device."""

from __future__ import annotations

import pytest

from components.stages import Place, execute


@pytest.mark.slow
def test_compress_refits_on_visited_structures_once_and_picks_by_measurement(make_params, tmp_path):
    """torch-1t (timed, no conversion): profile + fit a tiny latency model, then compress with two refit rounds.

    Every visited structure is profiled at most once: the stage's log never holds a key twice, never one the
    profile table has, and a second run over the same outputs profiles nothing twice.
    """
    import pyarrow.parquet as pq

    from components.profiling.table import ProfileLog
    from tests.conftest import QUICK_FIT_MIN_ROWS, QUICK_PROFILE, synthetic_task

    ingest, train = synthetic_task(tmp_path, widths=(16, 12, 16))
    params = make_params(
        *QUICK_PROFILE, f"ingest.output_dir={ingest}", f"train.output_dir={train}",
        f"fit_latency.min_rows={QUICK_FIT_MIN_ROWS}", "compress.cost=latency", "compress.budget.latency=0.5",
        "compress.max_accuracy_drop=1.0", "compress.baselines=[]", "compress.search.max_steps=40",
        "compress.search.eval_every=10", "compress.search.checkpoint_every=10", "compress.search.lambda_cost=10.0",
        "compress.search.threshold={start: 0.0, step: 0.1, every: 5, limit: 0.6}", "compress.fine_tune.epochs=1",
        "compress.refit.rounds=2", "compress.refit.steps=10", "compress.refit.max_items=12",
        "compress.select.candidates=2")
    execute("profile", params, "torch-1t")
    execute("fit_latency", params, "torch-1t")
    out = tmp_path / "c"
    result = execute("compress", params, "torch-1t", out=Place(out, tmp_path / "r"))
    m = result.metrics
    assert m["floor"]["measured"] > 0 and "predicted" in m["floor"]
    floor = m["floor"]["predicted"]  # judged on a measurement, the search aims a margin under what it can reach
    reach = floor + 0.5 * (1 - floor) if m["floor"]["above_budget"] else 0.5
    assert m["floor"]["aim"] == pytest.approx(reach * (1 - params.compress.budget_margin))
    assert 1 <= len(m["refit"]) <= 2 and m["refit"][0]["profiled"] > 0
    assert m["refit"][0]["before_refit"]["candidates"] >= 1
    timed = m["selection"]["timed"]
    assert sum(r["chosen"] for r in timed) == 1 and all(r["measured_ratio"] > 0 for r in timed)
    assert m["measured_ratio"] == next(r["measured_ratio"] for r in timed if r["chosen"])
    logged = [r["config_id"] for r in ProfileLog(out / "profile", {}).read().to_pylist()]
    assert len(logged) == len(set(logged))  # never twice
    table = params.path(params.profile.output_dir) / "torch-1t" / "profile.parquet"
    assert not set(logged) & set(pq.read_table(table).column("config_id").to_pylist())
    assert (out / "latency" / "latency_model.json").exists()
    assert m["refit"][0]["profiled"] <= 12
    text = (tmp_path / "r" / "comparison.md").read_text()
    assert "refitted where the search went" in text and "timed on the device against the baseline" in text
    # the same run again resumes the finished search: what was profiled is never profiled again. (It may time
    # structures the first run's refit.max_items cap left out: which ones the search visits depends on the
    # timings, so "none at all" held on most runs, not all.)
    again = execute("compress", params, "torch-1t", out=Place(out, tmp_path / "r"))
    relogged = [r["config_id"] for r in ProfileLog(out / "profile", {}).read().to_pylist()]
    assert len(relogged) == len(set(relogged)) and set(logged) <= set(relogged)
    assert all(r["profiled"] <= 12 for r in again.metrics["refit"])  # refit.max_items per round
