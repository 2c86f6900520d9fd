"""Stage `register`: every device's model that passed validation goes into the MLflow model registry.

One registered model per task and device (`<prefix>-<dataset>-<device>`). A
version holds the device's deployed file (loadable as `models:/<name>@<alias>`,
see registry_model.py), the other exported formats and the validation report;
its tags link it to the data hash, the git commit, the pipeline run and the
validate run; its description is its model card (model_card.py: the data,
held-out users, architecture, accuracy with its interval, latency and size
against the baseline, every gate, how to load it). A new version gets the
alias `candidate`; it takes `champion` only if it beats the current champion
on that device: higher on-device accuracy, or within `champion_tolerance` of
it and faster. A model that failed a gate is never registered; the stage says
which gates and why.

The tracking server may be down. Retrying it is the job of one layer, MLflow's
HTTP client (components/tracking.py: each call rides out a ~30 s outage);
when that gives up, registration fails with one clear error instead of
retrying again on top. Nothing is left half registered: every file is logged
before the version is created, a version whose aliases could not be set is
deleted again, and a rerun finds a version this validation already created
(tag `validation_id`) instead of making a second one.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from components.config import ConfigError, Params
from components.data.outputs import write_text_atomic
from components.data.checksums import ChecksumMismatch, verify_sealed
from components.lineage import requirements
from components.model_card import model_card, registered_model_description
from components.tracking import NOT_PROMOTED, TrackingUnavailable, registered_model_name
from components.validate_report import failed_gates_text

if TYPE_CHECKING:
    from components.stages import Place

STAGE = "register"
CANDIDATE, CHAMPION = "candidate", "champion"
CARD_FILE = "model_card.md"  # in the report folder: the registered version's card, as its description says
log = logging.getLogger(__name__)
_PERMANENT = {"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST", "PERMISSION_DENIED",
              "UNAUTHENTICATED", "BAD_REQUEST", "INVALID_STATE"}


class RegistryUnavailable(TrackingUnavailable):
    """The tracking server did not answer through its client's retries; nothing holds an alias."""

    def __init__(self, message: str):
        super().__init__(message, server_answers=False)


DEVICE_FAILURES = (RegistryUnavailable, ChecksumMismatch)  # one device's registry trouble leaves the others alone


@dataclass(frozen=True)
class RegisterOutcome:
    device: str
    registered: bool
    name: str
    version: str | None
    aliases: tuple[str, ...]
    reason: str

    def to_dict(self) -> dict:
        return {"device": self.device, "registered": self.registered, "name": self.name, "version": self.version,
                "aliases": list(self.aliases), "reason": self.reason}


def model_name(params: Params, report: dict) -> str:
    return registered_model_name(params, report["dataset"], report["device"])


def run(params: Params, device_name: str, *, validate: Path, out: Place, pipeline_key: str | None = None
        ) -> RegisterOutcome:
    """Register one device's validated model if it passed every gate; record the outcome in `out.report`.

    `validate`: validate's folder for the device (its report.json and report.html beside the exported files).
    """
    from components.devices.pool import chosen

    (device,) = chosen(params, [device_name])
    bundle, reports = Path(validate), Path(out.report)
    path = bundle / "report.json"
    if not path.exists():
        raise ConfigError(f"register {device.name}: no validation report at {path}; run `python -m components "
                          f"validate --device {device.name}` first")
    verify_sealed(bundle, ["report.json", "report.html"],
                  f"run `python -m components validate --device {device.name}` again")
    report = json.loads(path.read_text())
    name = model_name(params, report)
    if report["passed"]:
        try:
            outcome = register_model(params, report, bundle, pipeline_key)
        except Exception as exc:  # recorded beside the report, so no earlier run's outcome is left there
            failed = RegisterOutcome(device.name, False, name, None, (), f"registration failed: {_short(exc)}")
            write_text_atomic(reports / "registry.json", json.dumps(failed.to_dict(), indent=2))
            raise
    else:
        outcome = RegisterOutcome(device.name, False, name, None, (),
                                  f"not registered: failed {failed_gates_text(report)}")
        log.warning("%s: %s", device.name, outcome.reason)
    if outcome.registered:  # the version's description, also as a file beside the outcome (a reviewer's copy)
        write_text_atomic(reports / CARD_FILE, model_card(report, name, outcome.version))
    else:
        (reports / CARD_FILE).unlink(missing_ok=True)  # an earlier run's card is not this validation's
    write_text_atomic(reports / "registry.json", json.dumps(outcome.to_dict(), indent=2))
    return outcome


def register_model(params: Params, report: dict, bundle: Path, pipeline_key: str | None) -> RegisterOutcome:
    """Register the validated model; `bundle`: validate's folder for the device (the report, the exported files).

    One attempt: the HTTP client under it has already retried each call. A
    server that stays down fails it with `RegistryUnavailable`, saying what to rerun.
    """
    _verify_exports(report, bundle)  # a file changed since validation is refused before anything is logged
    try:
        return _register(params, report, bundle, pipeline_key)
    except Exception as exc:
        if not _transient(exc):
            raise
        raise RegistryUnavailable(
            f"{report['device']}: the MLflow tracking server did not answer ({_short(exc)}); no version of this "
            f"validation holds an alias; run `python -m components register --device {report['device']}` again "
            "once it is up") from exc


def _transient(exc: Exception) -> bool:
    """Connection trouble and server-side errors are worth retrying; a refused request is not."""
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        return exc.error_code not in _PERMANENT
    import requests

    return isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ConnectionError,
                            TimeoutError))


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]


def _verify_exports(report: dict, bundle: Path) -> None:
    from components.data.checksums import verify

    folder = exported_dir(report, bundle)
    for entry in report["exports"]["compressed"]["files"].values():
        verify(folder / entry["file"], entry["sha256"])


def exported_dir(report: dict, bundle: Path) -> Path:
    """validate's sub-folder holding the deployed model's exported files (`fallback` after a retry)."""
    return bundle / report["exports"]["compressed"]["dir"]


def _register(params: Params, report: dict, bundle: Path, pipeline_key: str | None) -> RegisterOutcome:
    from mlflow.exceptions import MlflowException

    from components import tracking

    mlflow = tracking.configured_mlflow(params)
    client = mlflow.MlflowClient()
    name = model_name(params, report)
    device = report["device"]
    version = tracking.version_of_validation(client, name, report["validation_id"])
    created = version is None
    if created:
        with tracking.stage_run(params, STAGE, pipeline_key, device=device) as mlrun:
            model = _log_model(mlflow, report, bundle)
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
    return RegisterOutcome(device, True, name, str(version), aliases, decision)


def _describe(client, name: str, version: str, report: dict) -> None:
    """The version's description is its model card; the registered model's, if empty, says what its versions are."""
    client.update_model_version(name, version, description=model_card(report, name, version))
    if not client.get_registered_model(name).description:
        client.update_registered_model(name, description=registered_model_description(report, name))


def _version_tags(params: Params, report: dict, pipeline_key: str | None) -> dict[str, str]:
    from components.tracking import git_commit

    comp = report["models"]["compressed"][report["deployed_format"]]
    return {"validation_id": report["validation_id"], "device": report["device"], "format": report["deployed_format"],
            "data_hash": report["data_hash"], "git_commit": git_commit(params.root),
            "pipeline_run": pipeline_key or report.get("pipeline_run", ""),
            "validate_run_id": report["validate_run_id"], "accuracy": f"{comp['accuracy']:.6f}",
            "accuracy_ci95": _ci_tag(comp.get("accuracy_ci")), "held_out_users": ",".join(report["test_users"]),
            "per_user_accuracy": json.dumps({u: round(v, 6) for u, v in
                                             (comp.get("per_user_accuracy") or {}).items()}, sort_keys=True),
            "latency_ms": f"{comp['latency_ms']:.6g}", "size_bytes": str(comp["bytes"]),
            "sha256": comp["sha256"]}


def _log_model(mlflow, report: dict, bundle: Path):
    """Log the pyfunc model of the deployed file, with every exported format and the report beside it (ModelInfo)."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    import components
    import numpy as np

    exports = report["exports"]["compressed"]
    folder = exported_dir(report, bundle)
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


def beats(candidate: dict[str, str], champion: dict[str, str], tolerance: float) -> tuple[bool, str]:
    """Whether a version's tags beat the champion's: more accurate, or as accurate (within tolerance) and faster.

    Where both were scored on the same held-out users (their per-user accuracies are in the tags), the
    comparison is paired, user by user: "more accurate" needs the mean gain above `tolerance` *and* its 95 %
    interval above zero; a gain the interval cannot tell from noise counts as "as accurate". Otherwise the
    means over each one's own held-out users are compared, and the decision says their intervals.
    """
    from components.evaluation import interval_text, paired_ci

    acc_c, acc_h = float(candidate["accuracy"]), float(champion["accuracy"])
    lat_c, lat_h = float(candidate["latency_ms"]), float(champion["latency_ms"])
    faster = f"faster ({lat_c:.4g} vs {lat_h:.4g} ms)"
    per_c, per_h = (json.loads(t.get("per_user_accuracy") or "{}") for t in (candidate, champion))
    if len(set(per_c) & set(per_h)) >= 2:
        diff = paired_ci(per_c, per_h)
        said = f"accuracy gain per user {interval_text(diff, 4)}"
        if diff["mean"] > tolerance and diff["low"] > 0:
            return True, f"more accurate than the champion on the same held-out users: {said}"
        if diff["mean"] >= -tolerance and lat_c < lat_h:
            return True, f"as accurate as the champion ({said}) and {faster}"
        return False, f"{NOT_PROMOTED} ({said}; latency {lat_c:.4g} vs {lat_h:.4g} ms)"
    said = f"accuracy {acc_c:.4f}{_ci_text(candidate)} vs {acc_h:.4f}{_ci_text(champion)}, not on the same users"
    if acc_c > acc_h + tolerance:
        return True, f"more accurate than the champion ({said})"
    if acc_c >= acc_h - tolerance and lat_c < lat_h:
        return True, f"as accurate as the champion ({said}) and {faster}"
    return False, f"{NOT_PROMOTED} ({said}; latency {lat_c:.4g} vs {lat_h:.4g} ms)"


def _ci_text(tags: dict[str, str]) -> str:
    if not tags.get("accuracy_ci95"):
        return ""
    low, high = tags["accuracy_ci95"].split(",")
    return f" (95 % CI {float(low):.4f} to {float(high):.4f})"


def _set_aliases(client, name: str, version: str, tolerance: float) -> tuple[tuple[str, ...], str]:
    """`candidate` to `version`, and `champion` too if it beats the champion; on failure the old targets come back."""
    mine = client.get_model_version(name, version).tags
    champion = _alias_target(client, name, CHAMPION)
    if champion is None:
        promote, why = True, "no champion yet"
    elif str(champion.version) == str(version):
        promote, why = True, "already the champion"
    else:
        promote, why = beats(mine, champion.tags, tolerance)
        why += f" (version {champion.version})"
    client.set_model_version_tag(name, version, "champion_decision", why)
    previous = {CANDIDATE: _alias_target(client, name, CANDIDATE), CHAMPION: champion}
    moved = []
    try:
        for alias in (CANDIDATE, CHAMPION) if promote else (CANDIDATE,):
            client.set_registered_model_alias(name, alias, version)
            moved.append(alias)
    except Exception:
        _restore_aliases(client, name, {alias: previous[alias] for alias in moved})
        raise
    return ((CANDIDATE, CHAMPION) if promote else (CANDIDATE,)), why


def _alias_target(client, name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def _restore_aliases(client, name: str, previous: dict) -> None:
    for alias, target in previous.items():
        try:
            if target is None:
                client.delete_registered_model_alias(name, alias)
            else:
                client.set_registered_model_alias(name, alias, target.version)
        except Exception as exc:  # the server is down: said, and the next attempt moves the alias again
            log.warning("%s: alias %s could not be put back (%s)", name, alias, _short(exc))


def _delete_quietly(client, name: str, version: str) -> None:
    try:
        client.delete_model_version(name, version)
        log.warning("%s version %s: its aliases could not be set, so it was deleted again", name, version)
    except Exception as exc:  # the server is down: a rerun finds the version by its validation_id
        log.warning("%s version %s: aliases not set and the version could not be deleted (%s); it holds no alias, "
                    "and rerunning register completes it", name, version, _short(exc))


def summary(outcome: RegisterOutcome) -> str:
    if not outcome.registered:
        return f"register {outcome.device}: {outcome.reason}"
    return (f"register {outcome.device}: {outcome.name} version {outcome.version}, alias(es) "
            f"{', '.join(outcome.aliases)} ({outcome.reason})")
