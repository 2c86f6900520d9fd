"""A damaged artifact gets one clear error naming it, never a traceback; outputs are trusted by content.

Each test feeds the real damage (a truncated file, a changed byte, a foreign
format tag) to the loader a later stage calls.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace

import pytest
import torch

from components import models
from components.artifacts.atomic import atomic_directory
from components.artifacts.seals import SEAL_FILE, DamagedArtifact, seal, sha256_of
from components.latency.model import MODEL_FILE, load, load_in, save_in
from components.models import SPEC_FILE, WEIGHTS_FILE
from components.models.plain import mlp_spec
from components.pruning.costs import ParamsCost
from components.pruning.deepiot import DeepIoTSearch, Schedule, SearchSettings
from components.pruning.rounds import resume as _resume
from tests.unit.test_deepiot import _task


def _model_folder(path):
    torch.manual_seed(0)
    model = models.build(mlp_spec((4, 1, 2, 2, 4), ("a", "b", "c"), units=(16, 8), dropout=0.0))
    models.save(model, path)
    return path


def _truncate(path, keep: float = 0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_a_truncated_weights_file_is_named_whether_or_not_its_seal_still_matches(tmp_path):
    folder = _model_folder(tmp_path / "model")
    _truncate(folder / WEIGHTS_FILE)
    with pytest.raises(DamagedArtifact, match=rf"model/{WEIGHTS_FILE}: sha256 .*changed or damaged since it was "
                                              r"written\); run the stage that wrote this model folder again"):
        models.load(folder)
    seal(folder, [SPEC_FILE, WEIGHTS_FILE])  # written truncated by the stage itself (a full disk)
    with pytest.raises(DamagedArtifact, match=rf"model/{WEIGHTS_FILE}: not a readable safetensors file"):
        models.load(folder)


def test_a_truncated_description_is_named(tmp_path):
    folder = _model_folder(tmp_path / "model")
    _truncate(folder / SPEC_FILE)
    seal(folder, [SPEC_FILE, WEIGHTS_FILE])
    with pytest.raises(DamagedArtifact, match=rf"model/{SPEC_FILE}: not a readable model description "
                                              r"\(JSONDecodeError"):
        models.load(folder)


def test_a_model_folder_without_its_seal_is_not_trusted(tmp_path):
    folder = _model_folder(tmp_path / "model")
    (folder / SEAL_FILE).unlink()
    with pytest.raises(DamagedArtifact, match=rf"model/{SEAL_FILE}: missing: the folder was not written by this "
                                              "pipeline's stage"):
        models.load(folder)


def test_a_latency_model_of_another_format_names_its_file(tmp_path):
    path = tmp_path / "latency_model.json"
    path.write_text(json.dumps({"format": "someone-else/latency/9", "method": "tree"}))
    with pytest.raises(DamagedArtifact, match=r"latency_model.json: not a latency model of format "
                                              r"'iot-compress/latency-model/1' \(found 'someone-else/latency/9'\); "
                                              "run fit_latency"):
        load(path)
    _truncate(path)
    with pytest.raises(DamagedArtifact, match=r"latency_model.json: not JSON"):
        load(path)


def _output_tree(root):
    """A train output (a sealed model folder) and a fit_latency output (a sealed folder) as the stages write them."""
    _model_folder(root / "train" / "model")
    from components.latency.model import LatencyModel, Overhead

    with atomic_directory(root / "fit_latency" / "ort-1t", sealed=True) as staging:
        save_in(staging, LatencyModel("ort-1t", "onnxruntime", {}, Overhead("none"), {}))
    return root


def test_a_copied_output_tree_checks_its_own_bytes_and_a_tamper_there_leaves_the_original_alone(tmp_path):
    original = _output_tree(tmp_path / "a")
    before = {p: sha256_of(p) for p in original.rglob("*") if p.is_file()}
    copy = tmp_path / "b"
    shutil.copytree(original, copy)
    models.load(copy / "train" / "model")  # a whole copy is trusted where it lies: every reference is relative
    assert load_in(copy / "fit_latency" / "ort-1t").device == "ort-1t"

    weights = copy / "train" / "model" / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(DamagedArtifact, match=str(weights)):
        models.load(copy / "train" / "model")
    latency = copy / "fit_latency" / "ort-1t" / MODEL_FILE
    latency.write_text(latency.read_text().replace("onnxruntime", "tflite"))
    with pytest.raises(DamagedArtifact, match=str(latency)):
        load_in(copy / "fit_latency" / "ort-1t")

    models.load(original / "train" / "model")
    assert load_in(original / "fit_latency" / "ort-1t").runtime == "onnxruntime"
    assert {p: sha256_of(p) for p in original.rglob("*") if p.is_file()} == before


def _search(x, y):
    settings = SearchSettings(budget=0.05, accuracy_floor=0.99, lambda_cost=2.0, critic_decay=0.9,
                              schedule=Schedule(0.0, 0.05, 10, 0.5), max_steps=20, batch_size=32,
                              learning_rate=0.003, compressor_learning_rate=0.01, compressor_hidden=8,
                              init_keep=0.9, eval_every=10, seed=0)
    torch.manual_seed(0)
    model = models.build(mlp_spec((4, 1, 2, 2, 4), ("a", "b", "c"), units=(48, 32), dropout=0.0))
    return DeepIoTSearch(model, ParamsCost(model.spec), x[:300], y[:300], x[300:], y[300:], settings)


def test_a_truncated_checkpoint_is_set_aside_and_the_search_starts_afresh(tmp_path, caplog):
    x, y = _task(n=400)
    checkpoint = tmp_path / "checkpoint.pt"
    first = _search(x, y)
    first.s = replace(first.s, max_steps=10)
    first.run(checkpoint=lambda state: torch.save(state | {"fingerprint": "fp"}, checkpoint), checkpoint_every=10)

    resumed = _search(x, y)
    _resume(resumed, checkpoint, "fp")
    assert resumed.step_index == 10  # a sound checkpoint resumes

    _truncate(checkpoint)
    fresh, again = _search(x, y), _search(x, y)
    with caplog.at_level(logging.WARNING, logger="components.compress"):
        _resume(again, checkpoint, "fp")
    assert again.step_index == 0 and not checkpoint.exists()
    (aside,) = tmp_path.glob("checkpoint.pt.damaged-*")
    assert "could not be read" in caplog.text and aside.name in caplog.text and "starting the search afresh" in caplog.text
    assert all(torch.equal(a, b) for a, b in zip(again.model.state_dict().values(), fresh.model.state_dict().values()))


def test_a_checkpoint_that_fails_half_way_through_restoring_leaves_the_search_as_it_was(tmp_path):
    x, y = _task(n=400)
    checkpoint = tmp_path / "checkpoint.pt"
    donor = _search(x, y)
    donor.run()
    state = donor.state() | {"fingerprint": "fp"}
    state["compressor"] = {"not": torch.zeros(1)}  # the model loads, the compressor does not
    torch.save(state, checkpoint)
    fresh, search = _search(x, y), _search(x, y)
    _resume(search, checkpoint, "fp")
    assert search.step_index == 0 and search.history == []
    assert all(torch.equal(a, b) for a, b in zip(search.model.state_dict().values(), fresh.model.state_dict().values()))
