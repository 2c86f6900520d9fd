"""Where the tracking store is, and one clear error when a tracking server stays down.

Default store: SQLite and a local artifact folder under `pipeline.state_dir`
(ignored by git), so a run needs no server. `MLFLOW_TRACKING_URI` in the
environment switches to a server.

Server mode (an http(s) tracking URI, see infra/mlflow/server.py): the server
proxies every artifact to its store (S3), so this process needs no S3
credentials, and every call can meet an unreachable server or a server whose
S3 is down (it answers 5xx). MLflow's own HTTP client retries both with
exponential backoff; its defaults (7 retries, ~4 min) are lowered here to
SERVER_RETRY_DEFAULTS unless the environment sets them, and when the retries
run out the call fails with one `TrackingUnavailable` that names the
endpoint, the attempts, the time spent and what to check. `transient` is the
one judge of whether an error is the server's trouble (worth a later retry)
or a refused request (which fails the same way again).
"""

from __future__ import annotations

import logging
import os
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from components.config import ConfigError, Params

log = logging.getLogger(__name__)
# MLflow's HTTP retry knobs (read on every request) in server mode: 4 retries waiting 0, 4, 8, 16 s (+ up to 1 s
# jitter each; urllib3's first retry does not wait) ride out a ~30 s outage and fail within about a minute.
SERVER_RETRY_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2",
                         "MLFLOW_HTTP_REQUEST_TIMEOUT": "60"}
_MLFLOW_DEFAULT_RETRIES = 7
# MLflow error codes of a request the server refused: the same request fails the same way again
PERMANENT_ERRORS = frozenset({"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST",
                              "PERMISSION_DENIED", "UNAUTHENTICATED", "BAD_REQUEST", "INVALID_STATE"})


class TrackingUnavailable(ConnectionError):
    """The tracking server, or the artifact store behind it, failed through every retry.

    A ConnectionError, so callers that retry connection trouble (register) retry this too.
    """

    def __init__(self, message: str, server_answers: bool):
        super().__init__(message)
        self.server_answers = server_answers


def tracking_uri(params: Params) -> str:
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    db = params.path(params.pipeline.state_dir).resolve() / "mlflow" / "mlflow.db"
    return f"sqlite:///{db}"


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def configured_mlflow(params: Params):
    """The mlflow module, pointed at this pipeline's tracking store."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    uri = tracking_uri(params)
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    if is_server(uri):
        for key, value in SERVER_RETRY_DEFAULTS.items():
            os.environ.setdefault(key, value)  # in the environment, so child processes retry alike
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    # mlflow also exports the URI to the environment; undo that, so that the
    # environment keeps meaning "the user chose a server" (and a later call
    # with other params, or a child process, is not silently pointed here).
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    return mlflow


def experiment_id(mlflow, params: Params, *, create: bool = True) -> str:
    """The id of the pipeline's experiment (`pipeline.experiment`); made on first use unless `create` is False,
    where a missing one is a `ConfigError` that says to run the pipeline first."""
    name = params.pipeline.experiment
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    if not create:
        raise ConfigError(f"no MLflow experiment {name!r} at {tracking_uri(params)}; run the pipeline first "
                          "(python -m components pipeline)")
    location = None
    if mlflow.get_tracking_uri().startswith("sqlite:"):  # the embedded default: artifacts beside the DB
        location = (params.path(params.pipeline.state_dir).resolve() / "mlflow" / "artifacts").as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


@contextmanager
def reachable(mlflow, what: str, artifact_uri: str | None = None) -> Iterator[None]:
    """Turn MLflow's "retries exhausted" into one TrackingUnavailable that says where and what to check."""
    start = time.monotonic()
    try:
        yield
    except Exception as exc:
        uri = mlflow.get_tracking_uri()
        if isinstance(exc, TrackingUnavailable) or not is_server(uri) or not transient(exc):
            raise
        raise unavailable(what, uri, time.monotonic() - start, exc, artifact_uri) from exc


def unavailable(what: str, tracking_uri: str, elapsed_s: float, exc: BaseException,
                artifact_uri: str | None = None) -> TrackingUnavailable:
    retries = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(_MLFLOW_DEFAULT_RETRIES))
    attempts = int(retries) + 1 if retries.isdigit() else "several"
    answers = _server_answers(tracking_uri)
    where = _s3_location(artifact_uri)
    if answers:
        check = ("the tracking server answers /health, so the artifact store behind it failed: check the server's "
                 "MLFLOW_ARTIFACTS_DESTINATION, MLFLOW_S3_ENDPOINT_URL, bucket and AWS credentials, and its log")
    else:
        check = ("the tracking server does not answer /health: check that it runs (python infra/mlflow/server.py "
                 "status) and MLFLOW_TRACKING_URI")
    backoff = os.environ.get("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "2")
    message = (f"could not {what}{f' ({where})' if where else ''} via {tracking_uri} after {attempts} attempts over "
               f"{elapsed_s:.0f} s ({reason(exc)}); {check} (retries: MLFLOW_HTTP_REQUEST_MAX_RETRIES={retries}, "
               f"MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR={backoff})")
    return TrackingUnavailable(message, server_answers=answers)


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def transient(exc: BaseException) -> bool:
    """Whether `exc` is the tracking server's trouble, worth trying again later: no connection, a timeout, or
    5xx answers that outlived the retries. A request the server refused (a 4xx, or one of `PERMANENT_ERRORS`)
    is not: it fails the same way again."""
    import requests
    from mlflow.exceptions import MlflowException

    for link in _chain(exc):
        if isinstance(link, requests.exceptions.HTTPError):
            return link.response is not None and link.response.status_code >= 500
        if isinstance(link, (requests.exceptions.ConnectionError, requests.exceptions.RetryError,
                             requests.exceptions.Timeout, ConnectionError, TimeoutError)):
            return True
    return isinstance(exc, MlflowException) and exc.error_code not in PERMANENT_ERRORS


def reason(exc: BaseException) -> str:
    """The innermost cause in a few words: `too many 500 error responses`, `connection refused`, a timeout."""
    from urllib3.exceptions import MaxRetryError

    for link in _chain(exc):
        inner = link.args[0] if link.args and isinstance(link.args[0], MaxRetryError) else link
        if isinstance(inner, MaxRetryError) and inner.reason is not None:
            if "Connection refused" in str(inner.reason):
                return "connection refused"
            args = getattr(inner.reason, "args", ())
            return str(args[0] if args else inner.reason)[:200]
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _server_answers(tracking_uri: str) -> bool:
    try:
        with urllib.request.urlopen(f"{tracking_uri.rstrip('/')}/health", timeout=5) as resp:
            return resp.status == 200
    except (OSError, ValueError):
        return False


def _s3_location(artifact_uri: str | None) -> str | None:
    """Where a proxied artifact lives in the server's store, when this environment knows the destination."""
    destination = os.environ.get("MLFLOW_ARTIFACTS_DESTINATION")
    if not artifact_uri or not destination or not artifact_uri.startswith("mlflow-artifacts:"):
        return None
    return f"{destination.rstrip('/')}/{artifact_uri.removeprefix('mlflow-artifacts:').lstrip('/')}"


@contextmanager
def best_effort(what: str) -> Iterator[None]:
    """One quick try (no retries), a warning if it fails: for clean-up while an earlier error is on its way."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"})
    try:
        yield
    except Exception as exc:
        log.warning("could not %s (%s)", what, reason(exc))
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def first_line(exc: BaseException) -> str:
    """The first line of an error's message (its type where it has none), at most 200 characters."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]
