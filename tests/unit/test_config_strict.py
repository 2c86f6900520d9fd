"""The loader refuses what it used to accept: unknown keys inside mappings, numbers out of range, duplicate
keys; and it reads YAML 1.2 floats (`1e-3`). Each case feeds the real bad input and checks the message names it."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest
import yaml
from annotated_types import Ge, Gt, Le, Lt
from pydantic import AfterValidator, BaseModel

from components.config import ConfigError, Params, load_params
from components.devices.pool import Device, McuSpec, load_pool
from components.settings.base import unwrap
from tests.conftest import PROJECT_ROOT

PARAMS = PROJECT_ROOT / "params.yaml"
POOL = PROJECT_ROOT / "infra" / "devices.yaml"

ENTRY = "    runtime: onnxruntime\n    threads: 1\n    queue: default\n    pool: local_cpu\n    reach: local\n"
MCU = {"sram_bytes": 262144, "flash_bytes": 1048576, "clock_hz": 64000000, "cycles_per_mac": 2.0,
       "layer_overhead_cycles": 5000, "weight_bytes": 1, "bias_bytes": 8, "activation_bytes": 2}


def _pool_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "devices.yaml"
    path.write_text(text)
    return path


def _mcu_pool(tmp_path: Path, **mcu) -> Path:
    entry = {"runtime": "mcu", "threads": 1, "queue": "q", "pool": "p", "reach": "local", "mcu": {**MCU, **mcu}}
    return _pool_file(tmp_path, yaml.safe_dump({"devices": {"m4": entry}}))


def test_the_projects_own_files_still_load():
    params = load_params(PARAMS)
    assert params.compress.budget == {"params": 0.07, "latency": 0.3, "mcu": 0.1}
    assert set(params.validate.formats) == {"onnxruntime", "tflite", "torch", "mcu"}
    assert list(load_pool(POOL)) == ["ort-1t", "ort-2t", "tflite-1t", "torch-1t", "cortex-m4"]


# ---- 1. unknown keys inside mappings ------------------------------------------------------------------------


@pytest.mark.parametrize("override, message", [
    ("compress.budget.latncy=0.3", "compress.budget.latncy: unknown key; did you mean 'compress.budget.latency'?"),
    # a timed runtime has no cost of its own
    ("compress.budget.torch=0.3", "compress.budget.torch: unknown key; known: params, latency, mcu"),
    ("validate.formats.onnxruntim=[onnx]",
     "validate.formats.onnxruntim: unknown key; did you mean 'validate.formats.onnxruntime'?"),
    ("validate.formats.coreml=[onnx]", "validate.formats.coreml: unknown key; known: torch, onnxruntime, tflite, mcu "
                                       "(or a plug-in runtime package.module:Class)"),
    ("fit_latency.leaf_variables.convld=[flops]",
     "fit_latency.leaf_variables.convld: unknown key; did you mean 'fit_latency.leaf_variables.conv1d'?"),
    ("profile.sampler.sweep.gur={in_features: 8, kernel: 1, stride: 1, length: 8, instances: 1}",
     "profile.sampler.sweep.gur: unknown key; did you mean 'profile.sampler.sweep.gru'?"),
    ("bogus.key=1", "bogus: unknown key; known: pipeline, ingest, train"),
])
def test_an_unknown_key_inside_a_mapping_is_refused_with_its_full_name(override: str, message: str):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}"):
        load_params(PARAMS, [override])


def test_an_unknown_key_in_the_file_is_refused_too(tmp_path: Path):
    text = PARAMS.read_text().replace("    latency: 0.3 ", "    latncy: 0.3 ")
    (tmp_path / "params.yaml").write_text(text)
    message = "compress.budget.latncy: unknown key; did you mean 'compress.budget.latency'?"
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        load_params(tmp_path / "params.yaml")


def test_plug_in_runtimes_and_user_named_sensors_stay_free():
    params = load_params(PARAMS, ["validate.formats={onnxruntime: [onnx], 'mypkg.board:Backend': [onnx]}",
                                  "ingest.custom.sensors={wrist: {columns: [x, y, z], unit: g}}"])
    assert params.validate.formats["mypkg.board:Backend"] == ("onnx",)
    assert list(params.ingest.custom.sensors) == ["wrist"]


def _fields(model: type, where: str = ""):
    """(key path, annotation, constraints) for every field of `model` and of the models inside it."""
    for name, field in model.model_fields.items():
        annotation, metadata = unwrap(field.annotation, list(field.metadata))
        path = f"{where}{name}"
        yield path, annotation, metadata
        for sub in [annotation, *typing.get_args(annotation)]:
            sub = unwrap(sub, [])[0]
            if isinstance(sub, type) and issubclass(sub, BaseModel):
                yield from _fields(sub, f"{path}.")


def _numbers(annotation: typing.Any, metadata: list) -> list[bool]:
    """For each number the annotation holds (itself, a list's items, a mapping's values): whether it is bounded."""
    base, inner = unwrap(annotation, metadata)
    if base in (int, float):
        return [any(isinstance(m, (Ge, Gt, Le, Lt)) for m in inner)]
    if typing.get_origin(base) in (tuple, dict):
        return _numbers(typing.get_args(base)[-1 if typing.get_origin(base) is dict else 0], [])
    return []


def test_every_number_has_a_range_and_every_mapping_its_keys():
    """A field added without a range (or a mapping without its keys) fails here, not in a nightly run."""
    fields = [*_fields(Params), *_fields(Device, "devices.<name>.")]
    no_range = [p for p, tp, meta in fields if p != "root" and not all(_numbers(tp, meta))]
    # the sensors' names are the user's own, node labels the cluster's
    free = {"ingest.custom.sensors", "devices.<name>.kubernetes.node_selector"}
    no_keys = [p for p, tp, meta in fields if typing.get_origin(tp) is dict and p not in free
               and not any(isinstance(m, AfterValidator) for m in meta)]
    assert not no_range and not no_keys, f"no range: {no_range}; no keys: {no_keys}"
    assert McuSpec.model_fields["sram_bytes"].metadata[0].gt == 0


# ---- 2. numbers out of range ---------------------------------------------------------------------------------


@pytest.mark.parametrize("override, message", [
    ("train.epochs=-5", "train.epochs: must be at least 1, got -5"),
    ("train.learning_rate=0", "train.learning_rate: must be more than 0, got 0.0"),
    ("train.val_fraction=1", "train.val_fraction: must be at least 0 and less than 1, got 1.0"),
    ("train.validation_share=0", "train.validation_share: must be more than 0 and less than 1, got 0.0"),
    ("compress.fallback=0.8", "compress.fallback: must be 0 (no fallback) or more than 1 (an aim looser than the "
                              "budget's), got 0.8"),
    ("train.deepsense.sensor_kernels=[3, 0, 3]", "train.deepsense.sensor_kernels[1]: must be at least 1, got 0"),
    ("train.classical.max_depth=0", "train.classical.max_depth: must be at least 1, got 0"),
    ("compress.budget.latency=1.5", "compress.budget.latency: must be more than 0 and at most 1, got 1.5"),
    ("compress.threads=0", "compress.threads: must be at least 1, got 0"),
    ("validate.run_timeout_s=-1", "validate.run_timeout_s: must be more than 0, got -1.0"),
    ("ingest.split.seed=-1", "ingest.split.seed: must be at least 0, got -1"),
    ("profile.max_failed_share=.nan", "profile.max_failed_share: must be at least 0 and at most 1, got nan"),
])
def test_a_number_out_of_range_is_refused_before_any_work(override: str, message: str):
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        load_params(PARAMS, [override])


@pytest.mark.parametrize("override", [
    "compress.budget.mcu=0.5", "compress.budget.params=0.001", "compress.max_accuracy_drop=1.0",
    "compress.max_accuracy_drop=0.0", "validate.gates.min_agreement=0.0", "validate.gates.latency_budget=100.0",
    "validate.gates.energy_budget=100.0",
    "profile.max_failed_share=0.0", "ingest.expectations.min_windows_per_class=0", "train.classical.max_depth=null",
    "train.deepsense.sensor_filters=0",  # a layer without units is the model builder's to refuse, naming the layer
    "compress.fallback=0", "validate.gates.max_accuracy_drop_upper=1.0", "train.validation=windows",
])
def test_the_edges_the_tests_and_users_rely_on_are_in_range(override: str):
    load_params(PARAMS, [override])


@pytest.mark.parametrize("change, message", [
    ({"sram_bytes": -1}, "devices.m4.mcu.sram_bytes: must be more than 0, got -1"),
    ({"cycles_per_mac": 0}, "devices.m4.mcu.cycles_per_mac: must be more than 0, got 0.0"),
])
def test_pool_numbers_out_of_range_are_refused(tmp_path: Path, change: dict, message: str):
    path = _mcu_pool(tmp_path, **change)
    with pytest.raises(ConfigError, match=f"^{re.escape(f'{path}: {message}')}$"):
        load_pool(path)


def test_pool_threads_and_cores_are_ranges_too(tmp_path: Path):
    path = _pool_file(tmp_path, "devices:\n  ort:\n" + ENTRY.replace("threads: 1", "threads: 0"))
    with pytest.raises(ConfigError, match=f"^{re.escape(f'{path}: devices.ort.threads: must be at least 1, got 0')}$"):
        load_pool(path)
    path = _pool_file(tmp_path, "devices:\n  ort:\n" + ENTRY + "    cpus: [-1]\n")
    with pytest.raises(ConfigError, match=re.escape("devices.ort.cpus[0]: must be at least 0, got -1")):
        load_pool(path)
    path = _pool_file(tmp_path, "devices:\n  ort:\n" + ENTRY + "    cpus: [0, 1]\n")
    with pytest.raises(ConfigError, match=f"^{re.escape(f'{path}: devices.ort.cpus: 2 cores listed for 1 threads')}$"):
        load_pool(path)
    path = _pool_file(tmp_path, "devices:\n  ort:\n" + ENTRY + "    kubernetes:\n")  # empty: any node
    assert load_pool(path)["ort"].kubernetes.to_kubernetes() == ({}, [])


def test_a_devices_kubernetes_placement_is_typed_with_defaults_and_the_pools_example_parses(tmp_path: Path):
    path = _pool_file(tmp_path, "devices:\n  nuc:\n" + ENTRY + "    kubernetes:\n"
                      "      node_selector: {iot-compress.io/device: nuc}\n"
                      "      tolerations: [{key: iot-compress.io/device, value: nuc, effect: NoSchedule},"
                      " {key: gpu, operator: Exists}]\n  any:\n" + ENTRY)
    pool = load_pool(path)
    assert pool["nuc"].kubernetes.to_kubernetes() == ({"iot-compress.io/device": "nuc"}, [
        {"key": "iot-compress.io/device", "operator": "Equal", "value": "nuc", "effect": "NoSchedule"},
        {"key": "gpu", "operator": "Exists"}])
    assert pool["any"].kubernetes.to_kubernetes() == ({}, [])  # absent: any node
    assert len({pool["nuc"], pool["any"]}) == 2  # still hashable
    example = "\n".join(line.replace("  # ", "  ", 1) for line in POOL.read_text().splitlines()
                        if line.startswith("  # "))
    assert "kubernetes:" in example  # the commented phone entry of infra/devices.yaml, uncommented, is valid
    phone = _pool_file(tmp_path, "devices:\n" + example[example.index("  pixel7-ort-4t:"):] + "\n")
    assert load_pool(phone)["pixel7-ort-4t"].kubernetes.node_selector == {"iot-compress/device": "pixel7"}
    for bad, message in (("{node_selectr: {}}", "kubernetes.node_selectr: unknown key"),
                         ("{tolerations: [{key: a, operator: Sometimes}]}",
                          "kubernetes.tolerations[0].operator: 'Sometimes' is not one of"),
                         ("{node_selector: {a: 1}}", "kubernetes.node_selector.a: expected str, got int"),
                         ("[a]", "kubernetes: expected a mapping"),
                         ("{tolerations: [{key: a, operator: Exists, value: b}]}",
                          "kubernetes.tolerations[0]: operator Exists takes no value"),
                         ("{tolerations: [{value: b}]}", "kubernetes.tolerations[0]: operator Equal needs a key")):
        path = _pool_file(tmp_path, "devices:\n  nuc:\n" + ENTRY + f"    kubernetes: {bad}\n")
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_pool(path)


# ---- 3. YAML 1.2 floats --------------------------------------------------------------------------------------


def test_yaml_1_2_floats_are_floats_in_the_file_overrides_and_the_pool(tmp_path: Path):
    text = PARAMS.read_text().replace("  learning_rate: 0.001\n", "  learning_rate: 1e-3\n", 1)
    (tmp_path / "params.yaml").write_text(text)
    params = load_params(tmp_path / "params.yaml", ["compress.search.learning_rate=1E-2", "train.weight_decay=.5e-4",
                                                    "compress.budget.params=.07", "train.noise_std=-.0"])
    assert params.train.learning_rate == 0.001 and params.compress.search.learning_rate == 0.01
    assert params.train.weight_decay == 0.00005 and params.compress.budget["params"] == 0.07
    path = _mcu_pool(tmp_path)
    path.write_text(path.read_text().replace("cycles_per_mac: 2.0", "cycles_per_mac: 2e0"))
    assert load_pool(path)["m4"].mcu.cycles_per_mac == 2.0


@pytest.mark.parametrize("value", ["1e", "1.2.3", "e5", "1e5x", "yes", "'08'"])
def test_strings_that_only_look_like_numbers_stay_strings(value: str):
    assert load_params(PARAMS, [f"pipeline.experiment={value}"]).pipeline.experiment == value.strip("'")


def test_yaml_1_2_reads_a_leading_zero_as_a_number():
    """YAML 1.1 read `08` as a string (a bad octal); YAML 1.2 reads it as 8, so a string field refuses it."""
    with pytest.raises(ConfigError, match=r"^pipeline\.experiment: expected str, got int 8$"):
        load_params(PARAMS, ["pipeline.experiment=08"])


def test_ints_stay_ints():
    params = load_params(PARAMS, ["train.epochs=7"])
    assert params.train.epochs == 7 and type(params.train.epochs) is int
    with pytest.raises(ConfigError, match=r"^train\.epochs: expected int, got float 1000\.0$"):
        load_params(PARAMS, ["train.epochs=1e3"])


# ---- 4. duplicate keys ---------------------------------------------------------------------------------------


def test_a_device_named_twice_is_refused_naming_the_file_the_key_and_both_lines(tmp_path: Path):
    path = _pool_file(tmp_path, "devices:\n  ort-1t:\n" + ENTRY + "  ort-1t:\n" + ENTRY.replace("1\n", "4\n"))
    with pytest.raises(ConfigError, match=f"^{re.escape(f'{path}: devices.ort-1t: duplicate key (lines 2 and 8)')}$"):
        load_pool(path)


def test_a_key_twice_in_params_yaml_is_refused_naming_the_file_the_key_and_both_lines(tmp_path: Path):
    lines = PARAMS.read_text().splitlines(keepends=True)
    at = lines.index("  epochs: 60\n")
    (tmp_path / "params.yaml").write_text("".join([*lines[:at + 1], "  epochs: 5\n", *lines[at + 1:]]))
    message = f"{tmp_path / 'params.yaml'}: train.epochs: duplicate key (lines {at + 1} and {at + 2})"
    with pytest.raises(ConfigError, match=f"^{re.escape(message)}$"):
        load_params(tmp_path / "params.yaml")


def test_a_duplicate_inside_a_list_and_an_override_are_refused_too(tmp_path: Path):
    path = _pool_file(tmp_path, "devices:\n  m:\n" + ENTRY + "    cpus: [0]\n    cpus: [1]\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}: devices.m.cpus: duplicate key (lines 8 and 9)")):
        load_pool(path)
    with pytest.raises(ConfigError, match=re.escape("compress.budget.mcu: duplicate key (lines 1 and 1)")):
        load_params(PARAMS, ["compress.budget={mcu: 0.1, mcu: 0.2}"])


def test_yaml_merge_keys_are_not_duplicates(tmp_path: Path):
    path = _pool_file(tmp_path, "devices:\n  a: &base\n" + ENTRY + "  b:\n    <<: *base\n    threads: 2\n")
    pool = load_pool(path)
    assert pool["a"].threads == 1 and pool["b"].threads == 2 and pool["b"].runtime == "onnxruntime"


def test_the_pool_file_holds_devices_only(tmp_path: Path):
    path = _pool_file(tmp_path, "devices:\n  a:\n" + ENTRY + "default_threads: 2\n")
    with pytest.raises(ConfigError, match=f"^{re.escape(f'{path}: default_threads: unknown key')}"):
        load_pool(path)


def test_a_broken_override_value_is_a_config_error():
    with pytest.raises(ConfigError, match=r"^override 'train\.epochs=\[1': the value is not valid YAML"):
        load_params(PARAMS, ["train.epochs=[1"])
