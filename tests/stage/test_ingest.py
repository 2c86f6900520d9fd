"""The ingest stage on the real shared data sets."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from components.stages import execute
from tests.conftest import RAW_SMALL

HHAR_SA_PER_USER = {"a": 457, "b": 536, "c": 475, "d": 457, "e": 501}  # the data README's counts


def outputs(params):
    out = params.path(params.ingest.output_dir)
    meta = pd.read_parquet(out / "windows.parquet")
    card = json.loads((out / "data_card.json").read_text())
    split = json.loads((out / "split.json").read_text())
    return out, meta, card, split


def test_hhar_sa_windows_are_split_by_user_with_metadata(make_params):
    params = make_params()
    result = execute("ingest", params)
    out, meta, card, split = outputs(params)
    assert result.windows == len(meta) == sum(HHAR_SA_PER_USER.values())
    assert card["counts"]["user"] == HHAR_SA_PER_USER
    assert card["counts"]["label"] == {"bike": 467, "sit": 352, "stairsdown": 389, "stairsup": 400, "stand": 354, "walk": 464}
    # leave-users-out: no user on both sides; five users in five folds, fold 0 held out
    assert split["test_users"] == ["c"] and set(split["train_users"]) | set(split["test_users"]) == set(HHAR_SA_PER_USER)
    assert sorted(u for users in split["folds"].values() for u in users) == sorted(HHAR_SA_PER_USER)
    assert meta.groupby("user")["fold"].nunique().eq(1).all() and set(meta.fold) == {0, 1, 2, 3, 4}
    assert "fewer than the 4" in split["warning"]  # 5 users cannot give the held-out users a decision needs
    assert set(meta.loc[meta.split == "test", "user"]) == set(split["test_users"])
    assert not set(meta.loc[meta.split == "train", "user"]) & set(split["test_users"])
    x = np.load(out / "x.npy", mmap_mode="r")
    signal = np.load(out / "signal.npy", mmap_mode="r")
    assert x.shape == (len(meta), 8, 1, 3, 2, 16) and signal.shape == (len(meta), 1, 3, 128)
    assert np.isfinite(x).all()
    np.testing.assert_allclose(x[5, 3, 0, 1, 0], np.fft.fft(signal[5, 0, 1, 48:64]).real, atol=1e-4)
    assert card["layout"]["x"] == ["window", "interval", "sensor", "axis", "real_imag", "frequency"]
    assert json.loads((out / "validation.json").read_text())["success"] is True


def test_explicit_test_users_are_honoured_and_unknown_ones_refused(make_params):
    params = make_params("ingest.split.test_users=[b, d]")
    execute("ingest", params)
    _, meta, _, split = outputs(params)
    assert split["test_users"] == ["b", "d"] and (meta.split == "test").sum() == 536 + 457
    assert split["test_fold"] is None
    from components.data.errors import DataError
    with pytest.raises(DataError, match=r"test_users names users not in the data: \['z'\]"):
        execute("ingest", make_params("ingest.split.test_users=[z]"))


def test_reserved_users_are_kept_out_of_every_fold_and_cannot_also_be_held_out(make_params):
    from components.data.errors import DataError
    from components.data.windows import load_windows, make_folds

    params = make_params("ingest.split.test_users=[b]", "ingest.split.reserve_users=[e]")
    execute("ingest", params)
    _, meta, card, split = outputs(params)
    assert split["reserved_users"] == ["e"] and "e" not in split["train_users"]
    assert set(meta.loc[meta.split == "reserved", "user"]) == {"e"} and card["split"]["windows"]["reserved"] > 0
    windows = load_windows(params.path(params.ingest.output_dir))
    users = windows.meta["user"].to_numpy()
    for train in (params.train, params.train.model_copy(update=dict(evaluation="kfold"))):
        for fold in make_folds(windows.meta, train):  # the nightly split, then every fold of users
            assert "e" not in set(users[fold.train]) | set(users[fold.test])
    with pytest.raises(DataError, match=r"reserved by ingest"):
        make_folds(windows.meta, params.train.model_copy(update=dict(test_users=("e",))))
    with pytest.raises(DataError, match=r"\['b'\] are both held out tonight and reserved"):
        execute("ingest", make_params("ingest.split.test_users=[b]", "ingest.split.reserve_users=[b]"))


@pytest.mark.slow
def test_uci_har_subjects_merge_train_and_test_files(make_params):
    params = make_params("ingest.dataset=uci_har")
    execute("ingest", params)
    out, meta, card, split = outputs(params)
    assert len(card["counts"]["user"]) == 24 and card["windows"] == 8013
    assert card["counts"]["user"]["subject01"] == 347 and card["counts"]["user"]["subject24"] == 381
    # DeepSense's two sensors: the accelerometer with gravity and the gyroscope
    assert card["sensors"] == {"total_acc": "g", "body_gyro": "rad/s"}
    assert np.load(out / "x.npy", mmap_mode="r").shape == (8013, 8, 2, 3, 2, 16)
    signal = np.load(out / "signal.npy", mmap_mode="r")
    at_rest = meta.index[meta.label_name == "laying"][:50]
    assert np.linalg.norm(signal[at_rest, 0], axis=1).mean() == pytest.approx(1.0, abs=0.1)  # |gravity| = 1 g
    # 24 users in 5 folds; the nightly fold holds out 5 of them (at least 4, or 20 %)
    assert split["strategy"] == "leave-users-out" and len(split["test_users"]) == 5 and "warning" not in split
    assert sorted(len(users) for users in split["folds"].values()) == [4, 5, 5, 5, 5]
    assert any("overlap by 50 %" in note for note in card["notes"])


def test_wisdm_users_merge_their_files_and_the_card_says_what_is_missing(make_params):
    params = make_params("ingest.dataset=wisdm")
    execute("ingest", params)
    out, meta, card, split = outputs(params)
    assert len(card["counts"]["user"]) == 30 and card["windows"] == len(meta) == 5965
    assert card["labels"] == ["downstairs", "jogging", "sitting", "standing", "upstairs", "walking"]
    assert card["sensors"] == {"accelerometer": "standardised"}
    assert card["users_missing_classes"]["user08"] == ["downstairs", "jogging", "sitting", "standing", "upstairs"]
    markdown = (out / "data_card.md").read_text()
    assert "## Users lacking classes" in markdown and "Standardised values are not physical units" in markdown
    assert len(split["test_users"]) == 6 and np.load(out / "x.npy", mmap_mode="r").shape[1:] == (4, 1, 3, 2, 32)


def test_folds_are_seeded_and_a_user_is_never_on_both_sides(make_params):
    from components.data.card import user_folds

    users = [f"u{i:02d}" for i in range(24)]
    assert user_folds(users, 5, 0) == user_folds(list(reversed(users)), 5, 0)  # the order read does not matter
    assert user_folds(users, 5, 0) != user_folds(users, 5, 1)
    assert sorted(user_folds(users, 5, 0).values()) == sorted([i % 5 for i in range(24)])
    params = make_params("ingest.split.test_fold=3")
    execute("ingest", params)
    _, meta, _, split = outputs(params)
    assert split["test_users"] == split["folds"]["3"] == ["a"] and split["test_fold"] == 3
    with pytest.raises(Exception, match=r"test_fold 7 is not one of the 5 folds"):
        execute("ingest", make_params("ingest.split.test_fold=7"))


def test_basic_motions_from_a_pypi_package_keeps_the_published_split(make_params):
    params = make_params("ingest.dataset=basic_motions")
    execute("ingest", params)
    out, meta, card, split = outputs(params)
    assert len(meta) == 80 and split["strategy"] == "published"
    assert split["windows"] == {"train": 40, "test": 40}
    assert card["counts"]["label"] == {"badminton": 20, "running": 20, "standing": 20, "walking": 20}
    assert np.load(out / "x.npy", mmap_mode="r").shape == (80, 10, 2, 3, 2, 10)


def test_hhar_raw_pairs_accelerometer_and_gyroscope_per_device(make_params):
    params = make_params(*RAW_SMALL)
    execute("ingest", params)
    out, meta, card, split = outputs(params)
    signal = np.load(out / "signal.npy", mmap_mode="r")
    x = np.load(out / "x.npy", mmap_mode="r")
    assert signal.shape == (len(meta), 2, 3, 4 * 10) and x.shape == (len(meta), 4, 2, 3, 2, 10)
    assert set(meta.device) == {"nexus4_1", "gear_1"} and set(meta.user) == {"a"}
    assert "null" not in set(meta.label_name)  # null_label: drop
    # accelerometer magnitude ~ gravity; gyroscope near zero for a phone standing still
    stand = meta.index[(meta.label_name == "stand") & (meta.device == "nexus4_1")]
    assert 8 < np.linalg.norm(signal[stand[0], 0], axis=0).mean() < 11.5
    assert np.abs(signal[stand[0], 1]).mean() < 0.5
    assert card["sampling_rate_hz"]["nexus4/nexus4_1"]["accelerometer"] == pytest.approx(200, rel=0.1)
    assert split["test_users"] == [] and "warning" in split
    # the watch's `null` rows become a class when asked
    kept = make_params(*RAW_SMALL, "ingest.hhar_raw.null_label=keep")
    execute("ingest", kept)
    assert "null" in set(outputs(kept)[1].label_name)


def test_run_is_tracked_in_mlflow_with_card_validation_and_tags(make_params):
    import mlflow

    params = make_params()
    result = execute("ingest", params)
    from components.tracking import server

    mlflow.set_tracking_uri(server.tracking_uri(params))
    run = mlflow.get_run(result.run_id)
    assert run.info.run_name == "ingest" and run.info.status == "FINISHED"
    assert run.data.tags["data_hash"] == result.data_hash and len(result.data_hash) == 64
    assert run.data.tags["git_commit"]
    assert run.data.metrics["windows"] == 2426 and run.data.metrics["windows.user.a"] == 457
    assert run.data.params["ingest.dataset"] == "hhar_sa"
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(result.run_id, "ingest")}
    assert {"ingest/data_card.json", "ingest/validation.json", "ingest/split.json", "ingest/data_card.md"} <= artifacts
    artifact_dir = params.path(params.pipeline.state_dir) / "mlflow" / "artifacts"
    assert any(artifact_dir.rglob("data_card.json"))  # the embedded store lives under state_dir


def test_pipeline_key_nests_stage_runs_under_one_parent(make_params):
    import mlflow

    from components.tracking import server

    params = make_params()
    first = execute("ingest", params, pipeline_key="manual__1")
    second = execute("ingest", params, pipeline_key="manual__1")
    mlflow.set_tracking_uri(server.tracking_uri(params))
    parents = {mlflow.get_run(r.run_id).data.tags["mlflow.parentRunId"] for r in (first, second)}
    assert len(parents) == 1
    assert mlflow.get_run(parents.pop()).info.run_name == "pipeline"


def test_outputs_are_byte_identical_across_runs(make_params, tmp_path):
    """So `dvc repro` and the data hash mean the same data, run after run."""
    first, second = (make_params(*RAW_SMALL, f"ingest.output_dir={tmp_path / name}") for name in ("one", "two"))
    execute("ingest", first)
    execute("ingest", second)
    one, two = tmp_path / "one", tmp_path / "two"
    names = sorted(p.name for p in one.iterdir())
    assert names == sorted(p.name for p in two.iterdir()) and "x.npy" in names
    for name in names:
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
