"""An interrupted stage never leaves its MLflow run RUNNING: a signal ends it KILLED as the stage unwinds, and
a run whose process vanished (SIGKILL, power loss) is ended KILLED by the next run of the same stage."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from components.tracking import runs as tracking
from components.tracking import server
from tests.conftest import PROJECT_ROOT

# A stage run held open in a process of its own: prints its run id, then waits to be stopped.
HOLDER = textwrap.dedent("""
    import sys, time
    from components.tracking import runs as tracking
    from components.config import load_params

    params = load_params(sys.argv[1], [f"pipeline.state_dir={sys.argv[2]}"])
    with tracking.stage_run(params, "toy") as run:
        print(run.run_id, flush=True)
        try:
            time.sleep(60)
        except Exception:  # a stage's own error handling must not swallow the stop
            pass
""")


@pytest.fixture
def params(make_params):
    return make_params()


def client(params):
    return server.configured_mlflow(params).MlflowClient()


def hold_open(state_dir: Path) -> tuple[subprocess.Popen, str]:
    """Start HOLDER; return it and its run id once the run is open."""
    child = subprocess.Popen([sys.executable, "-c", HOLDER, str(PROJECT_ROOT / "params.yaml"), str(state_dir)],
                             cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    run_id = child.stdout.readline().strip()
    if not run_id:
        child.kill()
        pytest.fail(f"the child opened no run: {child.communicate(timeout=30)[1][-2000:]}")
    return child, run_id


def test_sigterm_ends_the_run_killed_and_the_command_exits_143(params):
    child, run_id = hold_open(params.path(params.pipeline.state_dir))
    child.send_signal(signal.SIGTERM)
    _, stderr = child.communicate(timeout=30)
    assert child.returncode == 128 + signal.SIGTERM, stderr  # what a shell shows for a process SIGTERM killed
    assert "Traceback" not in stderr and "stopped by SIGTERM" in stderr
    assert client(params).get_run(run_id).info.status == "KILLED"


def test_a_sigkilled_run_is_swept_by_the_next_run_of_the_stage(params):
    child, run_id = hold_open(params.path(params.pipeline.state_dir))
    child.kill()
    child.communicate(timeout=30)  # reaped: a zombie would still hold its pid
    assert client(params).get_run(run_id).info.status == "RUNNING"  # nothing could end it
    with tracking.stage_run(params, "other"):
        pass
    assert client(params).get_run(run_id).info.status == "RUNNING"  # another stage leaves it alone
    with tracking.stage_run(params, "toy") as sweeper:
        pass
    swept = client(params).get_run(run_id)
    assert swept.info.status == "KILLED" and swept.info.end_time
    assert swept.data.tags[tracking.ENDED_BY_TAG].startswith(f"sweep at start of run {sweeper.run_id}")
    assert client(params).get_run(sweeper.run_id).info.status == "FINISHED"


def test_the_sweep_leaves_live_and_foreign_runs_alone_and_sees_through_pid_reuse(params):
    mine = tracking._process_tags()
    live = started(params, mine)
    elsewhere = started(params, {**mine, tracking.HOST_TAG: "another-host", tracking.PID_TAG: "999999999"})
    other_pids = started(params, {**mine, tracking.PID_NAMESPACE_TAG: "pid:[1]", tracking.PID_TAG: "999999999"})
    untagged = started(params, {})  # from before runs recorded their process
    reused = started(params, {**mine, tracking.START_TAG: "1"})  # our pid, but another process's start
    with tracking.stage_run(params, "toy"):
        pass
    status = {run_id: client(params).get_run(run_id).info.status
              for run_id in (live, elsewhere, other_pids, untagged, reused)}
    assert status == {live: "RUNNING", elsewhere: "RUNNING", other_pids: "RUNNING", untagged: "RUNNING",
                      reused: "KILLED"}


def started(params, tags: dict[str, str]) -> str:
    """A RUNNING `toy` run carrying `tags`, as a process that ran stage_run leaves it."""
    mlflow = server.configured_mlflow(params)
    experiment_id = server.experiment_id(mlflow, params)
    return mlflow.MlflowClient().create_run(experiment_id, run_name="toy", tags=tags).info.run_id


def test_a_signal_in_process_unwinds_and_the_handlers_are_restored(params):
    before = signal.getsignal(signal.SIGTERM)
    with tracking.stage_run(params, "toy") as first:
        pass  # consecutive runs (the pipeline command) each restore what they found
    assert signal.getsignal(signal.SIGTERM) is before
    with pytest.raises(tracking.Terminated) as stopped:
        with tracking.stage_run(params, "toy") as second:
            assert signal.getsignal(signal.SIGTERM) not in (before, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            signal.pause()
    assert stopped.value.code == 128 + signal.SIGTERM and not isinstance(stopped.value, Exception)
    assert signal.getsignal(signal.SIGTERM) is before
    assert client(params).get_run(first.run_id).info.status == "FINISHED"
    assert client(params).get_run(second.run_id).info.status == "KILLED"


def test_a_handler_already_installed_still_runs_and_an_ignored_signal_stays_ignored(params):
    """Airflow installs its own SIGTERM handler (it raises its own error); nohup ignores SIGHUP."""

    class TaskTerminated(Exception):
        pass

    def airflow_like(signum, frame):
        raise TaskTerminated()

    old_term = signal.signal(signal.SIGTERM, airflow_like)
    old_hup = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with pytest.raises(TaskTerminated):
            with tracking.stage_run(params, "toy") as run:
                assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
                os.kill(os.getpid(), signal.SIGTERM)
                signal.pause()
        assert signal.getsignal(signal.SIGTERM) is airflow_like
        assert client(params).get_run(run.run_id).info.status == "KILLED"  # a signal, not an error, stopped it
    finally:
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGHUP, old_hup)


def test_an_error_still_ends_the_run_failed(params):
    with pytest.raises(ValueError):
        with tracking.stage_run(params, "toy") as run:
            raise ValueError("bad data")
    assert client(params).get_run(run.run_id).info.status == "FAILED"
