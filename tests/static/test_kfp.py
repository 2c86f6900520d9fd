"""The Kubeflow pipeline (infra/kfp/): compiled offline and checked as a spec, since no cluster runs here.

Checks that the spec is valid KFP IR, has one component per entry of the
stage table running `python -m components <stage>` in the pinned project
image with arguments the real CLI and params schema accept, feeds each stage
its upstream stages' data folders through `--input`, has the data
dependencies of the table and of dvc.yaml, that a new stage in the table
becomes a component, and that the committed infra/kfp/compress_nightly.yaml
is a fresh compile.
"""

from __future__ import annotations

import importlib.util
import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from components.__main__ import _parser, device_names
from components.config import load_params
from components.stages import STAGES, Stage
from tests.conftest import PROJECT_ROOT

KFP_DIR = PROJECT_ROOT / "infra" / "kfp"
COMMITTED = KFP_DIR / "compress_nightly.yaml"
BY_NAME = {stage.name: stage for stage in STAGES}
PER_DEVICE = tuple(stage.name for stage in STAGES if stage.per_device)
SUMMARY = "summary"  # the exit handler's command: not a stage
STAGES_DAG = "comp-exit-handler-1"  # every stage runs inside the exit handler, whose exit task is the summary
PLACEHOLDER = re.compile(r"\{\{\$\.(inputs|outputs)\.(parameters|artifacts)\['([^']+)'\](?:\.path)?\}\}")


def _load_pipeline_module():
    """infra/kfp is a folder of deployment files, not a package: load pipeline.py by its path."""
    spec = importlib.util.spec_from_file_location("iot_compress_kfp_pipeline", KFP_DIR / "pipeline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def kfp_pipeline():
    return _load_pipeline_module()


@pytest.fixture(scope="module")
def compiled(kfp_pipeline, tmp_path_factory) -> Path:
    return kfp_pipeline.compile_pipeline(tmp_path_factory.mktemp("kfp") / "compress_nightly.yaml")


@pytest.fixture(scope="module")
def spec(compiled) -> dict:
    docs = list(yaml.safe_load_all(compiled.read_text()))
    assert len(docs) == 1, "a second document is a platform spec: check it here too"
    return docs[0]


def _executors(spec: dict) -> dict[str, dict]:
    """Stage -> its executor's container, found by the stage its command runs (the summary is not a stage)."""
    out = {}
    for label, executor in spec["deploymentSpec"]["executors"].items():
        stage = executor["container"]["command"][3]
        if stage == SUMMARY:
            continue
        assert stage not in out, f"{label}: a second executor for {stage}"
        out[stage] = executor["container"]
    return out


def _tasks(spec: dict) -> dict[str, tuple[str, dict]]:
    """Stage -> (the DAG holding its task: 'root' or a component name, the task), over every DAG."""
    executor_stage = {label: e["container"]["command"][3] for label, e in spec["deploymentSpec"]["executors"].items()}
    dags = {"root": spec["root"]["dag"]} | {name: c["dag"] for name, c in spec["components"].items() if "dag" in c}
    out = {}
    for dag_name, dag in dags.items():
        for task in dag["tasks"].values():
            component = spec["components"][task["componentRef"]["name"]]
            if "executorLabel" in component and executor_stage[component["executorLabel"]] != SUMMARY:
                stage = executor_stage[component["executorLabel"]]
                assert stage not in out, f"a second task for {stage}"
                out[stage] = (dag_name, task)
    return out


def _producer(spec: dict, dag_name: str, artifact_input: dict) -> tuple[str, str]:
    """(producing stage, output name) of a task's input artifact, following it out of a loop's DAG."""
    tasks = {name: t for d in [spec["root"]["dag"], *(c["dag"] for c in spec["components"].values() if "dag" in c)]
             for name, t in d["tasks"].items()}
    if "taskOutputArtifact" in artifact_input:
        ref = artifact_input["taskOutputArtifact"]
        task = tasks[ref["producerTask"]]
        label = spec["components"][task["componentRef"]["name"]]["executorLabel"]
        return spec["deploymentSpec"]["executors"][label]["container"]["command"][3], ref["outputArtifactKey"]
    name = artifact_input["componentInputArtifact"]  # handed into a loop: the loop task says by whom
    parent, loop = _parent(spec, dag_name)
    return _producer(spec, parent, loop["inputs"]["artifacts"][name])


def _dags(spec: dict) -> dict[str, dict]:
    return {"root": spec["root"]["dag"]} | {name: c["dag"] for name, c in spec["components"].items() if "dag" in c}


def _parent(spec: dict, dag_name: str) -> tuple[str, dict]:
    """(the DAG holding the task that runs DAG `dag_name`, that task)."""
    (found,) = [(name, t) for name, dag in _dags(spec).items() for t in dag["tasks"].values()
                if t["componentRef"]["name"] == dag_name]
    return found


def _flag_values(args: list[str], flag: str) -> list[str]:
    return [value for f, value in zip(args, args[1:]) if f == flag]


def _path(direction: str, artifact: str) -> str:
    return f"{{{{$.{direction}.artifacts['{artifact}'].path}}}}"


def _substitute(arg: str, device: str) -> str:
    """A placeholder replaced by a value of its kind, as KFP does at run time."""
    values = {"device": device, "pipeline_key": "kfp-run-0"}
    return PLACEHOLDER.sub(lambda m: values[m[3]] if m[2] == "parameters" else f"/kfp/{m[1]}/{m[3]}", arg)


def test_spec_is_valid_kfp_ir(compiled, spec):
    from google.protobuf import json_format
    from kfp.components import load_component_from_file
    from kfp.pipeline_spec import pipeline_spec_pb2

    # strict: an unknown field anywhere in these messages fails the parse
    pipeline = json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec())
    json_format.ParseDict(spec["deploymentSpec"], pipeline_spec_pb2.PipelineDeploymentConfig())
    assert pipeline.pipeline_info.name == "compress-nightly"
    assert pipeline.schema_version == "2.1.0"
    assert load_component_from_file(str(compiled)).name == "compress-nightly"


def test_one_component_per_stage(kfp_pipeline, spec):
    names = sorted(BY_NAME)
    assert sorted(_executors(spec)) == names
    assert sorted(_tasks(spec)) == names
    for stage in STAGES:  # one stage, one name: comp-fit-latency runs fit_latency
        component = spec["components"][f"comp-{stage.name.replace('_', '-')}"]
        assert spec["deploymentSpec"]["executors"][component["executorLabel"]]["container"]["command"][3] == stage.name
    components = kfp_pipeline.make_components()
    assert list(components) == [stage.name for stage in STAGES]
    for stage in STAGES:  # the IR holds no component descriptions: the component itself does
        assert components[stage.name].component_spec.description == stage.doc


def test_every_component_has_the_interface_of_its_table_entry(spec):
    for stage in STAGES:
        component = spec["components"][f"comp-{stage.name.replace('_', '-')}"]
        inputs = component["inputDefinitions"]
        assert set(inputs["parameters"]) == {"pipeline_key", *(["device"] if stage.per_device else [])}, stage.name
        assert set(inputs.get("artifacts", {})) == {f"{up}_dir" for up in stage.reads}, stage.name
        outputs = set(component.get("outputDefinitions", {}).get("artifacts", {}))
        assert outputs == ({"output_dir", "report_dir"} if stage.writes_data else {"report_dir"}), stage.name


def test_every_task_runs_the_pinned_project_image(kfp_pipeline, spec):
    version = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert kfp_pipeline.IMAGE == f"iot-compress/pipeline:{version}"
    for stage, container in _executors(spec).items():
        assert container["image"] == kfp_pipeline.IMAGE, stage
        assert container["command"] == ["python", "-m", "components", stage]


def test_the_cli_accepts_every_command(spec):
    """Each command, placeholders filled in, parses with the real CLI and points at the task's own artifacts."""
    device = spec["root"]["inputDefinitions"]["parameters"]["devices"]["defaultValue"][0]
    for stage, container in _executors(spec).items():
        argv = [_substitute(a, device) for a in [stage, *container["args"]]]
        try:
            args = _parser(STAGES).parse_args(argv)
        except SystemExit:
            pytest.fail(f"{stage}: the CLI refuses {argv}")
        entry = BY_NAME[stage]
        assert args.command == stage and args.pipeline_key == "kfp-run-0"
        assert args.device == ([device] if entry.per_device else []), stage
        assert args.input == [f"{up}=/kfp/inputs/{up}_dir" for up in entry.reads], stage
        assert args.output == ("/kfp/outputs/output_dir" if entry.writes_data else None), stage
        assert args.report == "/kfp/outputs/report_dir", stage
        assert args.run_key is None, stage  # the artifacts are the folders: no run layout beside them
        load_params(PROJECT_ROOT / "params.yaml", args.overrides)  # unknown keys or bad types raise


def test_each_stage_reads_its_upstreams_output_dir_through_input(spec):
    executors, tasks = _executors(spec), _tasks(spec)
    for stage, container in executors.items():
        args = container["args"]
        reads = BY_NAME[stage].reads
        assert _flag_values(args, "--input") == [f"{up}={_path('inputs', f'{up}_dir')}" for up in reads], stage
        assert _flag_values(args, "--report") == [_path("outputs", "report_dir")], stage
        assert _flag_values(args, "--output") == ([_path("outputs", "output_dir")]
                                                  if BY_NAME[stage].writes_data else []), stage
        dag_name, task = tasks[stage]
        artifacts = task["inputs"].get("artifacts", {})
        assert {name: _producer(spec, dag_name, a) for name, a in artifacts.items()} == {
            f"{up}_dir": (up, "output_dir") for up in reads}, stage


def _dvc_reads() -> dict[str, set[str]]:
    """Stage -> the stages whose outs dvc.yaml lists among its deps (a dep equal to or under one of their outs)."""
    body = {name: (stage.get("do") or stage) for name, stage in
            yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"].items()}
    outs = {name: [next(iter(o)) if isinstance(o, dict) else o for o in b.get("outs") or []]
            for name, b in body.items()}
    return {name: {up for up, paths in outs.items() for dep in b.get("deps") or [] for out in paths
                   if up != name and (dep == out or dep.startswith(out + "/"))}
            for name, b in body.items()}


def test_data_dependencies_are_those_of_the_table_and_dvc_yaml(spec):
    """A stage reads the artifacts of exactly the stages the table and dvc.yaml say it reads."""
    tasks = _tasks(spec)
    actual = {stage: {_producer(spec, dag_name, a)[0] for a in task["inputs"].get("artifacts", {}).values()}
              for stage, (dag_name, task) in tasks.items()}
    assert actual == {stage.name: set(stage.reads) for stage in STAGES} == _dvc_reads()
    assert actual == {  # the graph itself, so a table that lost a read cannot pass for both
        "ingest": set(), "train": {"ingest"}, "profile": set(), "fit_latency": {"profile"},
        "compress": {"ingest", "train", "profile", "fit_latency"},
        "validate": {"ingest", "train", "fit_latency", "compress"}, "register": {"validate"}}
    for stage, (_, task) in tasks.items():  # no ordering beyond the data: every dependent task feeds this one
        producers = {t for a in task["inputs"].get("artifacts", {}).values()
                     for t in [a.get("taskOutputArtifact", {}).get("producerTask")] if t}
        assert set(task.get("dependentTasks", [])) == producers, stage


def _loop(spec: dict, tasks: dict[str, tuple[str, dict]], per_device=PER_DEVICE) -> tuple[str, dict]:
    """(the loop's DAG name, the loop task in the root DAG) holding every per-device stage."""
    loops = {tasks[stage][0] for stage in per_device}
    assert len(loops) == 1 and STAGES_DAG not in loops
    (name,) = loops
    parent, loop = _parent(spec, name)
    assert parent == STAGES_DAG
    return name, loop


def test_per_device_stages_run_in_a_loop_over_the_devices_parameter(spec):
    tasks = _tasks(spec)
    for stage in STAGES:
        if not stage.per_device:
            assert tasks[stage.name][0] == STAGES_DAG, stage.name
    _, loop = _loop(spec, tasks)
    item = loop["parameterIterator"]["itemInput"]
    channel = loop["parameterIterator"]["items"]["inputParameter"]
    handed = loop["inputs"]["parameters"][channel]["componentInputParameter"]  # the exit handler hands it down
    _, handler = _parent(spec, STAGES_DAG)
    assert handler["inputs"]["parameters"][handed] == {"componentInputParameter": "devices"}
    for stage in PER_DEVICE:
        assert tasks[stage][1]["inputs"]["parameters"]["device"] == {"componentInputParameter": item}
    devices = spec["root"]["inputDefinitions"]["parameters"]["devices"]
    params = load_params(PROJECT_ROOT / "params.yaml")
    pool = yaml.safe_load(params.path(params.profile.devices_file).read_text())["devices"]
    assert devices["parameterType"] == "LIST"
    assert devices["defaultValue"] == (list(params.profile.devices) or list(pool))


def test_retries_caching_resources_and_environment(kfp_pipeline, spec):
    tasks, executors = _tasks(spec), _executors(spec)
    for stage, (_, task) in tasks.items():
        entry = BY_NAME[stage]
        assert task["retryPolicy"]["maxRetryCount"] == kfp_pipeline.RETRIES, stage
        assert task["retryPolicy"]["backoffDuration"] == kfp_pipeline.RETRY_BACKOFF, stage
        cached = task["cachingOptions"].get("enableCache", False)
        assert cached is entry.deterministic, stage
        resources = executors[stage]["resources"]
        cpu, memory = entry.resources
        assert resources["resourceCpuRequest"] == resources["resourceCpuLimit"] == cpu, stage
        assert resources["resourceMemoryRequest"] == resources["resourceMemoryLimit"] == memory, stage
        env = {e["name"]: e["value"] for e in executors[stage]["env"]}
        assert env == {"MLFLOW_TRACKING_URI": kfp_pipeline.DEFAULT_TRACKING_URI}, stage
        assert not re.search(r"//[^/@]*:[^/@]*@", env["MLFLOW_TRACKING_URI"]), "credentials in the URI"
    for timed in ("profile", "validate"):  # timings are never served from a cache
        assert tasks[timed][1]["cachingOptions"].get("enableCache", False) is False


def test_the_nights_summary_runs_after_every_stage_whatever_their_states(kfp_pipeline, spec):
    """The exit handler's task, as the Airflow DAG's `summary` task with trigger rule all_done: it runs
    `python -m components summary` on the pipeline's key and devices, a command the CLI accepts."""
    root = spec["root"]["dag"]["tasks"]
    assert set(root) == {"exit-handler-1", SUMMARY}
    assert root["exit-handler-1"]["componentRef"]["name"] == STAGES_DAG
    task = root[SUMMARY]
    assert task["dependentTasks"] == ["exit-handler-1"]
    assert task["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert task["inputs"]["parameters"]["devices"] == {"componentInputParameter": "devices"}
    assert task["cachingOptions"].get("enableCache", False) is False
    [container] = [e["container"] for e in spec["deploymentSpec"]["executors"].values()
                   if e["container"]["command"][3] == SUMMARY]
    assert container["command"] == ["python", "-m", "components", SUMMARY]
    assert container["env"] == [{"name": "MLFLOW_TRACKING_URI", "value": kfp_pipeline.DEFAULT_TRACKING_URI}]
    devices = spec["root"]["inputDefinitions"]["parameters"]["devices"]["defaultValue"]
    # KFP hands a list parameter to a command as its JSON text
    values = {"pipeline_key": "kfp-run-0", "devices": json.dumps(devices)}
    argv = [SUMMARY] + [PLACEHOLDER.sub(lambda m: values[m[3]] if m[2] == "parameters" else f"/kfp/{m[1]}/{m[3]}",
                                        a) for a in container["args"]]
    args = _parser(STAGES).parse_args(argv)
    assert (args.command, args.pipeline_key, args.report) == (SUMMARY, "kfp-run-0", "/kfp/outputs/report_dir")
    assert device_names(args.device) == devices


def test_committed_spec_is_a_fresh_compile(compiled):
    def load(path: Path) -> dict:
        doc = yaml.safe_load(path.read_text())
        doc.pop("sdkVersion", None)  # the compiler's version, not the pipeline
        return doc

    assert COMMITTED.exists(), "compile it: python infra/kfp/pipeline.py"
    assert load(COMMITTED) == load(compiled), "infra/kfp/compress_nightly.yaml is stale: python infra/kfp/pipeline.py"


def test_compile_time_overrides_reach_every_stage_and_are_checked(kfp_pipeline, tmp_path, capsys):
    out = tmp_path / "variant.yaml"
    assert kfp_pipeline.main(["--output", str(out), "-p", "train.epochs=1",
                              "--tracking-uri", "http://mlflow.example:5000"]) == 0
    for stage, container in _executors(yaml.safe_load(out.read_text())).items():
        # last: the folders are flags of their own, which no params override moves
        assert container["args"][-2:] == ["-p", "train.epochs=1"], stage
        assert container["env"] == [{"name": "MLFLOW_TRACKING_URI", "value": "http://mlflow.example:5000"}]
    assert kfp_pipeline.main(["--output", str(tmp_path / "bad.yaml"), "-p", "train.epochz=1"]) == 2
    assert "train.epochz" in capsys.readouterr().err and not (tmp_path / "bad.yaml").exists()


def test_a_toy_stage_in_the_table_becomes_a_component(kfp_pipeline, tmp_path):
    """A new entry in the table is a new component, wired by its reads; its module is not needed to compile."""
    table = (*STAGES, Stage("toy", "tests.toy_stage", "A toy stage.", per_device=True, reads=("compress",)))
    out = kfp_pipeline.compile_pipeline(tmp_path / "toy.yaml", stages=table)
    spec = yaml.safe_load(out.read_text())
    container = _executors(spec)["toy"]
    assert container["command"] == ["python", "-m", "components", "toy"]
    assert _flag_values(container["args"], "--input") == [f"compress={_path('inputs', 'compress_dir')}"]
    assert _flag_values(container["args"], "--device") == ["{{$.inputs.parameters['device']}}"]
    tasks = _tasks(spec)
    loop_name, _ = _loop(spec, tasks, (*PER_DEVICE, "toy"))
    dag_name, task = tasks["toy"]
    assert dag_name == loop_name == tasks["compress"][0]
    assert task["dependentTasks"] == ["compress"]
    assert _producer(spec, dag_name, task["inputs"]["artifacts"]["compress_dir"]) == ("compress", "output_dir")
    assert kfp_pipeline.make_components(stages=table)["toy"].component_spec.description == "A toy stage."
