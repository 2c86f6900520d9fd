"""The stage table and the layout: every driver's folders come from `Layout`, and a new entry reaches each driver.

The DAG's, KFP's and dvc.yaml's toy-stage tests live beside their drivers'
tests (tests/dags, tests/static); here: the command line, the layout, and the
Airflow task body, without Airflow running.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from components import __main__ as cli
from components import stages
from components.config import ConfigError
from components.drivers import airflow_tasks
from components.stages import STAGES, Layout, Place, Stage, check_table
from tests.toy_stage import TOY


def test_the_table_reads_only_stages_declared_before_and_says_what_is_wrong():
    check_table(STAGES)
    assert [s.name for s in STAGES] == ["ingest", "train", "profile", "fit_latency", "compress", "validate", "register"]
    with pytest.raises(ConfigError, match="reads 'later', which is not declared before it"):
        check_table((Stage("a", "m", "d", reads=("later",)), Stage("later", "m", "d")))
    with pytest.raises(ConfigError, match="runs once but reads the per-device stage"):
        check_table((Stage("a", "m", "d", per_device=True), Stage("b", "m", "d", reads=("a",))))
    with pytest.raises(ConfigError, match="which writes no data"):
        check_table((Stage("a", "m", "d", writes_data=False), Stage("b", "m", "d", reads=("a",))))


def test_the_layout_turns_root_run_key_and_device_into_every_folder(make_params, tmp_path):
    params = make_params()
    plain = Layout(params)
    assert plain.place("compress", "ort-1t") == Place(params.path(params.compress.output_dir) / "ort-1t",
                                                      params.path(params.compress.report_dir) / "ort-1t")
    assert plain.place("ingest").data == tmp_path / "out" / "ingest"
    assert plain.place("register", "ort-1t").report == params.root / "reports" / "register" / "ort-1t"
    keyed = Layout(params, "scheduled__2026-12-01T02:00:00+00:00")
    run = tmp_path / "runs" / "scheduled__2026-12-01T02_00_00_00_00"
    assert keyed.run_folder() == run
    assert keyed.place("validate", "cortex-m4") == Place(run / "data" / "validate" / "cortex-m4",
                                                         run / "reports" / "validate" / "cortex-m4")
    assert keyed.inputs("compress", "ort-1t") == {"ingest": run / "data" / "ingest", "train": run / "data" / "train",
                                                  "profile": run / "data" / "profile" / "ort-1t",
                                                  "fit_latency": run / "data" / "fit_latency" / "ort-1t"}
    with pytest.raises(ConfigError, match="runs per device"):
        keyed.place("profile")
    assert plain.summary() == params.root / "reports" / "summary" and keyed.summary() == run / "reports" / "summary"


def test_what_a_stage_reads_of_another_is_a_named_output_of_the_table(tmp_path):
    """register reads validate's report.json, the summary compress's metrics.json: each named in the table, and a
    file the table does not name is refused instead of read by a path that only happens to match."""
    assert stages.output(tmp_path, "validate", "report.json") == tmp_path / "report.json"
    assert stages.artifact("compress", "metrics.json", "ort-1t") == "compress/ort-1t/metrics.json"
    assert stages.artifact_dir("train") == "train" and stages.artifact_dir("validate", "tflite-1t") == "validate/tflite-1t"
    with pytest.raises(ConfigError, match="stage validate declares no output 'report.md'"):
        stages.output(tmp_path, "validate", "report.md")
    with pytest.raises(ConfigError, match="stage compress declares no artifact 'comparison.md'"):
        stages.artifact("compress", "comparison.md", "ort-1t")


def test_execute_refuses_an_input_the_stage_does_not_read(make_params):
    with pytest.raises(ConfigError, match="reads ingest, not profile"):
        stages.execute("train", make_params(), inputs={"profile": Path("x")})


def test_a_toy_stage_in_the_table_runs_from_the_command_line(make_params, params_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(stages, "STAGES", (*STAGES, TOY))
    latency = tmp_path / "latency"
    latency.mkdir()
    (latency / "latency_model.json").write_text("{}")
    code = cli.main(["toy", "--params", str(params_file()), "--device", "ort-1t", "--input", f"fit_latency={latency}",
                     "--output", str(tmp_path / "toy"), "--report", str(tmp_path / "toy-report")])
    assert code == 0, capsys.readouterr().err
    assert capsys.readouterr().out.strip() == f"toy ort-1t: 1 files -> {tmp_path / 'toy'}"
    assert json.loads((tmp_path / "toy" / "files.json").read_text())["files"] == ["latency_model.json"]
    assert "toy" in cli._parser(stages.STAGES).format_help()
    assert cli.main(["toy", "--params", str(params_file()), "--input", "nonsense"]) == 2  # a bad flag, said plainly
    assert "--input takes STAGE=DIR" in capsys.readouterr().err


def test_the_airflow_task_body_pulls_each_upstream_folder_from_xcom_by_map_index(params_file, tmp_path, monkeypatch):
    monkeypatch.setattr(stages, "STAGES", (*STAGES, TOY))
    monkeypatch.setenv("IOT_COMPRESS_PARAMS", str(params_file()))
    latency = tmp_path / "fitted"
    latency.mkdir()
    (latency / "rules.txt").write_text("")
    pulls = []

    def xcom_pull(task_ids, map_indexes=None):
        pulls.append((task_ids, map_indexes))
        return str(latency)

    ti = SimpleNamespace(map_index=1, xcom_pull=xcom_pull)
    context = {"params": {"devices": [], "overrides": []}, "ti": ti, "run_id": "manual__7"}
    folder = airflow_tasks.run_in_airflow("toy", "cortex-m4", context)
    assert pulls == [("fit_latency", 1)]  # the same device's instance upstream
    assert Path(folder) == tmp_path / ".state" / "runs" / "manual__7" / "data" / "toy" / "cortex-m4"
    assert json.loads((Path(folder) / "files.json").read_text()) == {"files": ["rules.txt"], "pipeline_key": "manual__7"}


def test_an_airflow_task_whose_upstream_left_nothing_fails_without_a_retry(params_file, monkeypatch):
    from airflow.sdk.exceptions import AirflowFailException

    monkeypatch.setenv("IOT_COMPRESS_PARAMS", str(params_file()))
    ti = SimpleNamespace(map_index=0, xcom_pull=lambda task_ids, map_indexes=None: None)
    context = {"params": {"devices": [], "overrides": []}, "ti": ti, "run_id": "r"}
    with pytest.raises(AirflowFailException, match="compress for ort-1t: ingest left no output in this run"):
        airflow_tasks.run_in_airflow("compress", "ort-1t", context)
