"""The profile stage: pool file, sampler, analytic MCU model, timing protocol, faults, resume."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from components import profile
from components.config import ConfigError
from components.devices.base import BackendError, get_backend
from components.devices.mcu import model_resources
from components.devices.pool import load_pool, select
from components.devices.reference import run_reference
from components.devices.timing import measure, measure_many, moved_less_than
from components.models.deepsense import deepsense_spec
from components.models.spec import LayerSpec
from components.profiling.items import Item, example_input
from components.profiling.sampler import reference_item, sample_items, sampler_params
from components.settings.profile import TimingParams
from components.stages import execute
from tests.conftest import PROJECT_ROOT, QUICK_PROFILE, subprocess_env

POOL = {
    "torch-1t": {"runtime": "torch", "threads": 1, "queue": "default", "pool": "local_cpu", "reach": "local"},
    "crashing": {"runtime": "tests.stage.faulty_backends:CrashingBackend", "threads": 1, "queue": "default",
                 "pool": "local_cpu", "reach": "local"},
    "slow": {"runtime": "tests.stage.faulty_backends:SlowBackend", "threads": 1, "queue": "default",
             "pool": "local_cpu", "reach": "local"},
    "mcu": {"runtime": "mcu", "threads": 1, "queue": "default", "pool": "analytic", "reach": "local",
            "mcu": {"sram_bytes": 262144, "flash_bytes": 1048576, "clock_hz": 64000000, "cycles_per_mac": 2.0,
                    "layer_overhead_cycles": 5000, "weight_bytes": 1, "bias_bytes": 4, "activation_bytes": 1}},
}


@pytest.fixture
def pool_file(tmp_path: Path) -> Path:
    path = tmp_path / "devices.yaml"
    path.write_text(yaml.safe_dump({"devices": POOL}))
    return path


@pytest.fixture
def quick(make_params, pool_file):
    def make(*overrides: str):
        return make_params(*QUICK_PROFILE, f"profile.devices_file={pool_file}", *overrides)

    return make


# ---- the pool ------------------------------------------------------------------------------------------------


def test_project_pool_has_every_runtime_and_valid_entries():
    pool = load_pool(PROJECT_ROOT / "infra" / "devices.yaml")
    assert {d.runtime for d in pool.values()} >= {"onnxruntime", "tflite", "torch", "mcu"}
    assert {pool["ort-1t"].threads, pool["ort-2t"].threads} == {1, 2}
    assert all(d.queue and d.pool for d in pool.values())
    assert pool["cortex-m4"].mcu.sram_bytes == 256 * 1024 and pool["cortex-m4"].mcu.flash_bytes == 1024 * 1024


@pytest.mark.parametrize("entry, message", [
    ({"runtime": "torch", "threads": 1, "queue": "q", "pool": "p"}, "reach: missing key"),
    ({"runtime": "torch", "threads": 0, "queue": "q", "pool": "p", "reach": "local"}, "threads: must be at least 1"),
    ({"runtime": "torch", "threads": 1, "queue": "q", "pool": "p", "reach": "local", "thread": 2},
     "unknown key; did you mean"),
    ({"runtime": "mcu", "threads": 1, "queue": "q", "pool": "p", "reach": "local"}, "`mcu` section is required"),
])
def test_pool_entries_are_checked(tmp_path, entry, message):
    path = tmp_path / "devices.yaml"
    path.write_text(yaml.safe_dump({"devices": {"d": entry}}))
    with pytest.raises(ConfigError, match=message):
        load_pool(path)


def test_unknown_device_and_runtime_are_refused(pool_file):
    with pytest.raises(ConfigError, match="unknown device 'nope'; the pool has: crashing, mcu, slow, torch-1t"):
        select(load_pool(pool_file), ["nope"])
    with pytest.raises(BackendError, match="unknown runtime 'coreml'"):
        get_backend("coreml")


# ---- sampler, explanatory variables, analytic model ----------------------------------------------------------


def test_sampler_is_seeded_and_covers_widths_around_multiples_and_model_layers(project_params):
    p = sampler_params(project_params)
    items = sample_items(p, project_params.train)
    again = sample_items(p, project_params.train)
    assert [i.key for i in items] == [i.key for i in again]
    assert len({i.key for i in items}) == len(items)
    for kind in p.kinds:
        of_kind = [i for i in items if i.kind == kind]
        assert len(of_kind) == p.configs_per_kind
        sweep = sorted(i.layer.out_features for i in of_kind if i.sweep == "width")
        assert sweep == list(range(sweep[0], sweep[0] + len(sweep)))  # consecutive widths ...
        assert any(w % max(p.multiples) == 0 for w in sweep)  # ... through a multiple of 16
        in_models = [i.layer for i in of_kind if i.sweep == "model"]  # layers as DeepSense models have them
        assert len(in_models) == p.configs_per_kind // 3
        assert all(layer.name.startswith(("sensor", "merge", "rnn", "output")) for layer in in_models)
    assert sum(i.kind == "model" for i in items) == p.models


@pytest.mark.parametrize("dataset, shape", [("uci_hapt", (8, 2, 3, 2, 16)), ("uci_har", (8, 2, 3, 2, 16)),
                                            ("wisdm", (4, 1, 3, 2, 32)), ("hhar_sa", (8, 1, 3, 2, 16))])
def test_profiled_whole_models_take_the_configured_data_sets_input_shape(dataset, shape):
    from components.config import load_params

    params = load_params(PROJECT_ROOT / "params.yaml", [f"ingest.dataset={dataset}"])
    assert sampler_params(params).model_input_shape == shape
    models = [i for i in sample_items(sampler_params(params), params.train) if i.model]
    assert models and all(i.model.input_shape == shape for i in models)
    fixed = load_params(PROJECT_ROOT / "params.yaml", ["profile.sampler.model_input_shape=[4, 1, 3, 2, 8]"])
    assert sampler_params(fixed).model_input_shape == (4, 1, 3, 2, 8)  # a shape in params wins


def test_mcu_model_counts_flash_sram_and_macs(project_params):

    pool_mcu = load_pool(PROJECT_ROOT / "infra" / "devices.yaml")["cortex-m4"].mcu  # 16x8: int16 activations
    mcu = pool_mcu.model_copy(update=dict(weight_bytes=1, bias_bytes=4, activation_bytes=1))  # plain int8
    spec = deepsense_spec((4, 2, 3, 2, 10), ("a", "b"), sensor_filters=8, sensor_kernels=(3,), first_stride=1,
                          merge_filters=8, merge_kernels=(3,), rnn="gru", rnn_units=16, rnn_layers=1, dropout=0)
    figures = model_resources(spec, mcu)
    assert figures["method"] == "computed" and figures["macs"] == spec.macs
    # int8 weights + int32 biases: conv 8*6*3 + 8*4 per sensor, merge 8*16*3 + 8*4, GRU 3*(16*48+16*16) + 2*3*16*4
    assert figures["flash_bytes"] == 2 * (144 + 32) + (384 + 32) + (3 * (768 + 256) + 384) + (2 * 16 + 2 * 4)
    # the peak is sensor 0's first conv: the window (480, still needed by sensor 1) + its slice in (4*6*10),
    # out (4*8*8) and im2col buffer (2*6*3*2); sensor 1's first conv holds sensor 0's output instead (824)
    assert figures["peak_sram_bytes"] == 480 + 240 + 256 + 72
    assert figures["fits_sram"] and figures["fits_flash"]
    assert figures["latency_ms"] == pytest.approx((spec.macs * 2.0 + 5 * 5000) / 64e6 * 1e3)
    # the pool's part runs the 16x8 file: activations twice the bytes, int64 biases (4 more bytes each)
    wide = model_resources(spec, pool_mcu)
    assert (pool_mcu.activation_bytes, pool_mcu.bias_bytes) == (2, 8)
    assert wide["peak_sram_bytes"] == 2 * (480 + 240 + 256) + 72  # the im2col buffer is int16 either way
    biases = 2 * 8 + 8 + 2 * 3 * 16 + 2
    assert wide["flash_bytes"] == figures["flash_bytes"] + 4 * biases


# ---- timing protocol ----------------------------------------------------------------------------------------


def test_timing_samples_round_robin_until_each_median_is_stable():
    p = TimingParams(warmup_runs=1, min_sample_s=0.001, samples_per_round=2, min_rounds=3, max_repeats=60,
                     max_time_s=2.0, rel_tolerance=0.05, reference_every=4)
    a = np.random.default_rng(0).random((48, 48))
    b = np.random.default_rng(1).random((96, 96))
    small, large = measure_many([lambda: a @ a, lambda: b @ b], p)
    for t in (small, large):
        assert 6 <= t.repeats <= 60 and t.repeats % 2 == 0 and t.inner_loops >= 1
        assert t.q1_ms <= t.latency_ms <= t.q3_ms and t.iqr_ms >= 0
        # at least half the samples last as long as the median: timed_s counts every one of them
        assert t.timed_s >= (t.repeats // 2) * t.inner_loops * t.latency_ms / 1e3
    assert large.latency_ms > small.latency_ms


def test_busy_time_buys_extra_rounds_and_caps_hold():
    p = TimingParams(warmup_runs=0, min_sample_s=0.001, samples_per_round=1, min_rounds=2, max_repeats=400,
                     max_time_s=0.2, rel_tolerance=0.99, reference_every=4)
    quick = measure(lambda: sum(range(200)), p)
    busy = measure(lambda: sum(range(200)), p, busy_s=0.1)
    assert quick.repeats == 2  # stable after min_rounds with this tolerance
    assert busy.timed_s >= 0.1 and busy.repeats > quick.repeats
    capped = measure(lambda: sum(range(200)), p, busy_s=10.0)
    assert capped.timed_s < 0.25  # max_time_s wins over busy time


def test_stability_rule():
    assert not moved_less_than([1.0, 1.0], before=0, rel_tolerance=0.01)  # nothing to compare with
    assert moved_less_than([1.0] * 8, before=6, rel_tolerance=0.01)
    assert not moved_less_than([1.0] * 5 + [3.0] * 5, before=8, rel_tolerance=0.01)  # the median still moves


# ---- runtimes agree with torch ------------------------------------------------------------------------------

LAYERS = [
    LayerSpec("c", "conv1d", 6, 13, 3, 1, 16, 8),
    LayerSpec("c", "conv1d", 16, 8, 4, 2, 21, 1),
    LayerSpec("g", "gru", 40, 17, length=8),
    LayerSpec("l", "lstm", 40, 17, length=8),
    LayerSpec("d", "linear", 120, 6, instances=3),
]


@pytest.mark.parametrize("layer", LAYERS, ids=lambda layer: f"{layer.kind}-k{layer.kernel}s{layer.stride}")
def test_onnxruntime_matches_torch_for_every_layer_kind(tmp_path, layer):
    _assert_onnxruntime_matches_torch(Item(layer=layer), tmp_path, threads=1)


def test_onnxruntime_matches_torch_on_a_whole_deepsense(tmp_path):
    spec = deepsense_spec((8, 1, 3, 2, 16), tuple("abcdef"), sensor_filters=12, sensor_kernels=(3, 3),
                          first_stride=1, merge_filters=10, merge_kernels=(3,), rnn="gru", rnn_units=14,
                          rnn_layers=2, dropout=0.2)
    _assert_onnxruntime_matches_torch(Item(model=spec), tmp_path, threads=2)


def _assert_onnxruntime_matches_torch(item: Item, tmp_path: Path, threads: int) -> None:
    backend = get_backend("onnxruntime")
    backend.convert(item, tmp_path / "m.onnx")
    x = example_input(item)
    out = backend.load(item, tmp_path / "m.onnx", threads=threads).predict(x)
    np.testing.assert_allclose(out, run_reference(item, x), rtol=1e-4, atol=1e-5)


def test_onnxruntime_refuses_a_corrupt_file(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"not a model")
    with pytest.raises(BackendError, match="onnxruntime cannot load m.onnx"):
        get_backend("onnxruntime").load(Item(layer=LAYERS[0]), tmp_path / "m.onnx", threads=1)


# ---- the stage ----------------------------------------------------------------------------------------------


def _table(result) -> list[dict]:
    return pq.read_table(result.table_path).to_pylist()


def test_profile_times_a_device_and_writes_table_plots_and_noise(quick):
    params = quick()
    result = execute("profile", params, "torch-1t")
    rows = _table(result)
    reference = reference_item(params)
    items = [reference, *sample_items(sampler_params(params), params.train)]  # the reference's row first
    assert [r["config_id"] for r in rows] == [i.key for i in items]
    assert all(r["status"] == "ok" and r["method"] == "timed" and r["latency_ms"] > 0 for r in rows)
    assert all(r["reference_id"] == reference.key and r["ratio"] > 0 and r["reference_ms"] > 0 for r in rows)
    assert all(r["q1_ms"] <= r["latency_ms"] <= r["q3_ms"] and r["repeats"] >= 3 for r in rows)
    assert sum(r["layers"] for r in rows if r["kind"] == "model") == sum(len(i.layers) for i in items if i.model)
    conv = next(r for r in rows if r["kind"] == "conv1d")
    assert conv["flops"] == 2 * conv["macs"] and conv["bytes_read"] == conv["input_bytes"] + conv["weight_bytes"]
    assert json.loads(conv["config"])["description"]["out_features"] == conv["out_features"]
    reports = params.path(params.profile.report_dir) / "torch-1t"
    metrics = json.loads((reports / "metrics.json").read_text())
    assert metrics["configs"] == len(items) and metrics["failed_share"] == 0 and metrics["median_relative_iqr"] >= 0
    assert (reports / "latency_vs_width.png").stat().st_size > 10_000
    assert (reports / "latency_vs_flops.png").exists()


def test_mcu_rows_say_computed_not_timed(quick):
    result = execute("profile", quick(), "mcu")
    rows = _table(result)
    assert {r["method"] for r in rows} == {"computed"} and all(r["timed_s"] is None for r in rows)
    assert all(r["peak_sram_bytes"] > 0 and r["flash_bytes"] > 0 for r in rows)
    assert result.metrics["method"] == "computed"


@pytest.mark.slow
def test_crashes_and_refusals_are_recorded_and_the_share_gate_fails_the_device(quick):
    params = quick("profile.sampler.configs_per_kind=6", "profile.max_failed_share=0.9")
    result = execute("profile", params, "crashing")
    rows = _table(result)
    by_width = {r["out_features"]: r for r in rows if r["kind"] != "model"}
    crashed = [r for w, r in by_width.items() if w % 3 == 0]
    died = [r for w, r in by_width.items() if w % 3 == 1 and r["kind"] != "linear"]
    refused = [r for w, r in by_width.items() if w % 3 == 1 and r["kind"] == "linear"]
    assert crashed and died and refused
    assert all(r["status"] == "failed" and r["failed_step"] == "convert" and "SIGSEGV" in r["error"]
               for r in crashed)
    # a timing worker that dies takes its batch down; the batch is retimed item by item to find the culprit
    assert all(r["failed_step"] == "time" and "time worker died (signal SIGSEGV)" in r["error"] for r in died)
    assert all(r["failed_step"] == "time" and "runtime refuses width" in r["error"] for r in refused)
    assert all(r["status"] == "ok" and r["latency_ms"] > 0 for w, r in by_width.items() if w % 3 == 2)

    strict = quick("profile.sampler.configs_per_kind=6", "profile.max_failed_share=0.1")
    with pytest.raises(profile.ProfileFailed, match=r"device crashing: \d+ of \d+ configurations failed"):
        execute("profile", strict, "crashing")


@pytest.mark.slow
def test_a_failing_device_fails_the_command_while_the_others_finish(quick, pool_file, tmp_path):
    params_path = tmp_path / "p.yaml"
    params = quick("profile.max_failed_share=0.0")
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    raw["profile"] = json.loads(json.dumps(params.to_dict()["profile"]))
    raw["pipeline"]["state_dir"] = str(tmp_path / "state")
    params_path.write_text(yaml.safe_dump(raw))
    cmd = [sys.executable, "-m", "components", "profile", "--params", str(params_path),
           "--device", "crashing", "--device", "mcu"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(tmp_path), cwd=PROJECT_ROOT)
    assert done.returncode == 1, done.stderr
    assert "error: device crashing:" in done.stderr and "profile failed on crashing" in done.stderr
    assert "profile mcu: " in done.stdout  # the device after the failing one still ran
    assert (Path(params.profile.output_dir) / "mcu" / "profile.parquet").exists()


def test_an_interrupted_run_resumes_without_duplicates_or_rewrites(quick, tmp_path):
    params = quick("profile.flush_rows=1", "profile.batch_size=1", "profile.sampler.configs_per_kind=3")
    params_path = tmp_path / "p.yaml"
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    raw["profile"] = json.loads(json.dumps(params.to_dict()["profile"]))
    raw["ingest"]["dataset"] = params.ingest.dataset  # whole-model configurations take the data set's input shape
    raw["pipeline"]["state_dir"] = str(tmp_path / "state")
    params_path.write_text(yaml.safe_dump(raw))
    parts = Path(params.profile.output_dir) / "slow" / "parts"
    cmd = [sys.executable, "-m", "components", "profile", "--params", str(params_path), "--device", "slow"]
    proc = subprocess.Popen(cmd, env=subprocess_env(tmp_path), cwd=PROJECT_ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(list(parts.glob("*.parquet"))) < 4 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    before = {p.name: p.read_bytes() for p in parts.glob("*.parquet")}
    assert 4 <= len(before) < 3 * 4 + 1, "the run should have been interrupted part-way"

    result = execute("profile", params, "slow")
    rows = _table(result)
    keys = [r["config_id"] for r in rows]
    sampled = sample_items(sampler_params(params), params.train)
    assert len(keys) == len(set(keys)) == len(sampled) + 1  # and the reference model's row
    assert result.metrics["profiled_this_run"] == len(keys) - len(before)
    assert all((parts / name).read_bytes() == data for name, data in before.items())  # append-only


def test_a_changed_timing_protocol_starts_a_new_log(quick, caplog):
    execute("profile", quick(), "mcu")
    assert execute("profile", quick(), "mcu").metrics["profiled_this_run"] == 0  # unchanged: nothing to redo
    result = execute("profile", quick("profile.timing.min_rounds=4"), "mcu")
    assert result.metrics["profiled_this_run"] == result.metrics["configs"]
    assert "starting a new profile log" in caplog.text
