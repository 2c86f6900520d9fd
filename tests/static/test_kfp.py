"""The Kubeflow pipeline (infra/kfp/): the compiled spec, checked without a cluster (tests/e2e/test_kfp.py runs it).

Checks that the spec is valid KFP IR with a valid Kubernetes platform spec,
has one lightweight component per entry of the stage table whose embedded
source, executed here on stand-in artifacts, runs the real CLI on the task's
own artifacts, feeds each stage its upstream stages' data folders, has the
data dependencies of the table and of dvc.yaml, takes devices, overrides and
the tracking URI as run parameters, places each device's on-device tasks by
its pool entry, mounts the data and the credentials, ends with the summary as
exit handler, that a new stage in the table becomes a component, and that the
committed infra/kfp/compress_nightly.yaml is a fresh compile.
"""

from __future__ import annotations

import importlib.util
import json
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from components.__main__ import _parser
from components.config import load_params
from components.stages import STAGES, Stage
from tests.conftest import PROJECT_ROOT

KFP_DIR = PROJECT_ROOT / "infra" / "kfp"
COMMITTED = KFP_DIR / "compress_nightly.yaml"
BY_NAME = {stage.name: stage for stage in STAGES}
PER_DEVICE = tuple(stage.name for stage in STAGES if stage.per_device)
HELPERS = ("placement", "summary")  # components that are not stages
STAGES_DAG = "comp-exit-handler-1"  # every stage runs inside the exit handler, whose exit task is the summary
RUN_PARAMETERS = {"devices": "LIST", "overrides": "LIST", "tracking_uri": "STRING", "run_key": "STRING"}


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
def docs(compiled) -> list[dict]:
    return list(yaml.safe_load_all(compiled.read_text()))


@pytest.fixture(scope="module")
def spec(docs) -> dict:
    return docs[0]


@pytest.fixture(scope="module")
def platform(docs) -> dict:
    """The Kubernetes platform spec: executor label -> its settings."""
    assert len(docs) == 2, "the cluster spec is the pipeline and its Kubernetes platform spec"
    return docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def _function(executor: dict) -> str:
    """The component function an executor runs (a lightweight component names it after --function_to_execute)."""
    args = executor["container"]["args"]
    return args[args.index("--function_to_execute") + 1]


def _executors(spec: dict) -> dict[str, dict]:
    """Component function (a stage's name, or a helper's) -> its executor's container."""
    out = {}
    for label, executor in spec["deploymentSpec"]["executors"].items():
        name = _function(executor)
        assert name not in out, f"{label}: a second executor for {name}"
        assert label == f"exec-{name.replace('_', '-')}", label
        out[name] = executor["container"]
    return out


def _dags(spec: dict) -> dict[str, dict]:
    return {"root": spec["root"]["dag"]} | {name: c["dag"] for name, c in spec["components"].items() if "dag" in c}


def _tasks(spec: dict) -> dict[str, tuple[str, dict]]:
    """Component function -> (the DAG holding its task: 'root' or a component name, the task), over every DAG."""
    function = {label: _function(e) for label, e in spec["deploymentSpec"]["executors"].items()}
    out = {}
    for dag_name, dag in _dags(spec).items():
        for task in dag["tasks"].values():
            component = spec["components"][task["componentRef"]["name"]]
            if "executorLabel" in component:
                name = function[component["executorLabel"]]
                assert name not in out, f"a second task for {name}"
                out[name] = (dag_name, task)
    return out


def _parent(spec: dict, dag_name: str) -> tuple[str, dict]:
    """(the DAG holding the task that runs DAG `dag_name`, that task)."""
    (found,) = [(name, t) for name, dag in _dags(spec).items() for t in dag["tasks"].values()
                if t["componentRef"]["name"] == dag_name]
    return found


def _producer(spec: dict, dag_name: str, artifact_input: dict) -> tuple[str, str]:
    """(producing stage, output name) of a task's input artifact, following it out of nested DAGs."""
    tasks = {name: t for d in _dags(spec).values() for name, t in d["tasks"].items()}
    if "taskOutputArtifact" in artifact_input:
        ref = artifact_input["taskOutputArtifact"]
        label = spec["components"][tasks[ref["producerTask"]]["componentRef"]["name"]]["executorLabel"]
        return _function(spec["deploymentSpec"]["executors"][label]), ref["outputArtifactKey"]
    parent, task = _parent(spec, dag_name)  # handed down into a DAG: its task says by whom
    return _producer(spec, parent, task["inputs"]["artifacts"][artifact_input["componentInputArtifact"]])


def _root_parameter(spec: dict, dag_name: str, parameter: dict) -> str:
    """The pipeline parameter a task's input parameter comes from, following it out of nested DAGs."""
    if dag_name == "root" or "componentInputParameter" not in parameter:
        return parameter.get("componentInputParameter", "")
    parent, task = _parent(spec, dag_name)
    handed = task["inputs"]["parameters"].get(parameter["componentInputParameter"])
    if handed is None:  # a loop's item
        return f"item of {task['parameterIterator']['items']['inputParameter']}"
    return _root_parameter(spec, parent, handed)


def test_spec_is_valid_kfp_ir_with_a_kubernetes_platform_spec(compiled, docs, spec):
    from google.protobuf import json_format
    from kfp.components import load_component_from_file
    from kfp.pipeline_spec import pipeline_spec_pb2

    # strict: an unknown field anywhere in these messages fails the parse
    pipeline = json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec())
    json_format.ParseDict(spec["deploymentSpec"], pipeline_spec_pb2.PipelineDeploymentConfig())
    json_format.ParseDict(docs[1], pipeline_spec_pb2.PlatformSpec())
    assert pipeline.pipeline_info.name == "compress-nightly"
    assert pipeline.schema_version == "2.1.0"
    assert load_component_from_file(str(compiled)).name == "compress-nightly"


def test_one_component_per_stage(kfp_pipeline, spec):
    names = sorted([*BY_NAME, *HELPERS])
    assert sorted(_executors(spec)) == names
    assert sorted(_tasks(spec)) == names
    components = kfp_pipeline.make_components()
    assert list(components) == [stage.name for stage in STAGES]
    for stage in STAGES:  # the IR holds no component descriptions: the component itself does
        assert components[stage.name].component_spec.description == stage.doc


def test_every_component_has_its_table_entrys_artifacts_and_the_run_parameters(spec):
    for stage in STAGES:
        component = spec["components"][f"comp-{stage.name.replace('_', '-')}"]
        inputs = component["inputDefinitions"]
        assert inputs["parameters"] == {"run_key": {"parameterType": "STRING"}, "job_id": {"parameterType": "STRING"},
                                        "overrides": {"parameterType": "LIST"},
                                        "tracking_uri": {"parameterType": "STRING"},
                                        **({"device": {"parameterType": "STRING"}} if stage.per_device else {})}
        assert set(inputs.get("artifacts", {})) == {f"{up}_dir" for up in stage.reads}, stage.name
        outputs = set(component.get("outputDefinitions", {}).get("artifacts", {}))
        assert outputs == ({"output_dir", "report_dir"} if stage.writes_data else {"report_dir"}), stage.name


def test_run_parameters_reach_every_task(spec):
    assert {k: v["parameterType"] for k, v in spec["root"]["inputDefinitions"]["parameters"].items()} == \
        RUN_PARAMETERS
    for name, (dag_name, task) in _tasks(spec).items():
        given = task["inputs"]["parameters"]
        for parameter in ("overrides", "tracking_uri", "run_key"):
            if name != "placement" or parameter == "overrides":
                assert _root_parameter(spec, dag_name, given[parameter]) == parameter, (name, parameter)
        if name != "placement":
            assert given["job_id"] == {"runtimeValue": {"constant": "{{$.pipeline_job_uuid}}"}}, name


def test_every_task_runs_the_pinned_project_image_without_installing_anything(kfp_pipeline, spec):
    version = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert kfp_pipeline.IMAGE == f"iot-compress/pipeline:{version}"
    for name, container in _executors(spec).items():
        assert container["image"] == kfp_pipeline.IMAGE, name
        assert "pip install" not in container["command"][2], name  # the image has kfp and the project (the lock)
        assert "env" not in container, name  # the tracking URI is a run parameter, credentials a secret


class _Artifact(SimpleNamespace):
    pass


def _run_source(container: dict, monkeypatch, **arguments) -> list[str]:
    """Execute a component's embedded source as KFP's executor would, with `components.drivers.kfp_tasks` handing the
    command line to a recorder instead of running it: the argv the task would run."""
    from components.drivers import kfp_tasks

    seen = []
    monkeypatch.setattr(kfp_tasks, "_main", lambda argv, overrides, uri, what: seen.append((argv, overrides, uri)))
    namespace: dict = {}
    exec(container["command"][3], namespace)  # noqa: S102 - the source the spec ships
    namespace[_function({"container": container})](**arguments)
    [(argv, overrides, uri)] = seen
    return argv + [arg for item in overrides for arg in ("-p", item)], uri


def test_each_components_source_runs_the_cli_on_its_own_artifacts(spec, monkeypatch):
    """The shipped source, executed on stand-in artifacts, builds a command the real CLI accepts, pointing at the
    task's own artifacts and the run's key, device, overrides and tracking URI."""
    executors = _executors(spec)
    for stage in STAGES:
        arguments = {"run_key": "", "job_id": "kfp-run-0", "overrides": ["train.epochs=1"],
                     "tracking_uri": "http://mlflow:5000", "report_dir": _Artifact(path="/kfp/outputs/report_dir")}
        arguments |= {f"{up}_dir": _Artifact(path=f"/kfp/inputs/{up}_dir") for up in stage.reads}
        arguments |= {"device": "ort-1t"} if stage.per_device else {}
        arguments |= {"output_dir": _Artifact(path="/kfp/outputs/output_dir")} if stage.writes_data else {}
        argv, uri = _run_source(executors[stage.name], monkeypatch, **arguments)
        args = _parser(STAGES).parse_args(argv)
        assert args.command == stage.name and args.pipeline_key == "kfp-run-0" and uri == "http://mlflow:5000"
        assert args.device == (["ort-1t"] if stage.per_device else []), stage.name
        assert args.input == [f"{up}=/kfp/inputs/{up}_dir" for up in stage.reads], stage.name
        assert args.output == ("/kfp/outputs/output_dir" if stage.writes_data else None), stage.name
        assert args.report == "/kfp/outputs/report_dir", stage.name
        assert args.run_key is None, stage.name  # the artifacts are the folders: no run layout beside them
        assert args.overrides == ["train.epochs=1"]
        load_params(PROJECT_ROOT / "params.yaml", args.overrides)  # unknown keys or bad types raise
    argv, _ = _run_source(executors["summary"], monkeypatch, run_key="nightly-7", job_id="kfp-run-0",
                          devices=["ort-1t", "cortex-m4"], overrides=[], tracking_uri="",
                          report_dir=_Artifact(path="/kfp/outputs/report_dir"))
    args = _parser(STAGES).parse_args(argv)  # a given run key wins over the job's id
    assert (args.command, args.pipeline_key, args.device) == ("summary", "nightly-7", ["ort-1t", "cortex-m4"])

    from components.drivers import kfp_tasks

    monkeypatch.setattr(kfp_tasks, "placement", lambda device, overrides: ({"node": device}, [{"key": "k"}]))
    namespace: dict = {}
    exec(executors["placement"]["command"][3], namespace)  # noqa: S102 - the source the spec ships
    placed = namespace["placement"](device="nuc", overrides=[])
    assert (placed.node_selector, placed.tolerations) == ({"node": "nuc"}, [{"key": "k"}])


def test_each_stage_reads_its_upstreams_output_dir(spec):
    tasks = _tasks(spec)
    for stage in STAGES:
        dag_name, task = tasks[stage.name]
        artifacts = task["inputs"].get("artifacts", {})
        assert {name: _producer(spec, dag_name, a) for name, a in artifacts.items()} == {
            f"{up}_dir": (up, "output_dir") for up in stage.reads}, stage.name


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
    tasks = {name: t for name, t in _tasks(spec).items() if name in BY_NAME}
    actual = {stage: {_producer(spec, dag_name, a)[0] for a in task["inputs"].get("artifacts", {}).values()}
              for stage, (dag_name, task) in tasks.items()}
    assert actual == {stage.name: set(stage.reads) for stage in STAGES} == _dvc_reads()
    assert actual == {  # the graph itself, so a table that lost a read cannot pass for both
        "ingest": set(), "train": {"ingest"}, "profile": set(), "fit_latency": {"profile"},
        "compress": {"ingest", "train", "profile", "fit_latency"},
        "validate": {"ingest", "train", "fit_latency", "compress"}, "register": {"validate"}}
    for stage, (_, task) in tasks.items():  # no ordering beyond the data (and the device's placement)
        producers = {t for a in task["inputs"].get("artifacts", {}).values()
                     for t in [a.get("taskOutputArtifact", {}).get("producerTask")] if t}
        placed = {"placement"} if BY_NAME[stage].on_device else set()
        assert set(task.get("dependentTasks", [])) == producers | placed, stage


def _loop(spec: dict, tasks: dict[str, tuple[str, dict]], per_device=PER_DEVICE) -> tuple[str, dict]:
    """(the loop's DAG name, the loop task) holding every per-device stage, inside the exit handler."""
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
    loop_dag, loop = _loop(spec, tasks)
    item = loop["parameterIterator"]["itemInput"]
    assert _root_parameter(spec, STAGES_DAG, loop["inputs"]["parameters"][
        loop["parameterIterator"]["items"]["inputParameter"]]) == "devices"
    for name in (*PER_DEVICE, "placement"):
        assert tasks[name][1]["inputs"]["parameters"]["device"] == {"componentInputParameter": item}, name
    devices = spec["root"]["inputDefinitions"]["parameters"]["devices"]
    params = load_params(PROJECT_ROOT / "params.yaml")
    pool = yaml.safe_load(params.path(params.profile.devices_file).read_text())["devices"]
    assert devices["defaultValue"] == (list(params.profile.devices) or list(pool))
    assert tasks["placement"][0] == loop_dag


def test_on_device_tasks_run_on_the_devices_node_from_its_pool_entry(spec, platform, tmp_path, monkeypatch):
    """profile and validate take the node selector and tolerations the `placement` task reads from the pool file;
    the other tasks run anywhere."""
    for stage in STAGES:
        settings = platform[f"exec-{stage.name.replace('_', '-')}"]
        if stage.on_device:
            assert settings["nodeSelector"] == {"nodeSelectorJson": {"taskOutputParameter": {
                "producerTask": "placement", "outputParameterKey": "node_selector"}}}, stage.name
            assert settings["tolerations"] == [{"tolerationJson": {"taskOutputParameter": {
                "producerTask": "placement", "outputParameterKey": "tolerations"}}}], stage.name
        else:
            assert "nodeSelector" not in settings and "tolerations" not in settings, stage.name
    assert {s.name for s in STAGES if s.on_device} == {"profile", "validate"}

    from components.drivers import kfp_tasks

    pool = yaml.safe_load((PROJECT_ROOT / "infra" / "devices.yaml").read_text())
    pool["devices"]["ort-1t"]["kubernetes"] = {
        "node_selector": {"iot-compress.io/device": "nuc"},
        "tolerations": [{"key": "iot-compress.io/device", "value": "nuc", "effect": "NoSchedule"}]}
    (tmp_path / "devices.yaml").write_text(yaml.safe_dump(pool))
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["profile"]["devices_file"] = str(tmp_path / "devices.yaml")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setenv("IOT_COMPRESS_PARAMS", str(tmp_path / "params.yaml"))
    assert kfp_tasks.placement("ort-1t") == ({"iot-compress.io/device": "nuc"}, [
        {"key": "iot-compress.io/device", "operator": "Equal", "value": "nuc", "effect": "NoSchedule"}])
    assert kfp_tasks.placement("cortex-m4") == ({}, [])  # no `kubernetes` entry: any node
    from components.config import ConfigError

    with pytest.raises(ConfigError, match="unknown device 'pixel9'"):
        kfp_tasks.placement("pixel9")


def test_volumes_and_credentials(kfp_pipeline, platform):
    """Every task gets a scratch /tmp and leaves the launcher's artifact staging paths to the backend; ingest
    mounts the data sets; every task that talks to MLflow gets the tracking server's credentials from the secret,
    none in the spec."""
    for name in (*BY_NAME, "summary"):
        settings = platform[f"exec-{name.replace('_', '-')}"]
        mounts = {m["mountPath"]: m["volumeName"] for m in settings["emptyDirMounts"]}
        assert mounts == {"/tmp": "scratch"}, name  # a mount at /gcs, /s3 or /minio would clash with the backend's
        [secret] = settings["secretAsEnv"]
        assert secret["secretName"] == kfp_pipeline.TRACKING_SECRET and secret["optional"] is True
        assert {k["secretKey"]: k["envVar"] for k in secret["keyToEnv"]} == kfp_pipeline.TRACKING_SECRET_ENV
        claims = [(m["constant"], m["mountPath"]) for m in settings.get("pvcMount", [])]
        assert claims == ([(kfp_pipeline.DATA_CLAIM, kfp_pipeline.DATA_MOUNT)] if name == "ingest" else []), name
    assert "exec-placement" not in platform  # it only reads the pool file in the image
    docker = (PROJECT_ROOT / "docker" / "pipeline.Dockerfile").read_text()
    assert f"IOT_COMPRESS_DATA_ROOT={kfp_pipeline.DATA_MOUNT}/" in docker.replace('"', "")


def test_retries_caching_and_resources(kfp_pipeline, spec):
    tasks, executors = _tasks(spec), _executors(spec)
    for stage in STAGES:
        _, task = tasks[stage.name]
        assert task["retryPolicy"]["maxRetryCount"] == kfp_pipeline.RETRIES, stage.name
        assert task["retryPolicy"]["backoffDuration"] == kfp_pipeline.RETRY_BACKOFF, stage.name
        # never cached: a cached task records no MLflow run, which the night's summary would report missing
        assert task["cachingOptions"].get("enableCache", False) is False, stage.name
        resources = executors[stage.name]["resources"]
        cpu, memory = stage.resources
        assert resources["resourceCpuRequest"] == resources["resourceCpuLimit"] == cpu, stage.name
        assert resources["resourceMemoryRequest"] == resources["resourceMemoryLimit"] == memory, stage.name
    assert tasks["placement"][1]["cachingOptions"].get("enableCache", False) is False
    assert kfp_pipeline.DEFAULT_TRACKING_URI.startswith("http://mlflow.iot-compress.svc.")  # infra/k8s's Service


def test_the_nights_summary_runs_after_every_stage_whatever_their_states(spec):
    """The exit handler's task, as the Airflow DAG's `summary` task with trigger rule all_done."""
    root = spec["root"]["dag"]["tasks"]
    assert set(root) == {"exit-handler-1", "summary"}
    assert root["exit-handler-1"]["componentRef"]["name"] == STAGES_DAG
    task = root["summary"]
    assert task["dependentTasks"] == ["exit-handler-1"]
    assert task["triggerPolicy"]["strategy"] == "ALL_UPSTREAM_TASKS_COMPLETED"
    assert task["inputs"]["parameters"]["devices"] == {"componentInputParameter": "devices"}
    assert task["cachingOptions"].get("enableCache", False) is False and "retryPolicy" not in task


def test_committed_spec_is_a_fresh_compile(compiled):
    def load(path: Path) -> list[dict]:
        docs = list(yaml.safe_load_all(path.read_text()))
        docs[0].pop("sdkVersion", None)  # the compiler's version, not the pipeline
        return docs

    assert COMMITTED.exists(), "compile it: python infra/kfp/pipeline.py"
    assert load(COMMITTED) == load(compiled), "infra/kfp/compress_nightly.yaml is stale: python infra/kfp/pipeline.py"


def test_compile_options_are_the_run_parameters_defaults_and_are_checked(kfp_pipeline, tmp_path, capsys):
    out = tmp_path / "variant.yaml"
    assert kfp_pipeline.main(["--output", str(out), "-p", "train.epochs=1",
                              "--tracking-uri", "http://mlflow.example:5000"]) == 0
    parameters = next(yaml.safe_load_all(out.read_text()))["root"]["inputDefinitions"]["parameters"]
    assert parameters["overrides"]["defaultValue"] == ["train.epochs=1"]
    assert parameters["tracking_uri"]["defaultValue"] == "http://mlflow.example:5000"
    assert kfp_pipeline.main(["--output", str(tmp_path / "bad.yaml"), "-p", "train.epochz=1"]) == 2
    assert "train.epochz" in capsys.readouterr().err and not (tmp_path / "bad.yaml").exists()


def test_the_local_pipeline_has_no_cluster_settings_and_no_exit_handler(kfp_pipeline, tmp_path):
    """What KFP's local runner can execute: the same stage components, straight at the root."""
    out = kfp_pipeline.compile_pipeline(tmp_path / "local.yaml", cluster=False)
    docs = list(yaml.safe_load_all(out.read_text()))
    assert len(docs) == 1
    tasks = _tasks(docs[0])
    assert sorted(tasks) == sorted([*BY_NAME, "placement"])  # placement runs (it checks the device) but places nothing
    assert {tasks[s.name][0] for s in STAGES if not s.per_device} == {"root"}


def test_a_toy_stage_in_the_table_becomes_a_component(kfp_pipeline, tmp_path, monkeypatch):
    """A new entry in the table is a new component, wired by its reads; its module is not needed to compile."""
    table = (*STAGES, Stage("toy", "tests.toy_stage", "A toy stage.", per_device=True, reads=("compress",)))
    out = kfp_pipeline.compile_pipeline(tmp_path / "toy.yaml", stages=table)
    spec = yaml.safe_load_all(out.read_text()).__next__()
    argv, _ = _run_source(_executors(spec)["toy"], monkeypatch, device="ort-1t", run_key="", job_id="k",
                          overrides=[], tracking_uri="", compress_dir=_Artifact(path="/in/compress"),
                          output_dir=_Artifact(path="/out/data"), report_dir=_Artifact(path="/out/report"))
    assert argv[:4] == ["toy", "--pipeline-key", "k", "--report"] and "compress=/in/compress" in argv
    tasks = _tasks(spec)
    loop_name, _ = _loop(spec, tasks, (*PER_DEVICE, "toy"))
    dag_name, task = tasks["toy"]
    assert dag_name == loop_name == tasks["compress"][0]
    assert task["dependentTasks"] == ["compress"]
    assert _producer(spec, dag_name, task["inputs"]["artifacts"]["compress_dir"]) == ("compress", "output_dir")
    assert kfp_pipeline.make_components(stages=table)["toy"].component_spec.description == "A toy stage."
    assert json.loads(json.dumps(spec))  # plain data all through
