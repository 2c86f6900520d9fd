"""benchmarks/compressed_latency.py's structures: compressed the way the search leaves them, each distinct."""

from __future__ import annotations

from components.models.deepsense import deepsense_spec
from tests.conftest import benchmark_module


def test_the_drawn_structures_are_distinct_narrower_and_keep_one_element_per_layer():
    spec = deepsense_spec((10, 2, 3, 2, 10), tuple("abcdef"), sensor_filters=64, sensor_kernels=(2, 3, 2),
                          first_stride=1, merge_filters=64, merge_kernels=(2, 2, 2), rnn="gru", rnn_units=120,
                          rnn_layers=2, dropout=0.2)
    bench = benchmark_module("compressed_latency")
    drawn = bench.structures(spec, 30, 0.05, 0.8, seed=0)
    assert len(drawn) == 30 and len({tuple(sorted(w.items())) for w in drawn}) == 30
    widths = {layer.name: layer.out_features for layer in spec.layers}
    for w in drawn:
        assert "output" not in w and set(w) == set(widths) - {"output"}
        assert all(1 <= w[name] <= widths[name] for name in w)
    shares = [sum(w.values()) / sum(widths[n] for n in w) for w in drawn]
    assert min(shares) < 0.2 and max(shares) > 0.3  # small and large structures both drawn
    assert drawn == bench.structures(spec, 30, 0.05, 0.8, seed=0)  # the same with the same seed


def test_a_share_of_the_drawn_structures_have_layers_removed_whole():
    from components.pruning.costs import resized_spec
    from components.pruning.groups import removable

    spec = deepsense_spec((10, 2, 3, 2, 10), tuple("abcdef"), sensor_filters=64, sensor_kernels=(2, 3, 2),
                          first_stride=1, merge_filters=64, merge_kernels=(2, 2, 2), rnn="gru", rnn_units=120,
                          rnn_layers=2, dropout=0.2)
    bench = benchmark_module("compressed_latency")
    drawn = bench.structures(spec, 30, 0.05, 0.8, seed=0, removed_share=0.5)
    shallower = [w for w in drawn if 0 in w.values()]
    assert 6 <= len(shallower) <= 24
    for w in shallower:  # only layers the search may remove, and each builds
        assert {name for name, n in w.items() if n == 0} <= set(removable(spec))
        assert resized_spec(spec, w).removed


def test_runs_are_combined_on_each_structures_median_measurement():
    bench = benchmark_module("compressed_latency")

    def row(measured, widths=None):
        return {"device": "d", "model": "m", "widths": widths or {"a": 1}, "measured_ratio": measured,
                "predicted_ratio": 0.5, "error": abs(0.5 - measured) / measured}

    combined = bench.median_of([[row(0.40), row(0.2, {"a": 0})], [row(0.50), row(0.2, {"a": 0})], [row(0.62)]])
    first = next(r for r in combined if r["widths"] == {"a": 1})
    assert first["measured_ratio"] == 0.5 and first["error"] == 0.0 and first["runs"] == 3
    assert next(r for r in combined if r["widths"] == {"a": 0})["runs"] == 2
