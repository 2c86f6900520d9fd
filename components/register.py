"""Stage `register`: every device's model that passed validation goes into the MLflow model registry.

One registered model per task and device (`<prefix>-<dataset>-<device>`). A
version holds the device's deployed file (loadable as `models:/<name>@<alias>`,
see tracking/registry.py), the other exported formats and the validation
report; its tags link it to the data hash, the git commit, the pipeline run
and the validate run; its description is its model card (reports/model_card.py: the data,
held-out users, architecture, accuracy with its interval, latency and size
against the baseline, every gate, how to load it). A new version gets the
alias `candidate`; it takes `champion` only if it beats the current champion
on that device: higher on-device accuracy, or within `champion_tolerance` of
it and faster. A model that failed a gate is never registered; the stage says
which gates and why.

The tracking server may be down. Retrying it is the job of one layer, MLflow's
HTTP client (components/tracking/server.py: each call rides out a ~30 s
outage); when that gives up, registration fails with one clear error instead
of retrying again on top, and nothing is left half registered.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from components.artifacts.atomic import write_text_atomic
from components.artifacts.seals import ChecksumMismatch, verify_sealed
from components.config import ConfigError, Params
from components.reports.model_card import model_card
from components.reports.validate import failed_gates_text
from components.stages import output
from components.tracking import registry, server
from components.tracking.registry import RegistryUnavailable, registered_model_name

if TYPE_CHECKING:
    from components.stages import Place

STAGE = "register"
CARD_FILE = "model_card.md"  # in the report folder: the registered version's card, as its description says
log = logging.getLogger(__name__)


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
    path = output(bundle, "validate", "report.json")
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
            failed = RegisterOutcome(device.name, False, name, None, (), f"registration failed: {server.first_line(exc)}")
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
        done = registry.register_version(params, report, exported_dir(report, bundle), bundle, pipeline_key, STAGE)
    except Exception as exc:
        if not server.transient(exc):
            raise
        raise RegistryUnavailable(
            f"{report['device']}: the MLflow tracking server did not answer ({server.first_line(exc)}); no version of this "
            f"validation holds an alias; run `python -m components register --device {report['device']}` again "
            "once it is up") from exc
    return RegisterOutcome(report["device"], True, done.name, done.version, done.aliases, done.decision)


def _verify_exports(report: dict, bundle: Path) -> None:
    from components.artifacts.seals import verify

    folder = exported_dir(report, bundle)
    for entry in report["exports"]["compressed"]["files"].values():
        verify(folder / entry["file"], entry["sha256"])


def exported_dir(report: dict, bundle: Path) -> Path:
    """validate's sub-folder holding the deployed model's exported files (`fallback` after a retry)."""
    return bundle / report["exports"]["compressed"]["dir"]


def summary(outcome: RegisterOutcome) -> str:
    if not outcome.registered:
        return f"register {outcome.device}: {outcome.reason}"
    return (f"register {outcome.device}: {outcome.name} version {outcome.version}, alias(es) "
            f"{', '.join(outcome.aliases)} ({outcome.reason})")
