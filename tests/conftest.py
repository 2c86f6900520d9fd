"""Shared fixtures. Every test writes under tmp_path; nothing touches the checkout or ~."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path

import pytest

# Tool homes out of ~ before anything imports the tools.
_HOME = Path(tempfile.mkdtemp(prefix="iot-compress-tests-"))
for var, sub in (("XDG_CACHE_HOME", "cache"), ("XDG_CONFIG_HOME", "config"), ("XDG_DATA_HOME", "share"),
                 ("KERAS_HOME", "keras"), ("DVC_SITE_CACHE_DIR", "dvc-site")):
    os.environ[var] = str(_HOME / sub)
os.environ["AIRFLOW_HOME"] = str(_HOME / "airflow")
os.environ["GX_ANALYTICS_ENABLED"] = "false"
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["DVC_NO_ANALYTICS"] = "1"
os.environ.pop("MLFLOW_TRACKING_URI", None)

from components.config import Params, load_params  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def project_params() -> Params:
    return load_params(PROJECT_ROOT / "params.yaml")


@pytest.fixture(scope="session")
def data_root(project_params: Params) -> Path:
    root = project_params.data_root().resolve()
    assert (root / "hhar").is_dir(), f"the shared data sets are expected at {root} (set IOT_COMPRESS_DATA_ROOT)"
    return root


# The tests run on the smallest real set (HHAR_SA: 5 users, 2,426 windows) unless they say otherwise;
# the nightly default (params.yaml) has its own tests.
TEST_DATASET = "hhar_sa"


@pytest.fixture
def make_params(tmp_path: Path, data_root: Path):
    """Project params on TEST_DATASET, with every output, store and download folder moved under tmp_path."""

    def make(*overrides: str) -> Params:
        base = [
            f"ingest.dataset={TEST_DATASET}",
            f"ingest.data_root={data_root}",
            f"ingest.output_dir={tmp_path / 'out' / 'ingest'}",
            f"ingest.report_dir={tmp_path / 'reports'}",
            f"train.output_dir={tmp_path / 'out' / 'train'}",
            f"train.report_dir={tmp_path / 'reports' / 'train'}",
            f"ingest.download_dir={tmp_path / 'downloads'}",
            f"pipeline.state_dir={tmp_path / 'state'}",
            f"pipeline.runs_dir={tmp_path / 'runs'}",
            f"profile.output_dir={tmp_path / 'out' / 'profile'}",
            f"profile.report_dir={tmp_path / 'reports' / 'profile'}",
            f"fit_latency.output_dir={tmp_path / 'out' / 'fit_latency'}",
            f"fit_latency.report_dir={tmp_path / 'reports' / 'fit_latency'}",
        ]
        return load_params(PROJECT_ROOT / "params.yaml", [*base, *overrides])

    return make


# Small DeepSense settings under which the shared raw HHAR subset (user a, ~35 s per label) yields samples.
RAW_SMALL = (
    "ingest.dataset=hhar_raw",
    "ingest.hhar_raw.intervals=4",
    "ingest.hhar_raw.window_stride_intervals=2",
    "ingest.expectations.min_windows_per_class=0",
    "ingest.expectations.min_rows_per_class=1",
)


def benchmark_module(name: str):
    """A script of benchmarks/ imported as a module (they are run by path, not installed)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, PROJECT_ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def replace(params: Params, **sections) -> Params:
    return params.model_copy(update=sections)


# A quick `train` for tests that run the whole pipeline through a command line.
QUICK_TRAIN = {"epochs": 3, "patience": 2, "classical": {"n_estimators": 20, "max_depth": None}}

# A quick `profile`: few configurations, short timing (numbers are not the point in tests).
QUICK_PROFILE = (
    "profile.sampler.configs_per_kind=2",
    "profile.sampler.models=1",
    "profile.timing.warmup_runs=1",
    "profile.timing.min_sample_s=0.0005",
    "profile.timing.samples_per_round=1",
    "profile.timing.min_rounds=3",
    "profile.timing.max_repeats=5",
    "profile.timing.max_time_s=0.05",
)

# A quick `compress`: a few search steps and one fine-tuning epoch (the mechanics, not the result).
QUICK_SEARCH = {"max_steps": 20, "eval_every": 10, "checkpoint_every": 10}
QUICK_FINE_TUNE = {"epochs": 1, "patience": 1}

# QUICK_PROFILE gives 2 rows per layer kind: enough for one-leaf trees (no held-out evaluation).
QUICK_FIT_MIN_ROWS = 2


def quick_params(folder: Path, data_root: Path, train: dict | None = None, **ingest_overrides) -> Path:
    """Write folder/params.yaml: the project's params with the quick settings, outputs and stores in `folder`."""
    import yaml

    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    raw["ingest"]["data_root"] = str(data_root)
    raw["ingest"]["dataset"] = TEST_DATASET
    raw["ingest"].update(ingest_overrides)
    raw["train"].update(QUICK_TRAIN if train is None else train)
    for item in QUICK_PROFILE:
        key, value = item.split("=")
        *parents, leaf = key.split(".")[1:]
        node = raw["profile"]
        for part in parents:
            node = node[part]
        node[leaf] = yaml.safe_load(value)
    raw["profile"]["devices_file"] = str(PROJECT_ROOT / "infra" / "devices.yaml")
    raw["fit_latency"]["min_rows"] = QUICK_FIT_MIN_ROWS
    raw["compress"]["search"].update(QUICK_SEARCH)
    raw["compress"]["fine_tune"].update(QUICK_FINE_TUNE)
    raw["pipeline"]["state_dir"] = str(folder / ".state")
    raw["pipeline"]["runs_dir"] = str(folder / ".state" / "runs")
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture
def params_file(tmp_path: Path, data_root: Path):
    """A params.yaml in tmp_path whose outputs and stores stay in tmp_path (for CLI, DVC and Airflow runs)."""

    def write(folder: Path = tmp_path, train: dict | None = None, **ingest_overrides) -> Path:
        return quick_params(folder, data_root, train, **ingest_overrides)

    return write


def subprocess_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    import sys

    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["AIRFLOW_HOME"] = str(tmp_path / "airflow")
    env["AIRFLOW__CORE__DAGS_FOLDER"] = str(PROJECT_ROOT / "dags")
    env["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT / "infra" / "airflow"), env.get("PYTHONPATH")]))
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(extra)
    return env


def components_cli(folder: Path, *args: str, timeout: int = 300, **env: str):
    """`python -m components <args>` as a user runs it, in `folder` (its tool homes there too)."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "components", *args], cwd=folder, capture_output=True, text=True,
                          env=subprocess_env(folder, **env), timeout=timeout)


CLASSES = ("sit", "walk", "run")


def synthetic_task(folder: Path, widths: tuple[int, ...] = (12, 10, 12), users: str = "abc") -> tuple[Path, Path]:
    """A small learnable task: an ingest folder (one user per letter of `users`, the last one held out: by
    default a, b train, c test) and a DeepSense trained on it.

    `widths` are the sensor filters, merge filters and GRU units of the model saved in <folder>/train/model.
    """
    import json

    import numpy as np
    import pandas as pd
    import torch

    from components import models
    from components.artifacts.seals import seal
    from components.models.deepsense import deepsense_spec

    rng = np.random.default_rng(0)
    n = 240
    x = rng.standard_normal((n, 4, 1, 3, 2, 8)).astype(np.float32)
    y = (x[:, :, 0, 0, 0, :2].mean(axis=(1, 2)) > 0).astype(np.int64) + (x[:, 0, 0, 1, 0, 0] > 1).astype(np.int64)
    held_out = users[-1]
    users = np.array(list(users))[np.arange(n) % len(users)]
    ingest = folder / "ingest"
    ingest.mkdir(parents=True, exist_ok=True)
    np.save(ingest / "x.npy", x)
    np.save(ingest / "signal.npy", np.zeros((n, 1, 3, 16), np.float32))
    pd.DataFrame({"label": y, "user": users, "split": np.where(users == held_out, "test", "train")}).to_parquet(
        ingest / "windows.parquet")
    (ingest / "data_card.json").write_text(json.dumps({"labels": list(CLASSES), "data_hash": "synthetic-0"}))
    seal(ingest)  # as the ingest stage seals what it writes
    sensor, merge, units = widths
    spec = deepsense_spec((4, 1, 3, 2, 8), CLASSES, sensor_filters=sensor, sensor_kernels=(3, 2), first_stride=1,
                          merge_filters=merge, merge_kernels=(2,), rnn="gru", rnn_units=units, rnn_layers=1,
                          dropout=0.0)
    torch.manual_seed(0)
    model = models.build(spec)
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    models.save(model.eval(), folder / "train" / "model")
    return ingest, folder / "train"


@pytest.fixture(scope="session")
def migrated_store(tmp_path_factory) -> Path:
    """An MLflow SQLite store migrated once per session (~4 s a migration); tests start from a copy of it."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    folder = tmp_path_factory.mktemp("mlflow-template")
    SqlAlchemyStore(f"sqlite:///{folder / 'mlflow.db'}", (folder / "artifacts").as_uri())
    return folder / "mlflow.db"


def seed_store(template: Path, state_dir: Path) -> None:
    """Put a copy of the migrated store where a pipeline with `pipeline.state_dir: state_dir` looks for it."""
    import shutil

    target = state_dir / "mlflow" / "mlflow.db"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template, target)


# ---- tiers ---------------------------------------------------------------------------------------------------------
# A test's tier is its folder. Each tier has a time one test may take (set-up included: a module's shared fixture
# counts for its first test); a test over it fails, naming the tier, so a slow test is moved or made faster instead
# of slowing everyone's `make test`. Generous on purpose (the machines are shared): they catch a test in the wrong
# tier, not a noisy second. `make test` runs unit, static and stage; CI adds e2e and deployment.

@dataclasses.dataclass(frozen=True)
class Tier:
    name: str
    per_test_s: float
    what: str


TIERS = {
    "unit": Tier("unit", 10, "pure logic: no subprocess, no MLflow store, no TensorFlow"),
    "static": Tier("static", 60, "the repository's files checked by real tools, nothing run"),
    "stage": Tier("stage", 240, "each stage once on small real data"),
    "e2e": Tier("end-to-end", 1800, "one shared pipeline run that the CLI, MLflow UI, registry and DVC checks read"),
    "deployment": Tier("deployment", 2400, "servers started on loopback"),
}
_SETUP_S = pytest.StashKey[float]()


def tier_of(item) -> Tier | None:
    parts = Path(str(item.path)).relative_to(PROJECT_ROOT / "tests").parts
    return TIERS.get(parts[0]) if len(parts) > 1 else None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    tier = tier_of(item)
    if tier is None or call.when not in ("setup", "call"):
        return
    if call.when == "setup":
        item.stash[_SETUP_S] = call.duration
        return
    took = item.stash.get(_SETUP_S, 0.0) + call.duration
    if report.passed and took > tier.per_test_s:
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid} took {took:.1f} s, over the {tier.name} tier's {tier.per_test_s:.0f} s per "
                           f"test ({tier.what}): make it faster or move it to a slower tier")


def pytest_terminal_summary(terminalreporter):
    """Wall time per tier, so a creeping tier shows before it breaks `make test`'s 10 minutes."""
    totals: dict[str, float] = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            if getattr(report, "when", None) not in ("setup", "call", "teardown"):
                continue
            parts = Path(report.fspath).parts if getattr(report, "fspath", None) else ()
            tier = next((TIERS[p] for p in parts[1:2] if p in TIERS), None) if parts and parts[0] == "tests" else None
            if tier is not None:
                totals[tier.name] = totals.get(tier.name, 0.0) + report.duration
    if totals:
        terminalreporter.write_line("time per tier: " + ", ".join(f"{name} {s:.0f} s" for name, s in totals.items()))
