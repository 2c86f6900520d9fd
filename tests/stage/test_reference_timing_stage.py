"""Reference-ratio timing through the real profiler worker, and fit_latency on a table without ratios."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.devices.base import get_backend
from components.devices.pool import load_pool
from components.models.spec import LayerSpec
from components.profiling.items import Item
from components.profiling.runner import TimedProfiler
from components.stages import execute
from tests.conftest import PROJECT_ROOT, QUICK_PROFILE
from tests.unit.test_fit_latency import synthetic_rows
from tests.unit.test_reference_timing import _small_deepsense


def test_timed_profiler_rows_carry_the_ratio_to_the_reference(make_params, tmp_path):
    params = make_params(*QUICK_PROFILE, "profile.timing.min_rounds=4", "profile.timing.max_repeats=8")
    device = load_pool(PROJECT_ROOT / "infra" / "devices.yaml")["ort-1t"]
    backend = get_backend(device.runtime)
    reference = Item(model=_small_deepsense(16, 24))
    items = [Item(layer=LayerSpec("d", "linear", 16, 4)), Item(model=_small_deepsense(2, 3)), reference]
    profiler = TimedProfiler(device, backend, params.profile, tmp_path / "work", backend.version(),
                             reference=reference)
    rows = list(profiler.rows(items))
    assert [r["status"] for r in rows] == ["ok"] * 3, [r.get("error") for r in rows]
    for row in rows:
        assert row["reference_id"] == reference.key and row["reference_ms"] > 0
        assert 0 < row["ratio_q1"] <= row["ratio"] <= row["ratio_q3"]
    linear, small, itself = rows
    assert linear["ratio"] < small["ratio"] < 1.5 * itself["ratio"]
    assert itself["ratio"] == pytest.approx(1.0, rel=0.35)  # the reference against itself, other samples
    assert list((tmp_path / "work").glob("reference-*.onnx"))  # converted once, kept for the profiler's life
    again = list(profiler.rows(items[:1]))  # a second call reuses it
    assert again[0]["reference_id"] == reference.key

    plain = list(TimedProfiler(device, backend, params.profile, tmp_path / "plain", backend.version()).rows(items[:1]))
    assert plain[0]["status"] == "ok" and plain[0]["ratio"] is None and plain[0]["reference_id"] is None


@pytest.mark.slow
def test_a_table_without_ratios_fits_on_ms_and_says_so(project_params, make_params, tmp_path):
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from components.artifacts.seals import seal
    from components.profiling.table import OPTIONAL_COLUMNS, SCHEMA

    params = make_params()
    rows = synthetic_rows(params, per_kind=16, models=6)
    names = [n for n in SCHEMA.names if n not in OPTIONAL_COLUMNS]  # a table written before the ratio columns
    old = pa.Table.from_pylist([{n: r.get(n) for n in names} for r in rows],
                               schema=pa.schema([SCHEMA.field(n) for n in names]))
    folder = tmp_path / "out" / "profile" / "ort-1t"
    folder.mkdir(parents=True)
    pq.write_table(old, folder / "profile.parquet")
    seal(folder, ["profile.parquet"])  # as the profile stage seals its table
    result = execute("fit_latency", params, "ort-1t")
    info = json.loads(Path(result.model_path).read_text())["info"]
    assert info["target"] == "ms" and info["reference_ms"] is None and info["rows_with_ratio"] == 0
    assert result.metrics["target"] == "ms" and set(result.metrics["targets"]) == {"ms"}
