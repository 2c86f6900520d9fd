"""After `make run`'s pipeline, `mlflow ui` (as `python -m components mlflow-ui`) shows the runs, artifacts and models.

The pipeline is the end-to-end tier's shared run (tests/e2e/conftest.py); one UI server answers every test.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from components.config import load_params
from components.register import model_name
from tests.conftest import subprocess_env
from tests.e2e.browser import artifacts_dir, chromium_page, png_size, require_chromium
from tests.e2e.conftest import DEVICES, PipelineRun

DEVICE = "ort-1t"

# The compress run's figures a user looks for first, all logged by components/compress.py.
COMPRESS_METRICS = ("params_kept", "accuracy_change", "budget", "accuracy_floor")
DEEPIOT_METRICS = ("methods.deepiot.test_accuracy", "methods.deepiot.relative_cost",
                   "methods.deepiot.predicted_latency_ms")

# The first test's set-up may run the shared pipeline (its own limit: 1200 s) and starts the UI.
TIMEOUT_S = 1800

# Playwright is imported inside the browser steps: without it the module still collects, and the `chromium` fixture
# fails the browser test with what to install instead.
SCREENSHOTS = ("runs", "compress-run", "compress-metrics", "compress-pareto", "validate-report", "registered-model",
               "registered-version", "pipeline-summary", "pipeline-summary-lineage", "pipeline-summary-html")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(port: int, path: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


@dataclass(frozen=True)
class Tracked:
    """A finished pipeline and the UI serving its tracking store."""

    params_path: Path
    port: int
    experiment_id: str
    runs: dict[str, dict]  # run name -> the run as the REST API returns it

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def run_id(self, name: str) -> str:
        return self.runs[name]["info"]["run_id"]

    def metrics(self, name: str) -> dict[str, float]:
        return {m["key"]: m["value"] for m in self.runs[name]["data"]["metrics"]}


@pytest.fixture(scope="module")
def tracked(pipeline_run: PipelineRun) -> Iterator[Tracked]:
    """One UI server over the shared run's tracking store for every test of the module."""
    folder, params = pipeline_run.folder, pipeline_run.params_path
    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "components", "mlflow-ui", "--params", str(params), "--port", str(port)],
                          cwd=folder, env=subprocess_env(folder), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)
    try:
        experiment_id = _wait_for_experiment(ui, port, "compress_nightly")
        runs = api(port, "/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment_id]})["runs"]
        yield Tracked(params, port, experiment_id, {r["info"]["run_name"]: r for r in runs})
    finally:
        _stop_group(ui)


def _stop_group(process: subprocess.Popen, grace_s: float = 30) -> None:
    """`mlflow ui` leaves uvicorn workers and huey job consumers in its process group, which outlive the top process."""
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=grace_s)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGKILL)


def _wait_for_experiment(ui: subprocess.Popen, port: int, name: str) -> str:
    deadline = time.monotonic() + 180  # minutes on a loaded machine: it starts job consumers too
    while True:
        try:
            experiments = api(port, "/api/2.0/mlflow/experiments/search", {"max_results": 10})["experiments"]
            break
        except OSError:
            assert time.monotonic() < deadline, "mlflow ui did not answer within 180 s"
            assert ui.poll() is None, "mlflow ui exited"
            time.sleep(1)
    [experiment] = [e for e in experiments if e["name"] == name]
    return experiment["experiment_id"]


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT_S)
def test_mlflow_ui_lists_the_ingest_run_and_its_artifacts(tracked: Tracked):
    assert {"ingest", "pipeline", "validate/ort-1t", "validate/cortex-m4"} <= set(tracked.runs)
    assert tracked.metrics("ingest")["windows"] == 2426
    files = api(tracked.port, f"/api/2.0/mlflow/artifacts/list?run_id={tracked.run_id('ingest')}&path=ingest")
    assert {"ingest/data_card.json", "ingest/validation.json"} <= {f["path"] for f in files["files"]}
    validated = tracked.run_id("validate/ort-1t")
    files = api(tracked.port, f"/api/2.0/mlflow/artifacts/list?run_id={validated}&path=validate/ort-1t")
    assert {"validate/ort-1t/report.html", "validate/ort-1t/report.json"} <= {f["path"] for f in files["files"]}


def shown(value: float) -> str:
    """A metric as the UI prints it (JavaScript's shortest round-trip form: Python's repr, but integers bare)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


@pytest.fixture(scope="session")
def chromium() -> str:
    """Session-scoped so that it is checked before the module's pipeline: a missing browser fails in seconds."""
    return require_chromium()


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.timeout(TIMEOUT_S)
def test_mlflow_ui_in_a_browser_shows_runs_metrics_plots_report_and_model(chromium: str, tracked: Tracked):
    folder = artifacts_dir("mlflow-ui")
    for name in (*SCREENSHOTS, "failure"):
        (folder / f"{name}.png").unlink(missing_ok=True)  # an earlier run's picture must not pass for this one's
    params = load_params(tracked.params_path)
    report = json.loads((params.path(params.validate.report_dir) / DEVICE / "report.json").read_text())
    with chromium_page(chromium, folder) as shots:
        _runs_table(shots, tracked)
        _compress_run(shots, tracked)
        _validate_report(shots, tracked, report)
        _registered_model(shots, tracked, model_name(params, report))
        _registered_version(shots, tracked, model_name(params, report), report)
        card = json.loads((params.path(params.ingest.output_dir) / "data_card.json").read_text())
        _pipeline_summary(shots, tracked, json.loads((params.path("reports/summary") / "summary.json").read_text()),
                          card)
    assert [path.stem for path in shots.paths] == list(SCREENSHOTS)
    for path in shots.paths:
        width, height = png_size(path)
        # A blank or half-loaded page compresses to a few kB; these pages hold tables and plots.
        assert width >= 1000 and height >= 600 and path.stat().st_size > 30_000, f"{path} looks empty"


def _runs_table(shots, tracked: Tracked) -> None:
    """Stage runs are nested under the pipeline's parent run, which the table shows collapsed: open it, as a user must.

    `/#/experiments/<id>` alone lands on MLflow 3's GenAI overview, behind a pop-over; `/runs` is the runs table.
    """
    from playwright.sync_api import expect

    page = shots.page
    page.goto(f"{tracked.url}/#/experiments/{tracked.experiment_id}/runs")
    parent = page.get_by_role("link", name="pipeline", exact=True)
    expect(parent).to_be_visible()
    _close_assistant(page)
    page.get_by_role("row").filter(has=parent).locator("[col-id*='Run Name'] button").click()  # the [+] expander
    for name in ("ingest", "train", *(f"{stage}/{d}" for stage in ("compress", "validate", "register")
                                      for d in DEVICES)):
        expect(page.get_by_role("link", name=name, exact=True)).to_be_visible()
    shots.take("runs")


def _close_assistant(page) -> None:
    """MLflow 3 opens an assistant panel over a third of the page; closed, the screenshots show the runs."""
    close = page.get_by_role("button", name="Close")
    if close.count():
        close.first.click()


def _metric_row(page, key: str):
    """The metrics table's row of `key`; not a header row of another grid (the run's logged models list its
    metrics as columns)."""
    return page.locator('[role="row"]:not(.ag-header-row)').filter(has=page.get_by_text(key, exact=True))


def _compress_run(shots, tracked: Tracked) -> None:
    """Reached from the table, as a user would; the metrics must be the logged numbers, the plot a decoded image.

    The metrics table scrolls inside a fixed box, so the per-method figures are found through its search field.
    """
    from playwright.sync_api import expect

    page = shots.page
    name = f"compress/{DEVICE}"
    page.get_by_role("link", name=name, exact=True).click()
    expect(page.get_by_role("heading", name=name)).to_be_visible()
    expect(page.get_by_role("link", name="pipeline", exact=True)).to_be_visible()  # its parent run, last to load
    metrics = tracked.metrics(name)
    for key in COMPRESS_METRICS:
        expect(_metric_row(page, key)).to_contain_text(shown(metrics[key]))
    shots.take("compress-run")
    page.get_by_placeholder("Search metrics").fill("methods.deepiot.")
    for key in DEEPIOT_METRICS:
        expect(_metric_row(page, key)).to_contain_text(shown(metrics[key]))
    shots.take("compress-metrics")
    _open_artifact(page, "compress", DEVICE, "pareto.png")
    plot = page.get_by_alt_text(f"compress/{DEVICE}/pareto.png")
    expect(plot).to_be_visible()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=plot.element_handle())
    expect(page.get_by_text("trajectory.png", exact=True)).to_be_visible()
    shots.take("compress-pareto")


def _open_artifact(page, *path: str) -> None:
    """The Artifacts tab's tree starts folded: open each folder of the path, then the file to preview it."""
    page.get_by_role("tab", name="Artifacts").click()
    for part in path:
        page.get_by_text(part, exact=True).first.click()


def _validate_report(shots, tracked: Tracked, report: dict) -> None:
    """report.html as MLflow previews it, checked gate by gate against report.json: the page a reviewer reads."""
    from playwright.sync_api import expect

    page = shots.page
    name = f"validate/{DEVICE}"
    page.goto(f"{tracked.url}/#/experiments/{tracked.experiment_id}/runs/{tracked.run_id(name)}")
    expect(page.get_by_role("heading", name=name)).to_be_visible()
    _open_artifact(page, "validate", DEVICE, "report.html")
    for other in ("report.json", "report.md"):
        expect(page.get_by_text(other, exact=True)).to_be_visible()
    html = page.frame_locator("iframe")  # MLflow shows HTML artifacts in a sandboxed frame
    verdict = "PASSED" if report["passed"] else "FAILED"
    expect(html.get_by_role("heading", level=1)).to_have_text(f"Validation on {DEVICE}: {verdict}")
    for gate in report["gates"]:
        cells = html.get_by_role("row").filter(has=html.get_by_role("cell", name=gate["name"], exact=True))
        expected = "n/a" if gate["passed"] is None else ("PASS" if gate["passed"] else "FAIL")
        expect(cells.get_by_role("cell").nth(1)).to_have_text(expected)
    shots.take("validate-report")


def _registered_model(shots, tracked: Tracked, name: str) -> None:
    """The first registration of a device's model finds no champion, so its version carries both aliases."""
    from playwright.sync_api import expect

    page = shots.page
    page.goto(f"{tracked.url}/#/models/{name}")
    expect(page.get_by_role("heading", name=name)).to_be_visible()
    version = page.get_by_role("row").filter(has=page.get_by_role("link", name="Version 1", exact=True))
    for alias in ("candidate", "champion"):
        expect(version).to_contain_text(f"@ {alias}")
    shots.take("registered-model")


def _registered_version(shots, tracked: Tracked, name: str, report: dict) -> None:
    """The version's page is its model card: what it is, its accuracy and cost on the device, the gates, how to
    load it; the aliases are code, not links to a GitHub user."""
    from playwright.sync_api import expect

    page = shots.page
    page.goto(f"{tracked.url}/#/models/{name}/versions/1")
    expect(page.get_by_role("heading", name="Version 1", exact=True)).to_be_visible()
    _close_assistant(page)
    expect(page.get_by_role("heading", name=f"{name} version 1", exact=True)).to_be_visible()
    for heading in ("What it is", f"Accuracy on {DEVICE}", f"Latency, energy and size on {DEVICE}", "How to load it"):
        expect(page.get_by_role("heading", name=heading, exact=True)).to_be_visible()
    expect(page.get_by_role("heading", name=re.compile(r"^Gates \("))).to_be_visible()
    held_out = page.get_by_text(re.compile(r"^Held-out users: ")).first
    for user in report["test_users"]:
        expect(held_out).to_contain_text(user)
    assert page.locator("a[href*='github.com/']").count() == 0
    shots.take("registered-version")


def _pipeline_summary(shots, tracked: Tracked, summary: dict, card: dict) -> None:
    """The parent run is the night's summary: its description gives each device's verdict, its metrics the
    headline numbers, its Datasets box the data the night read, its logged models what it made, and
    summary/summary.html shows every device with the figures inside the page."""
    from playwright.sync_api import expect

    page = shots.page
    page.goto(f"{tracked.url}/#/experiments/{tracked.experiment_id}/runs/{tracked.run_id('pipeline')}")
    expect(page.get_by_role("heading", name="pipeline")).to_be_visible()
    _close_assistant(page)
    expect(page.get_by_text(f"Night {summary['key']}: {len(DEVICES)} of {len(DEVICES)} devices passed")).to_be_visible()
    more = page.get_by_text("Show more", exact=True)
    if more.count():  # the description is folded after its first lines
        more.first.click()
    for device in summary["devices"]:
        expect(page.get_by_text(f"{device['device']}: {device['verdict']}", exact=True)).to_be_visible()
        assert tracked.metrics("pipeline")[f"{device['device']}.passed"] == float(device["passed"])
    expect(page.get_by_text(f"{card['dataset']} ({card['data_hash'][:16]})", exact=True)).to_be_visible()
    shots.take("pipeline-summary")
    for device in DEVICES:  # compress's models, among the parent run's logged models
        model = page.get_by_text(f"compressed-{device}", exact=True).first
        model.scroll_into_view_if_needed()
        expect(model).to_be_visible()
    shots.take("pipeline-summary-lineage")
    _open_artifact(page, "summary", "summary.html")
    for other in ("pareto.png", "trend.png", "summary.json"):
        expect(page.get_by_text(other, exact=True)).to_be_visible()
    html = page.frame_locator("iframe")
    expect(html.get_by_role("heading", level=1)).to_contain_text(f"Night {summary['key']}")
    for device in summary["devices"]:
        row = html.get_by_role("row").filter(has=html.get_by_role("cell", name=device["device"], exact=True)).first
        expect(row).to_contain_text(device["verdict"])
    images = html.get_by_role("img")
    expect(images).to_have_count(2)
    for i in range(2):  # decoded in the sandboxed frame (evaluated there: the page cannot reach into it)
        images.nth(i).scroll_into_view_if_needed()
        expect(images.nth(i)).to_be_visible()
        assert images.nth(i).evaluate("img => img.decode().then(() => img.naturalWidth)") >= 1000
    shots.take("pipeline-summary-html")
