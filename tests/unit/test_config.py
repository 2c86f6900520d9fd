from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from components.config import DATA_ROOT_ENV, ConfigError, load_params
from tests.conftest import PROJECT_ROOT

PARAMS = PROJECT_ROOT / "params.yaml"


def test_project_params_load_into_frozen_models():
    params = load_params(PARAMS)
    assert params.ingest.dataset == "uci_hapt"  # the nightly default: 24 users, two sensors
    assert isinstance(params.ingest.hhar_raw.accelerometer_files, tuple)
    with pytest.raises(ValidationError, match="frozen"):
        params.ingest.dataset = "uci_har"
    assert params.validate.gates.max_accuracy_drop == 0.01  # a section named like a BaseModel method is the section
    assert "root" not in params.to_dict() and params.to_dict()["ingest"]["split"]["seed"] == 0


def test_unknown_key_is_refused_with_its_full_name_and_a_suggestion(tmp_path: Path):
    text = PARAMS.read_text().replace("    chunk_rows:", "    chunk_row:")
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(ConfigError, match=r"ingest\.hhar_raw\.chunk_row: unknown key; did you mean 'ingest\.hhar_raw\.chunk_rows'"):
        load_params(tmp_path / "params.yaml")


@pytest.mark.parametrize("override, message", [
    ("ingest.hhar_raw.intervals=twenty", r"ingest\.hhar_raw\.intervals: expected int, got str 'twenty'"),
    ("ingest.hhar_raw.intervals=2.5", r"ingest\.hhar_raw\.intervals: expected int, got float"),
    ("ingest.split.test_users=a", r"ingest\.split\.test_users: expected a list"),
    ("ingest.dataset=mnist", r"ingest\.dataset: 'mnist' is not one of"),
    ("ingest.hhar_raw.null_label=true", r"ingest\.hhar_raw\.null_label: True is not one of"),
    ("ingest.split=3", r"ingest\.split: expected a mapping"),
    ("bogus.key=1", r"bogus: unknown key"),
])
def test_wrong_types_are_refused_naming_the_key(override: str, message: str):
    with pytest.raises(ConfigError, match=message):
        load_params(PARAMS, [override])


def test_missing_key_is_named(tmp_path: Path):
    text = PARAMS.read_text().replace("    seed: 0\n", "")
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(ConfigError, match=r"ingest\.split\.seed: missing key"):
        load_params(tmp_path / "params.yaml")


def test_int_is_accepted_where_a_float_is_expected():
    assert load_params(PARAMS, ["ingest.hhar_raw.interval_s=1"]).ingest.hhar_raw.interval_s == 1.0


def test_data_root_defaults_to_params_and_env_overrides(monkeypatch, tmp_path: Path):
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    params = load_params(PARAMS)
    assert params.data_root() == PROJECT_ROOT / "../shared/datasets"
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path))
    assert params.data_root() == tmp_path


def test_unreadable_params_file_is_a_config_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("ingest: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(tmp_path / "bad.yaml")
