"""The Kubeflow pipeline (infra/kfp/): compiled offline and checked as a spec, since no cluster runs here.

Checks that the spec is valid KFP IR, has one component per stage running
`python -m components <stage>` in the pinned project image with arguments the
real CLI and params schema accept, moves each artifact through the params key
its producer wrote it with, has the data dependencies of dvc.yaml, and that
the committed infra/kfp/compress_nightly.yaml is a fresh compile.
"""

from __future__ import annotations

import importlib.util
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from components.__main__ import STAGES, _parser
from components.config import load_params
from tests.conftest import PROJECT_ROOT

KFP_DIR = PROJECT_ROOT / "infra" / "kfp"
COMMITTED = KFP_DIR / "compress_nightly.yaml"
PER_DEVICE = ("profile", "fit_latency", "compress", "validate", "register")
PLACEHOLDER = re.compile(r"\{\{\$\.(inputs|outputs)\.(parameters|artifacts)\['([^']+)'\](?:\.path)?\}\}")
# `-p section.key={{$.inputs.artifacts['name'].path}}`: the params key an artifact is read or written through
ARTIFACT_FLAG = re.compile(r"^([\w.]+)=\{\{\$\.(inputs|outputs)\.artifacts\['([^']+)'\]\.path\}\}$")


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
    """Stage -> its executor's container, found by the stage its command runs."""
    out = {}
    for label, executor in spec["deploymentSpec"]["executors"].items():
        stage = executor["container"]["command"][3]
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
            if "executorLabel" in component:
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
    (loop,) = [t for t in spec["root"]["dag"]["tasks"].values() if t["componentRef"]["name"] == dag_name]
    return _producer(spec, "root", loop["inputs"]["artifacts"][name])


def _artifact_keys(container: dict) -> dict[tuple[str, str], str]:
    """(inputs|outputs, artifact name) -> the params key the command points at it."""
    args = container["args"]
    out = {}
    for flag, value in zip(args, args[1:]):
        match = ARTIFACT_FLAG.match(value) if flag == "-p" else None
        if match:
            out[(match[2], match[3])] = match[1]
    return out


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


def test_one_component_per_stage(spec):
    executors = _executors(spec)
    assert sorted(executors) == sorted(STAGES)
    assert sorted(_tasks(spec)) == sorted(STAGES)
    for stage in STAGES:  # one stage, one name: comp-fit-latency runs fit_latency
        component = spec["components"][f"comp-{stage.replace('_', '-')}"]
        assert spec["deploymentSpec"]["executors"][component["executorLabel"]]["container"]["command"][3] == stage


def test_every_task_runs_the_pinned_project_image(kfp_pipeline, spec):
    version = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert kfp_pipeline.IMAGE == f"iot-compress/pipeline:{version}"
    for stage, container in _executors(spec).items():
        assert container["image"] == kfp_pipeline.IMAGE, stage
        assert container["command"] == ["python", "-m", "components", stage]


def test_the_cli_accepts_every_command(spec):
    """Each command, placeholders filled in, parses with the real CLI and its `-p` overrides load."""
    device = spec["root"]["inputDefinitions"]["parameters"]["devices"]["defaultValue"][0]
    for stage, container in _executors(spec).items():
        argv = [_substitute(a, device) for a in [stage, *container["args"]]]
        try:
            args = _parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"{stage}: the CLI refuses {argv}")
        assert args.command == stage and args.pipeline_key == "kfp-run-0"
        assert args.device == ([device] if stage in PER_DEVICE else []), stage
        assert args.output_dir is None and args.input_dir is None  # paths go through -p: see pipeline.py
        load_params(PROJECT_ROOT / "params.yaml", args.overrides)  # unknown keys or bad types raise


def test_each_artifact_is_read_through_the_key_it_was_written_with(spec):
    executors, tasks = _executors(spec), _tasks(spec)
    for stage, container in executors.items():
        keys = _artifact_keys(container)
        for (direction, name), key in keys.items():
            if direction == "outputs":  # a stage writes only its own folders
                assert key in (f"{stage}.output_dir", f"{stage}.report_dir"), (stage, name, key)
        dag_name, task = tasks[stage]
        for name, artifact_input in task["inputs"].get("artifacts", {}).items():
            producer, output = _producer(spec, dag_name, artifact_input)
            written = _artifact_keys(executors[producer])[("outputs", output)]
            assert keys[("inputs", name)] == written, f"{stage} reads {producer}'s {output} as {keys[('inputs', name)]}"


def test_data_dependencies_are_those_of_dvc_yaml(spec):
    """A stage reads the artifacts of exactly the stages whose folders dvc.yaml lists as its deps."""
    dvc = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]
    expected = {}
    for stage, body in dvc.items():
        deps = (body.get("do") or body)["deps"]
        expected[stage] = {m[1] for d in deps for m in [re.match(r"\$\{(\w+)\.(output|report)_dir\}", d)] if m}
    tasks = _tasks(spec)
    actual = {stage: {_producer(spec, dag_name, a)[0] for a in task["inputs"].get("artifacts", {}).values()}
              for stage, (dag_name, task) in tasks.items()}
    assert actual == expected
    assert expected == {  # the graph itself, so a dvc.yaml that lost a dep cannot pass for both
        "ingest": set(), "train": {"ingest"}, "profile": set(), "fit_latency": {"profile"},
        "compress": {"ingest", "train", "profile", "fit_latency"}, "validate": {"ingest", "train", "fit_latency", "compress"},
        "register": {"validate"}}
    for stage, (_, task) in tasks.items():  # no ordering beyond the data: every dependent task feeds this one
        producers = {t for a in task["inputs"].get("artifacts", {}).values()
                     for t in [a.get("taskOutputArtifact", {}).get("producerTask")] if t}
        assert set(task.get("dependentTasks", [])) == producers, stage


def test_per_device_stages_run_in_a_loop_over_the_devices_parameter(spec):
    tasks = _tasks(spec)
    assert tasks["ingest"][0] == tasks["train"][0] == "root"
    loops = {tasks[s][0] for s in PER_DEVICE}
    assert len(loops) == 1 and "root" not in loops
    (loop,) = [t for t in spec["root"]["dag"]["tasks"].values() if t["componentRef"]["name"] in loops]
    item = loop["parameterIterator"]["itemInput"]
    channel = loop["parameterIterator"]["items"]["inputParameter"]
    assert loop["inputs"]["parameters"][channel] == {"componentInputParameter": "devices"}
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
        assert task["retryPolicy"]["maxRetryCount"] >= 1, stage
        cached = task["cachingOptions"].get("enableCache", False)
        assert cached is (stage not in kfp_pipeline.UNCACHED), stage
        resources = executors[stage]["resources"]
        assert resources["resourceCpuRequest"] == resources["resourceCpuLimit"], stage
        assert resources["resourceMemoryRequest"] == resources["resourceMemoryLimit"], stage
        env = {e["name"]: e["value"] for e in executors[stage]["env"]}
        assert env == {"MLFLOW_TRACKING_URI": kfp_pipeline.DEFAULT_TRACKING_URI}, stage
        assert not re.search(r"//[^/@]*:[^/@]*@", env["MLFLOW_TRACKING_URI"]), "credentials in the URI"
    assert {"profile", "validate"} <= kfp_pipeline.UNCACHED  # timings are never served from a cache


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
        args = container["args"]
        assert args[args.index("train.epochs=1") - 1] == "-p", stage
        # before the artifact paths, so an override cannot move a stage's inputs or outputs
        assert args.index("train.epochs=1") < min(i for i, a in enumerate(args) if ARTIFACT_FLAG.match(a)), stage
        assert container["env"] == [{"name": "MLFLOW_TRACKING_URI", "value": "http://mlflow.example:5000"}]
    assert kfp_pipeline.main(["--output", str(tmp_path / "bad.yaml"), "-p", "train.epochz=1"]) == 2
    assert "train.epochz" in capsys.readouterr().err and not (tmp_path / "bad.yaml").exists()
