"""MLflow runs: one per stage execution, nested under one parent run per pipeline key.

Each run is named after the stage (`stage/device` for a per-device stage);
when a pipeline key is given (the Airflow run id, or the one `python -m
components pipeline` makes), the stage run is nested under the parent run of
that key. Where the store is and what happens when a server stays down:
server.py.

Interrupted runs end: while a stage run is open, SIGTERM and SIGHUP (`kill`,
Airflow, Kubernetes, a closed terminal) unwind the stage like Ctrl-C does, and
the run ends KILLED (an error ends it FAILED). What cannot be caught (SIGKILL,
the OOM killer, power loss) leaves the run RUNNING; the next run of the same
stage on the same host ends it KILLED once its recorded process is gone.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from components.config import Params
from components.tracking import server
from components.tracking.server import best_effort, reachable

log = logging.getLogger(__name__)
PIPELINE_KEY_TAG = "pipeline_run_key"  # on every run of one pipeline execution
PARENT_TAG = "pipeline_parent"  # only on its parent run
# Which process a stage run belongs to, so that a later run can tell whether it died: the host, its pid namespace
# (a container may share the host's name but not its pids), the pid, and the process's start (pids are reused).
HOST_TAG, PID_NAMESPACE_TAG, PID_TAG, START_TAG = "process.host", "process.pid_namespace", "process.pid", \
    "process.start_ticks"
ENDED_BY_TAG = "ended_by"  # on a run that another process ended for it
ERROR_TAG = "error"  # on a stage run that ended FAILED or KILLED: what stopped it (the night's summary says it)
STOP_SIGNALS = ("SIGTERM", "SIGHUP")  # the polite "stop now" signals; SIGINT is Python's KeyboardInterrupt already


class Terminated(SystemExit):
    """SIGTERM or SIGHUP arrived while a stage run was open: the stage unwinds and its run ends KILLED.

    Like KeyboardInterrupt not an Exception, so a stage's `except Exception` lets it through; a SystemExit with
    the shell's code for the signal (143 for SIGTERM), so the command exits as a process that SIGTERM killed
    does, without a traceback.
    """

    def __init__(self, signum: int):
        super().__init__(128 + signum)
        self.signum = signum

    def __str__(self) -> str:
        return f"stopped by {signal.Signals(self.signum).name}"


def git_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if out.returncode != 0:
        return "unknown"
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


class StageRun:
    """What a stage may record; wraps the active MLflow run."""

    def __init__(self, mlflow, run):
        self._mlflow, self.run = mlflow, run
        self._dataset = None  # the windows this run declared as its input (log_windows_input)

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        flat = {k: (json.dumps(v) if isinstance(v, (list, tuple)) else v) for k, v in flatten(params).items()}
        items = list(flat.items())
        with reachable(self._mlflow, f"log the params of run {self.run_id}"):
            for i in range(0, len(items), 100):
                self._mlflow.log_params(dict(items[i : i + 100]))

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None, model_id: str | None = None
                    ) -> None:
        """Log metrics; with `model_id`, linked to that LoggedModel (and to the windows this run declared)."""
        clean = {metric_key(k): float(v) for k, v in metrics.items()}
        linked = {"model_id": model_id, "dataset": self._dataset} if model_id else {}
        with reachable(self._mlflow, f"log the metrics of run {self.run_id}"):
            self._mlflow.log_metrics(clean, step=step, **linked)

    def log_windows_input(self, windows, context: str, ingest_run_id: str | None = None) -> None:
        """Declare ingest's windows (components.data.windows.Windows) an input of this run, as an MLflow dataset:
        name the data set, digest its data hash, source the ingest folder (see lineage.py). `context` says how
        the run used them (`training`, `evaluation`, `produced`); the ingest run that wrote them is found by data
        hash unless given."""
        from components.tracking import lineage

        with reachable(self._mlflow, f"log the dataset input of run {self.run_id}"):
            self._dataset = lineage.log_windows_input(self._mlflow, self.run, windows, context, ingest_run_id)

    def log_model_folder(self, model_dir: Path, name: str = "model", tags: Mapping[str, str] | None = None) -> str:
        """Log a saved model folder (components.models.save) as a LoggedModel of this run, loadable with
        `mlflow.pyfunc.load_model` and nothing pickled; return its model_id (for `log_metrics(model_id=...)`)."""
        from components.tracking import lineage

        with reachable(self._mlflow, f"log model {name!r} of run {self.run_id}"):
            info = lineage.log_model_folder(self._mlflow, Path(model_dir), name, dict(tags or {}))
        return info.model_id

    def find_logged_model(self, model_dir: Path) -> str | None:
        """The id of the LoggedModel an earlier run logged from a folder with these weights (None: none was)."""
        from components.tracking import lineage

        with reachable(self._mlflow, f"find the logged model of {model_dir}"):
            return lineage.find_model(self._mlflow, self.run.info.experiment_id, Path(model_dir))

    def set_tags(self, tags: Mapping[str, str]) -> None:
        with reachable(self._mlflow, f"set the tags of run {self.run_id}"):
            self._mlflow.set_tags(dict(tags))

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        target = "/".join(filter(None, [self.run.info.artifact_uri, artifact_path, Path(path).name]))
        with reachable(self._mlflow, f"log artifact {target}", target):
            self._mlflow.log_artifact(str(path), artifact_path=artifact_path)


def run_name(stage: str, device: str | None = None) -> str:
    """The MLflow run name of one stage execution: `stage`, or `stage/device` for a per-device stage."""
    return f"{stage}/{device}" if device else stage


def metric_key(key: str) -> str:
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in key)


def _pipeline_run_id(mlflow, experiment_id: str, key: str, commit: str) -> str:
    """The parent run for `key`, created on first use (so retried tasks reuse it)."""
    found = mlflow.search_runs(
        [experiment_id], filter_string=f"tags.{PARENT_TAG} = '{key}'", max_results=1, output_format="list"
    )
    if found:
        return found[0].info.run_id
    client = mlflow.MlflowClient()
    run = client.create_run(experiment_id, run_name="pipeline", tags={PARENT_TAG: key, PIPELINE_KEY_TAG: key, "git_commit": commit})
    return run.info.run_id


def _retire_earlier_attempts(mlflow, experiment_id: str, key: str, run_name: str, current_run_id: str) -> None:
    """Delete (recoverably) earlier attempts of this stage in this pipeline run.

    A retried or re-run task (its worker killed mid-task, a failure, a cleared
    task) starts its stage run again, and its output replaces the earlier
    attempt's in the run-keyed folder; without this the experiment would show
    the dead or replaced attempt beside the one that counts. The task's log
    and the failure alert keep what happened to it; a deleted run can be
    restored (`mlflow runs restore`) until the store is garbage-collected.
    """
    found = mlflow.search_runs(
        [experiment_id], output_format="list",
        filter_string=f"tags.{PIPELINE_KEY_TAG} = '{key}' and attributes.run_name = '{run_name}'",
    )
    client = mlflow.MlflowClient()
    for run in (r for r in found if r.info.run_id != current_run_id):
        log.warning("MLflow run %s (%s) is an earlier attempt of %s in this pipeline run: deleting it",
                    run.info.run_id, run.info.status, run_name)
        client.set_tag(run.info.run_id, "superseded", "a later attempt of the same stage replaced this one")
        client.delete_run(run.info.run_id)


@contextmanager
def stage_run(params: Params, stage: str, pipeline_key: str | None = None, device: str | None = None
              ) -> Iterator[StageRun]:
    """Open the MLflow run of one stage execution (`stage/device` for per-device stages).

    It ends FINISHED, FAILED if the stage raises, KILLED if a signal stops it (SIGINT, SIGTERM, SIGHUP).
    Earlier runs of the same stage that a vanished process left RUNNING end KILLED first.
    """
    mlflow = server.configured_mlflow(params)
    commit = git_commit(params.root)
    tags = {"stage": stage, "git_commit": commit, **_process_tags()}
    if pipeline_key:
        tags[PIPELINE_KEY_TAG] = pipeline_key
    if device:
        tags["device"] = device
    name = run_name(stage, device)
    with reachable(mlflow, f"start the MLflow run {name}"):
        experiment_id = server.experiment_id(mlflow, params)
        parent = _pipeline_run_id(mlflow, experiment_id, pipeline_key, commit) if pipeline_key else None
        run = mlflow.start_run(run_name=name, experiment_id=experiment_id, parent_run_id=parent,
                               nested=parent is not None, tags=tags)
    log.info("MLflow run %s (%s) in %s", run.info.run_id, stage, server.tracking_uri(params))
    caught: list[int] = []
    try:
        with _signals_unwind(caught):
            with reachable(mlflow, f"end the runs that earlier attempts of {name} left behind"):
                _sweep_dead_runs(mlflow, experiment_id, name, run.info.run_id)
                if pipeline_key:
                    _retire_earlier_attempts(mlflow, experiment_id, pipeline_key, name, run.info.run_id)
            yield StageRun(mlflow, run)
    except BaseException as exc:
        status = "KILLED" if caught or isinstance(exc, KeyboardInterrupt) else "FAILED"
        if status == "KILLED":
            log.warning("%s stopped by %s: MLflow run %s ends KILLED", name,
                        signal.Signals(caught[0]).name if caught else "SIGINT", run.info.run_id)
        with best_effort(f"record the error of run {run.info.run_id}"):
            mlflow.set_tag(ERROR_TAG, error_text(exc, caught))
        with best_effort(f"mark run {run.info.run_id} {status}"):
            mlflow.end_run(status)  # pops the active run even when the server does not answer
        raise
    with reachable(mlflow, f"end the MLflow run {name}"):
        mlflow.end_run("FINISHED")


def error_text(exc: BaseException, caught: list[int] | None = None, limit: int = 1000) -> str:
    """`Type: message` of what stopped a stage, on one line and at most `limit` characters."""
    if caught or isinstance(exc, KeyboardInterrupt):
        return f"stopped by {signal.Signals(caught[0]).name if caught else 'SIGINT'}"
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:limit] if text else type(exc).__name__


@contextmanager
def _signals_unwind(caught: list[int]) -> Iterator[None]:
    """While open, SIGTERM and SIGHUP raise Terminated (noted in `caught`) instead of ending the process unwound.

    A handler that someone else installed (Airflow's) is called instead, after the note; a signal the process
    ignores (SIGHUP under nohup) stays ignored. The handlers before are put back on the way out, so nested and
    consecutive runs in one process compose. Python sets handlers only in the main thread: elsewhere, nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before: dict[int, Any] = {}

    def unwind(signum: int, frame) -> None:
        caught.append(signum)
        if callable(before[signum]):
            before[signum](signum, frame)
        else:
            raise Terminated(signum)

    for signum in (getattr(signal, name) for name in STOP_SIGNALS if hasattr(signal, name)):
        current = signal.getsignal(signum)
        if current not in (signal.SIG_IGN, None):  # None: set outside Python, so not ours to replace
            before[signum] = current
            signal.signal(signum, unwind)
    try:
        yield
    finally:
        for signum, handler in before.items():
            if signal.getsignal(signum) is unwind:  # else a later owner replaced it: theirs to restore
                signal.signal(signum, handler)


# ---- runs whose process died: ended by the next run of the same stage -------------------------------------------


def _process_tags() -> dict[str, str]:
    pid = os.getpid()
    return {HOST_TAG: socket.gethostname(), PID_NAMESPACE_TAG: _pid_namespace(), PID_TAG: str(pid),
            START_TAG: _process_start(pid) or ""}


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")  # e.g. pid:[4026531836]
    except OSError:
        return ""


def _process_start(pid: int) -> str | None:
    """When process `pid` started (clock ticks after boot, from /proc); "" if it runs but that is unknown; None if
    there is no such process (a zombie counts as none)."""
    if Path("/proc/self/stat").exists():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            return None
        return None if fields[0] in ("Z", "X") else fields[19]  # state (field 3), starttime (field 22)
    if os.name != "posix":
        return ""  # no way to tell here: counted as running, so its run is never swept
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # another user's process
    return ""


def _process_gone(tags: Mapping[str, str]) -> bool:
    """Whether the process that tagged a run is certainly gone: it ran in this host's pid namespace, and its pid
    is free or now belongs to a process that started at another time. A run from elsewhere is never judged."""
    pid = tags.get(PID_TAG, "")
    if (tags.get(HOST_TAG) != socket.gethostname() or tags.get(PID_NAMESPACE_TAG, "") != _pid_namespace()
            or not pid.isdigit()):
        return False
    started = _process_start(int(pid))
    return started is None or bool(started and tags.get(START_TAG) and started != tags[START_TAG])


def _sweep_dead_runs(mlflow, experiment_id: str, run_name: str, current_run_id: str) -> None:
    """End KILLED the runs of `run_name` still RUNNING whose process on this host is gone (SIGKILL, OOM, power loss).

    Fits with `_retire_earlier_attempts`, which comes after it: this one corrects the status of any pipeline's or
    a lone command's dead run; that one then deletes this pipeline run's earlier attempts, dead or not.
    """
    found = mlflow.search_runs([experiment_id], output_format="list", filter_string=(
        f"attributes.run_name = '{run_name}' and attributes.status = 'RUNNING' "
        f"and tags.`{HOST_TAG}` = '{socket.gethostname()}'"))
    client = mlflow.MlflowClient()
    for run in found:
        if run.info.run_id == current_run_id or not _process_gone(run.data.tags):
            continue
        why = f"sweep at start of run {current_run_id}: process {run.data.tags[PID_TAG]} is gone"
        log.warning("MLflow run %s (%s) was left RUNNING by a process that is gone: ending it KILLED",
                    run.info.run_id, run_name)
        client.set_tag(run.info.run_id, ENDED_BY_TAG, why)
        client.set_terminated(run.info.run_id, status="KILLED")


def end_pipeline_run(params: Params, pipeline_key: str, status: str = "FINISHED") -> None:
    """Mark the parent run of `pipeline_key` as ended; a failed pipeline's is marked on a best-effort basis."""
    mlflow = server.configured_mlflow(params)

    def end() -> None:
        experiment_id = server.experiment_id(mlflow, params)
        run_id = _pipeline_run_id(mlflow, experiment_id, pipeline_key, git_commit(params.root))
        mlflow.MlflowClient().set_terminated(run_id, status=status)

    if status == "FINISHED":
        with reachable(mlflow, f"end the pipeline run {pipeline_key}"):
            end()
    else:  # the pipeline is failing already: its own error is the one to show
        with best_effort(f"mark the pipeline run {pipeline_key} {status}"):
            end()


def download_artifacts(params: Params, artifact_uri: str, dst_dir: Path) -> Path:
    """Download an artifact (file or folder) by URI (`runs:/...`, `models:/...`, `mlflow-artifacts:/...`)."""
    mlflow = server.configured_mlflow(params)
    Path(dst_dir).mkdir(parents=True, exist_ok=True)
    with reachable(mlflow, f"download {artifact_uri}", artifact_uri):
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, dst_path=str(dst_dir)))


