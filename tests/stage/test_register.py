"""The registry gate against a real MLflow registry: tags, aliases, loading by alias, and its faults."""

from __future__ import annotations

import copy
import json
import shutil
import socket

import numpy as np
import pytest
from mlflow.exceptions import MlflowException

from components import register, validate
from components.artifacts.seals import ChecksumMismatch, DamagedArtifact, seal
from components.config import load_params
from components.decisions.champion import beats
from components.stages import Place
from components.tracking import registry
from tests.conftest import PROJECT_ROOT, synthetic_task

# The microcontroller: its latency is computed (no latency model needed) and its integer (16x8) file is what is registered.
# The gates are opened wide: these tests are about the registry, the gates have their own.
LOOSE = ("validate.gates.max_accuracy_drop=1.0", "validate.gates.max_accuracy_drop_upper=1.0",
         "validate.gates.min_agreement=0.0", "validate.gates.latency_budget=1.0", "validate.gates.energy_budget=1.0",
         "validate.gates.size_budget=1.0",
         "validate.calibration_windows=40")


@pytest.fixture(scope="module")
def validation(tmp_path_factory, data_root):
    """One validated model (exports, report) for the whole module; each test works on its own copy."""
    folder = tmp_path_factory.mktemp("validated")
    ingest, train = synthetic_task(folder)
    _, small = synthetic_task(folder / "small", widths=(4, 4, 4))
    params = load_params(PROJECT_ROOT / "params.yaml", [f"ingest.output_dir={ingest}",
                                                        f"pipeline.state_dir={folder / 'state'}", *LOOSE])
    result = validate.run(params, "cortex-m4", ingest=ingest, train=train, compress=small,
                          fit_latency=folder / "no-latency-model", out=Place(folder / "v", folder / "r"))
    assert result.passed, result.report["failed_gates"]
    return folder


@pytest.fixture
def validated(validation, tmp_path):
    """(params with a fresh registry, the report, validate's folder), on a copy of the module's validation."""
    for name in ("v", "r", "ingest"):
        shutil.copytree(validation / name, tmp_path / name)
    report_path = tmp_path / "v" / "report.json"
    report_path.write_text(report_path.read_text().replace(str(validation), str(tmp_path)))
    params = load_params(PROJECT_ROOT / "params.yaml", [f"ingest.output_dir={tmp_path / 'ingest'}",
                                                        f"pipeline.state_dir={tmp_path / 'state'}", *LOOSE])
    return params, json.loads(report_path.read_text()), tmp_path / "v"


def _client(params):
    from components.tracking.server import configured_mlflow

    return configured_mlflow(params).MlflowClient()


def test_a_passing_model_is_registered_with_its_files_tags_and_aliases_and_loads_by_alias(validated, tmp_path):
    import mlflow

    params, report, bundle = validated
    outcome = register.run(params, "cortex-m4", validate=bundle, out=Place(tmp_path / "g", tmp_path / "gr"),
                           pipeline_key="nightly-1")
    assert outcome.registered and outcome.aliases == ("candidate", "champion")
    assert outcome.name == f"iot-compress-{params.ingest.dataset}-cortex-m4"
    client = _client(params)
    version = client.get_model_version_by_alias(outcome.name, "champion")
    tags = version.tags
    assert tags["data_hash"] == "synthetic-0" and tags["pipeline_run"] == "nightly-1"
    assert tags["validate_run_id"] == report["validate_run_id"] and tags["git_commit"]
    assert tags["format"] == "tflite_int16x8" and tags["validation_id"] == report["validation_id"]
    assert json.loads((tmp_path / "gr" / "registry.json").read_text())["version"] == str(version.version)
    card = (tmp_path / "gr" / "model_card.md").read_text()  # the version's description, also as a file
    assert card == version.description and card.startswith(f"# {outcome.name} version {version.version}")
    loaded = mlflow.pyfunc.load_model(f"models:/{outcome.name}@champion")
    x = np.load(tmp_path / "ingest" / "x.npy")[:8]
    logits = loaded.predict(x)
    assert logits.shape == (8, 3) and np.isfinite(logits).all()
    files = {a.path for a in mlflow.artifacts.list_artifacts(f"models:/{outcome.name}@champion/artifacts")}
    assert {"artifacts/model.int16x8.tflite", "artifacts/report.json", "artifacts/report.html"} <= files


def test_the_version_carries_its_model_card_and_an_empty_registered_model_gets_a_description(validated):
    params, report, bundle = validated
    name = register.model_name(params, report)
    client = _client(params)
    client.create_registered_model(name)  # made elsewhere, without a description
    outcome = register.register_model(params, report, bundle, "nightly-2")
    card = client.get_model_version(name, outcome.version).description
    comp = report["models"]["compressed"]["tflite_int16x8"]
    assert card.startswith(f"# {name} version {outcome.version}")
    assert f"`{params.ingest.dataset}`" in card and "Held-out users: c" in card  # the synthetic task's one user
    assert f"| compressed (tflite_int16x8) | {comp['accuracy']:.4f} (one user: no interval) |" in card
    widths = report["architecture"]["compressed"]["widths"]
    assert "Architecture: deepsense" in card and all(f"{layer} {w}" in card for layer, w in widths.items())
    assert "| latency ms (computed) |" in card and "| flash bytes |" in card
    assert all(f"| {g['name']} | {'PASS' if g['passed'] else 'n/a'} |" in card for g in report["gates"])
    assert f'mlflow.pyfunc.load_model("models:/{name}/{outcome.version}")' in card
    assert f"models:/{name}@champion" in card and "in **tflite**" in card
    assert "cortex-m4" in client.get_registered_model(name).description


def _variant(report: dict, key: str, accuracy: float, latency_ms: float) -> dict:
    other = copy.deepcopy(report)
    other["validation_id"] = key
    comp = other["models"]["compressed"][other["deployed_format"]]
    comp["accuracy"], comp["latency_ms"] = accuracy, latency_ms
    return other


def test_a_worse_model_never_takes_champion(validated):
    params, report, reports = validated
    first = register.register_model(params, _variant(report, "v1", 0.80, 1.0), reports, None)
    worse = register.register_model(params, _variant(report, "v2", 0.79, 0.5), reports, None)
    slower = register.register_model(params, _variant(report, "v3", 0.80, 1.5), reports, None)
    assert first.aliases == ("candidate", "champion")
    assert worse.aliases == slower.aliases == ("candidate",)
    assert "does not beat the champion" in worse.reason
    client = _client(params)
    assert str(client.get_model_version_by_alias(first.name, "champion").version) == first.version
    assert str(client.get_model_version_by_alias(first.name, "candidate").version) == slower.version
    tie_faster = register.register_model(params, _variant(report, "v4", 0.797, 0.9), reports, None)
    better = register.register_model(params, _variant(report, "v5", 0.85, 2.0), reports, None)
    assert tie_faster.aliases == better.aliases == ("candidate", "champion")
    assert str(client.get_model_version_by_alias(first.name, "champion").version) == better.version
    promoted = {str(v.version): v.tags["promoted"] for v in client.search_model_versions(f"name = '{first.name}'")}
    assert promoted == {first.version: "true", worse.version: "false", slower.version: "false",
                        tie_faster.version: "true", better.version: "true"}  # a boolean tag, not a sentence to parse
    assert registry.was_promoted({"champion_decision": "no champion yet"})  # registered before the tag existed
    assert not registry.was_promoted({"champion_decision": "does not beat the champion (...)"})


def test_registering_the_same_validation_twice_makes_no_second_version(validated):
    params, report, reports = validated
    one = register.register_model(params, report, reports, None)
    two = register.register_model(params, report, reports, None)
    assert one.version == two.version
    assert len(_client(params).search_model_versions(f"name = '{one.name}'")) == 1


def test_a_model_that_failed_a_gate_is_never_registered(validated, tmp_path):
    params, report, reports = validated
    failed = copy.deepcopy(report)
    failed["passed"], failed["failed_gates"] = False, ["accuracy_drop"]
    failed["gates"][1] |= {"passed": False, "detail": "on-device accuracy 0.5 vs the baseline's 0.9"}
    (reports / "report.json").write_text(json.dumps(failed))
    with pytest.raises(DamagedArtifact, match=r"v/report.json: sha256 .*changed or damaged since it was written\); "
                                              "run `python -m components validate --device cortex-m4` again"):
        register.run(params, "cortex-m4", validate=reports, out=Place(tmp_path / "g", tmp_path / "gr"))
    seal(reports)  # as validate seals the report of a model that failed
    outcome = register.run(params, "cortex-m4", validate=reports, out=Place(tmp_path / "g", tmp_path / "gr"))
    assert not outcome.registered and "accuracy_drop" in outcome.reason and "0.5" in outcome.reason
    assert _client(params).search_registered_models() == []


def test_a_validated_folder_copied_elsewhere_registers_its_own_files_and_a_tamper_there_is_caught(validated, tmp_path):
    params, report, reports = validated
    copy_dir = tmp_path / "elsewhere" / "v"
    shutil.copytree(reports, copy_dir)
    assert json.loads((copy_dir / "report.json").read_text())["exports"]["compressed"]["dir"] == "compressed"
    passed = json.loads((copy_dir / "report.json").read_text())
    passed["gates"][1]["detail"] = "edited"  # a changed report is not the one validate judged
    (copy_dir / "report.json").write_text(json.dumps(passed))
    with pytest.raises(DamagedArtifact, match=str(copy_dir / "report.json")):
        register.run(params, "cortex-m4", validate=copy_dir, out=Place(tmp_path / "g", tmp_path / "gr"))
    assert _client(params).search_registered_models() == []
    before = {p: p.read_bytes() for p in reports.rglob("*") if p.is_file()}
    outcome = register.run(params, "cortex-m4", validate=reports, out=Place(tmp_path / "g", tmp_path / "gr"))
    assert outcome.registered and {p: p.read_bytes() for p in reports.rglob("*") if p.is_file()} == before


def test_an_export_changed_after_validation_is_not_registered(validated, tmp_path):
    params, report, reports = validated
    exported = report["exports"]["compressed"]
    path = reports / exported["dir"] / exported["files"]["tflite_int16x8"]["file"]  # relative to the report
    with open(path, "ab") as f:
        f.write(b"\0")
    with pytest.raises(ChecksumMismatch):
        register.run(params, "cortex-m4", validate=reports, out=Place(tmp_path / "g", tmp_path / "gr"))
    assert _client(params).search_registered_models() == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_tracking_server_that_is_down_fails_once_its_client_gives_up_and_says_what_to_rerun(validated,
                                                                                             monkeypatch):
    """One retry layer: MLflow's HTTP client (here told not to retry); register adds none of its own."""
    params, report, reports = validated
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_free_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with pytest.raises(register.RegistryUnavailable, match="did not answer .* run `python -m components register "
                                                           "--device cortex-m4` again once it is up") as caught:
        register.register_model(params, report, reports, None)
    from components.stages import final_errors

    assert isinstance(caught.value, final_errors())  # Airflow fails the task instead of retrying on top


def test_a_version_whose_aliases_cannot_be_set_is_removed_and_a_rerun_completes(validated, monkeypatch):
    from mlflow import MlflowClient

    params, report, reports = validated
    real = MlflowClient.set_registered_model_alias
    failures = {"left": 2}

    def flaky(self, name, alias, version):
        if failures["left"]:
            failures["left"] -= 1
            raise MlflowException("the server went away", error_code="TEMPORARILY_UNAVAILABLE")
        return real(self, name, alias, version)

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", flaky)
    for _ in range(2):  # two runs meet the outage; each deletes the version it made
        with pytest.raises(register.RegistryUnavailable):
            register.register_model(params, report, reports, None)
    outcome = register.register_model(params, report, reports, None)
    versions = _client(params).search_model_versions(f"name = '{outcome.name}'")
    assert [str(v.version) for v in versions] == [outcome.version]  # the two half-done versions were deleted
    assert outcome.aliases == ("candidate", "champion")

    failures["left"] = 100  # down for good: nothing stays registered
    with pytest.raises(register.RegistryUnavailable):
        register.register_model(params, _variant(report, "other", 0.9, 1.0), reports, None)
    assert [str(v.version) for v in _client(params).search_model_versions(f"name = '{outcome.name}'")] == [
        outcome.version]


def test_a_failed_alias_move_puts_the_old_aliases_back_and_keeps_an_earlier_version(validated, monkeypatch):
    from mlflow import MlflowClient

    params, report, reports = validated
    champion = register.register_model(params, _variant(report, "v1", 0.80, 1.0), reports, None)
    real = MlflowClient.set_registered_model_alias

    def champion_move_fails(self, name, alias, version):
        if alias == "champion" and str(version) != champion.version:
            raise MlflowException("the server went away", error_code="TEMPORARILY_UNAVAILABLE")
        return real(self, name, alias, version)

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", champion_move_fails)
    with pytest.raises(register.RegistryUnavailable):
        register.register_model(params, _variant(report, "v2", 0.95, 1.0), reports, None)
    client = _client(params)
    assert str(client.get_model_version_by_alias(champion.name, "champion").version) == champion.version
    assert str(client.get_model_version_by_alias(champion.name, "candidate").version) == champion.version
    assert [str(v.version) for v in client.search_model_versions(f"name = '{champion.name}'")] == [champion.version]

    # a version found again (a rerun of the same validation) is never deleted when its aliases fail
    monkeypatch.setattr(MlflowClient, "set_registered_model_alias",
                        lambda *a: (_ for _ in ()).throw(MlflowException("down", error_code="TEMPORARILY_UNAVAILABLE")))
    with pytest.raises(register.RegistryUnavailable):
        register.register_model(params, _variant(report, "v1", 0.80, 1.0), reports, None)
    assert [str(v.version) for v in client.search_model_versions(f"name = '{champion.name}'")] == [champion.version]


def _tags(accuracy: float, latency_ms: float, per_user: dict | None = None) -> dict[str, str]:
    import json as _json

    return {"accuracy": str(accuracy), "latency_ms": str(latency_ms),
            "per_user_accuracy": _json.dumps(per_user or {}), "accuracy_ci95": ""}


def test_the_champion_decision_is_paired_over_the_same_held_out_users():
    users = {"u1": 0.80, "u2": 0.95, "u3": 0.70, "u4": 0.90, "u5": 0.85}
    champion = _tags(0.84, 1.0, users)
    # a point better on every held-out user: a real gain, whatever the spread between users
    better = _tags(0.85, 2.0, {u: v + 0.01 for u, v in users.items()})
    promote, why = beats(better, champion, 0.005)
    assert promote and "more accurate than the champion on the same held-out users" in why and "5 users" in why
    # the same mean gain from one lucky user: the interval reaches below zero, so it is only "as accurate"
    lucky = _tags(0.85, 2.0, users | {"u3": 0.75})
    promote, why = beats(lucky, champion, 0.005)
    assert not promote and "does not beat the champion" in why and "95 % CI" in why
    promote, why = beats(_tags(0.85, 0.5, users | {"u3": 0.75}), champion, 0.005)
    assert promote and "as accurate as the champion" in why and "faster" in why


def test_without_shared_users_the_means_are_compared_and_their_intervals_said():
    champion = _tags(0.80, 1.0, {"a": 0.8}) | {"accuracy_ci95": "0.750000,0.850000"}
    promote, why = beats(_tags(0.90, 1.0, {"b": 0.9}), champion, 0.005)
    assert promote and "not on the same users" in why and "95 % CI 0.7500 to 0.8500" in why
