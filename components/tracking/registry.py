"""The model registry: one registered model per data set and device, its versions, aliases and promotion.

`register_version` puts a validated model into the registry (register.py, the
stage, decides whether it may): the deployed file as a pyfunc model
(registry_model.py loads it), the other exported formats and the validation
report beside it, tags that link it to its data, commit and runs, its model
card as the description. It gets the alias `candidate`, and `champion` too
when it beats the current champion (`beats`); whether it did is the boolean
tag `promoted`, and `champion_decision` says why in words. Nothing is left
half registered: every file is logged before the version is created, a
version whose aliases could not be set is deleted again, and a rerun finds a
version this validation already made (`version_of_validation`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from components.config import Params
from components.decisions.champion import NOT_PROMOTED, beats
from components.decisions.gates import deployed_pair
from components.reports.model_card import model_card, registered_model_description
from components.tracking import server
from components.tracking.lineage import requirements
from components.tracking.server import TrackingUnavailable

CANDIDATE, CHAMPION = "candidate", "champion"
PROMOTED_TAG = "promoted"  # "true" on a version that became the champion when it was registered, else "false"
DECISION_TAG = "champion_decision"  # why it did or did not, in words
log = logging.getLogger(__name__)


class RegistryUnavailable(TrackingUnavailable):
    """The tracking server did not answer through its client's retries; nothing holds an alias."""

    def __init__(self, message: str):
        super().__init__(message, server_answers=False)


@dataclass(frozen=True)
class Registered:
    name: str
    version: str
    aliases: tuple[str, ...]
    decision: str


def registered_model_name(params: Params, dataset: str, device: str) -> str:
    """The registered model of one task and device: `<register.name_prefix>-<dataset>-<device>`."""
    return f"{params.register.name_prefix}-{dataset}-{device}"


def was_promoted(tags: dict[str, str]) -> bool:
    """Whether a version (its tags) became the champion when it was registered."""
    if PROMOTED_TAG in tags:
        return tags[PROMOTED_TAG] == "true"
    decision = tags.get(DECISION_TAG, "")  # a version registered before the tag existed: its decision says it
    return bool(decision) and not decision.startswith(NOT_PROMOTED)


def version_of_validation(client, name: str, validation_id: str) -> str | None:
    """The version of registered model `name` that holds validation `validation_id` (None: none, or no such model)."""
    from mlflow.exceptions import MlflowException

    try:
        found = client.search_model_versions(f"name = '{name}' and tags.validation_id = '{validation_id}'")
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    return str(found[0].version) if found else None


def alias_version(client, name: str, alias: str):
    """The version (MLflow's ModelVersion) alias `alias` of registered model `name` points at; None: no such alias
    or model."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def register_version(params: Params, report: dict, deployed: Path, bundle: Path, pipeline_key: str | None,
                     stage: str = "register") -> Registered:
    """Register validate's `report` (its folder `bundle`; `deployed`: the folder of the exported files); one
    attempt, since the HTTP client under it has already retried each call."""
    from mlflow.exceptions import MlflowException

    from components.tracking import runs

    mlflow = server.configured_mlflow(params)
    client = mlflow.MlflowClient()
    name = registered_model_name(params, report["dataset"], report["device"])
    device = report["device"]
    version = version_of_validation(client, name, report["validation_id"])
    created = version is None
    if created:
        with runs.stage_run(params, stage, pipeline_key, device=device) as mlrun:
            model = _log_model(mlflow, report, deployed, bundle)
            try:
                client.create_registered_model(name, tags={"device": device, "dataset": report["dataset"]},
                                               description=registered_model_description(report, name))
            except MlflowException as exc:
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            # model_id too: a tracking server accepts a `models:/m-...` source only with its logged model's id
            version = client.create_model_version(name, model.model_uri, run_id=mlrun.run_id,
                                                  model_id=model.model_id,
                                                  tags=_version_tags(params, report, pipeline_key)).version
            version = str(version)
            mlrun.set_tags({"registered_model": name, "registered_version": str(version)})
    try:
        _describe(client, name, version, report)  # before any alias points at it
        aliases, decision = _set_aliases(client, name, version, params.register.champion_tolerance)
    except Exception:
        if created:  # a version an earlier run created is kept: this rerun (or the next) completes it
            _delete_quietly(client, name, version)
        raise
    log.info("%s: registered %s version %s with alias(es) %s (%s)", device, name, version, ", ".join(aliases),
             decision)
    return Registered(name, str(version), aliases, decision)


def _describe(client, name: str, version: str, report: dict) -> None:
    """The version's description is its model card; the registered model's, if empty, says what its versions are."""
    client.update_model_version(name, version, description=model_card(report, name, version))
    if not client.get_registered_model(name).description:
        client.update_registered_model(name, description=registered_model_description(report, name))


def _version_tags(params: Params, report: dict, pipeline_key: str | None) -> dict[str, str]:
    from components.tracking.runs import git_commit

    comp = deployed_pair(report)[1]
    return {"validation_id": report["validation_id"], "device": report["device"], "format": report["deployed_format"],
            "data_hash": report["data_hash"], "git_commit": git_commit(params.root),
            "pipeline_run": pipeline_key or report.get("pipeline_run", ""),
            "validate_run_id": report["validate_run_id"], "accuracy": f"{comp['accuracy']:.6f}",
            "accuracy_ci95": _ci_tag(comp.get("accuracy_ci")), "held_out_users": ",".join(report["test_users"]),
            "per_user_accuracy": json.dumps({u: round(v, 6) for u, v in
                                             (comp.get("per_user_accuracy") or {}).items()}, sort_keys=True),
            "latency_ms": f"{comp['latency_ms']:.6g}", "size_bytes": str(comp["bytes"]),
            "sha256": comp["sha256"]}


def _log_model(mlflow, report: dict, folder: Path, bundle: Path):
    """Log the pyfunc model of the deployed file, with every exported format and the report beside it (ModelInfo)."""
    import numpy as np
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    import components

    exports = report["exports"]["compressed"]
    deployed = exports["files"][report["deployed_format"]]
    artifacts = {"deployed": str(folder / deployed["file"])}
    artifacts |= {f"export_{fmt}": str(folder / e["file"]) for fmt, e in exports["files"].items()
                  if fmt != report["deployed_format"]}
    artifacts |= {f"report_{p.suffix[1:]}": str(p) for p in (bundle / "report.json", bundle / "report.html")}
    runtime = report["load_runtime"]
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *report["input_shape"]))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, len(report["classes"])))]))
    info = mlflow.pyfunc.log_model(
        name="model", python_model=str(Path(__file__).with_name("registry_model.py")), artifacts=artifacts,
        code_paths=[str(Path(components.__file__).parent)], signature=signature,
        model_config={"runtime": runtime, "format": report["deployed_format"], "sha256": deployed["sha256"],
                      "input_shape": report["input_shape"], "classes": report["classes"]},
        pip_requirements=requirements(runtime))
    return info


def _ci_tag(ci: dict | None) -> str:
    if not ci or ci.get("users", 0) < 2:
        return ""
    return f"{ci['low']:.6f},{ci['high']:.6f}"


def _set_aliases(client, name: str, version: str, tolerance: float) -> tuple[tuple[str, ...], str]:
    """`candidate` to `version`, and `champion` too if it beats the champion; on failure the old targets come back."""
    mine = client.get_model_version(name, version).tags
    champion = alias_version(client, name, CHAMPION)
    if champion is None:
        promote, why = True, "no champion yet"
    elif str(champion.version) == str(version):
        promote, why = True, "already the champion"
    else:
        promote, why = beats(mine, champion.tags, tolerance)
        why += f" (version {champion.version})"
    client.set_model_version_tag(name, version, DECISION_TAG, why)
    client.set_model_version_tag(name, version, PROMOTED_TAG, str(promote).lower())
    previous = {CANDIDATE: alias_version(client, name, CANDIDATE), CHAMPION: champion}
    moved = []
    try:
        for alias in (CANDIDATE, CHAMPION) if promote else (CANDIDATE,):
            client.set_registered_model_alias(name, alias, version)
            moved.append(alias)
    except Exception:
        _restore_aliases(client, name, {alias: previous[alias] for alias in moved})
        raise
    return ((CANDIDATE, CHAMPION) if promote else (CANDIDATE,)), why


def _restore_aliases(client, name: str, previous: dict) -> None:
    for alias, target in previous.items():
        try:
            if target is None:
                client.delete_registered_model_alias(name, alias)
            else:
                client.set_registered_model_alias(name, alias, target.version)
        except Exception as exc:  # the server is down: said, and the next attempt moves the alias again
            log.warning("%s: alias %s could not be put back (%s)", name, alias, server.first_line(exc))


def _delete_quietly(client, name: str, version: str) -> None:
    try:
        client.delete_model_version(name, version)
        log.warning("%s version %s: its aliases could not be set, so it was deleted again", name, version)
    except Exception as exc:  # the server is down: a rerun finds the version by its validation_id
        log.warning("%s version %s: aliases not set and the version could not be deleted (%s); it holds no alias, "
                    "and rerunning register completes it", name, version, server.first_line(exc))
