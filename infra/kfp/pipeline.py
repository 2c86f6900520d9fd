"""The nightly pipeline for Kubeflow Pipelines (KFP v2): one component per stage, run on a cluster or locally.

A loop over the stage table `components.stages.STAGES`, as the Airflow DAG
and dvc.yaml are: the stages that run once at the top level in table order,
the per-device ones in one `dsl.ParallelFor` over the run parameter
`devices`, each fed its upstream stages' `output_dir` artifacts (the table is
in topological order).

Each component is a lightweight Python component generated from its table
entry: a function whose arguments are the run's parameters and its
artifacts, and whose body calls `components.drivers.kfp_tasks.run_stage`, which runs
`python -m components <stage>` in-process with `--input <upstream>=<path>`,
`--output` and `--report` on the artifacts' local paths. Lightweight, not
container components, because that is what KFP's local SubprocessRunner
executes, so the pipeline that goes to a cluster is the one the end-to-end
tier runs here (`run_local`). Data moves between tasks as artifacts, passed
by URI; no path depends on params.yaml.

Run parameters (not compile-time constants): `devices` (default: the pool's
`profile.devices`, else every device), `overrides` (params overrides, each
`section.key=value`), `tracking_uri` (the MLflow server) and `run_key` (the
key the MLflow runs nest under; empty: the KFP job's id).

For a cluster (`cluster=True`, the committed spec) the compiled spec also
carries, through kfp-kubernetes:
- node placement: a `placement` task per device reads the device's
  `kubernetes` entry (node selector, tolerations) from the pool file in the
  image, and the device's on-device stages (the table's `on_device`: profile,
  validate) get them, so they run on the node the device is attached to;
- volumes: the shared claim with the data sets mounted on ingest, and a
  scratch `/tmp` on every task;
- the tracking server's credentials from the Kubernetes secret
  `mlflow-tracking` (optional) as MLFLOW_TRACKING_USERNAME/PASSWORD;
- the night's summary as the exit handler: once every stage is done,
  failed ones too, `python -m components summary` writes the summary onto the
  MLflow parent run and ends it.
KFP's local runner supports none of these (it ignores platform settings and
cannot run an exit handler or a task after a `ParallelFor`), so `run_local`
compiles without them (the `placement` tasks still run) and runs the summary
step itself after the pipeline.

Run `python infra/kfp/pipeline.py` after changing this file, the stage table
or the pool; tests/static/test_kfp.py checks that
infra/kfp/compress_nightly.yaml is a fresh compile.
"""

# No `from __future__ import annotations`: kfp reads the pipeline function's annotations as types.
import argparse
import linecache
import logging
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

from kfp import compiler, dsl

from components.stages import STAGES, Stage, check_table

PIPELINE_NAME = "compress-nightly"
IMAGE = "iot-compress/pipeline:0.1.0"  # docker/pipeline.Dockerfile; the tag is the package version
DEFAULT_OUTPUT = Path(__file__).with_name("compress_nightly.yaml")
PROJECT_ROOT = Path(__file__).resolve().parents[2]
# The MLflow service of infra/k8s (namespace iot-compress), reachable from the namespace KFP runs pods in; it
# serves artifacts itself, so the tasks need no S3 credentials.
DEFAULT_TRACKING_URI = "http://mlflow.iot-compress.svc.cluster.local:5000"
# As the Airflow DAG: 2 retries, 5 minutes apart, doubling. A retry starts a
# fresh pod with empty outputs. A stage's own errors (bad data, an unknown
# device) fail the same way again, so retries are for lost pods and flaky services.
RETRIES, RETRY_BACKOFF, RETRY_FACTOR = 2, "300s", 2.0
# Cluster settings (infra/k8s): the claim holding the data sets, where the image expects them, the secret with
# the tracking server's credentials. Both are namespaced: they must exist in the namespace the runs' pods use.
DATA_CLAIM, DATA_MOUNT = "iot-compress-shared", "/data"
TRACKING_SECRET = "mlflow-tracking"
TRACKING_SECRET_ENV = {"username": "MLFLOW_TRACKING_USERNAME", "password": "MLFLOW_TRACKING_PASSWORD"}
SMALL_TASK = ("1", "1G")  # placement and summary: a few MLflow calls and two figures


def input_name(upstream: str) -> str:
    """The input artifact a stage reads `upstream`'s data folder through."""
    return f"{upstream}_dir"


def _lightweight(source: str, name: str, image: str) -> Callable:
    """A lightweight component from generated source: KFP embeds a component function's source in the spec (and the
    local runner executes it), so the function is defined from text that `inspect.getsource` can read back."""
    filename = f"<kfp component {name}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace = {"dsl": dsl, "NamedTuple": NamedTuple, "Input": dsl.Input, "Output": dsl.Output,
                 "Artifact": dsl.Artifact}
    exec(compile(source, filename, "exec"), namespace)  # noqa: S102 - our own text, from the stage table
    return dsl.component(namespace[name], base_image=image, install_kfp_package=False)


def stage_source(stage: Stage) -> str:
    """The component function of a table entry: its run parameters and artifacts as arguments; the body runs it."""
    args = [*(["device: str"] if stage.per_device else []), "run_key: str", "job_id: str", "overrides: list",
            "tracking_uri: str", *(f"{input_name(up)}: Input[Artifact]" for up in stage.reads),
            *(["output_dir: Output[Artifact]"] if stage.writes_data else []), "report_dir: Output[Artifact]"]
    inputs = ", ".join(f"{up!r}: {input_name(up)}.path" for up in stage.reads)
    return textwrap.dedent(f'''\
        def {stage.name}({", ".join(args)}):
            """{stage.doc}"""
            from components.drivers import kfp_tasks

            kfp_tasks.run_stage({stage.name!r}, pipeline_key=kfp_tasks.pipeline_key(run_key, job_id),
                                overrides=overrides, tracking_uri=tracking_uri,
                                device={"device" if stage.per_device else '""'}, inputs={{{inputs}}},
                                output={"output_dir.path" if stage.writes_data else "None"}, report=report_dir.path)
        ''')


PLACEMENT_SOURCE = '''\
def placement(device: str, overrides: list) -> NamedTuple("Placement", [("node_selector", dict), ("tolerations", list)]):
    """Where the device's on-device tasks run: its pool entry's node selector and tolerations."""
    from collections import namedtuple

    from components.drivers import kfp_tasks

    return namedtuple("Placement", ["node_selector", "tolerations"])(*kfp_tasks.placement(device, overrides))
'''

SUMMARY_SOURCE = '''\
def summary(run_key: str, job_id: str, devices: list, overrides: list, tracking_uri: str,
            report_dir: Output[Artifact]):
    """The night's summary on the pipeline's MLflow parent run, every device side by side; it ends that run."""
    from components.drivers import kfp_tasks

    kfp_tasks.summarise(pipeline_key=kfp_tasks.pipeline_key(run_key, job_id), devices=devices, overrides=overrides,
                        tracking_uri=tracking_uri, report=report_dir.path)
'''


def make_components(image: str = IMAGE, stages: Sequence[Stage] = STAGES) -> dict[str, Callable]:
    """One component per stage, by stage name (made per compile, so importing this module does no work)."""
    return {stage.name: _lightweight(stage_source(stage), stage.name, image) for stage in stages}


def _configure(task: dsl.PipelineTask, resources: tuple[str, str], retries: bool = True) -> dsl.PipelineTask:
    """Resources, retries and caching of one task.

    CPUs and memory are requested and capped alike, in whole CPUs: what the
    kubelet's static CPU manager needs to give a pod exclusive cores, which
    profile and validate time on. No task is served from KFP's cache: every
    stage records its MLflow run under the night's parent run, which a cached
    task would skip, leaving the summary to report that stage missing (and the
    job id every task takes would defeat the cache anyway).
    """
    cpu, memory = resources
    task.set_cpu_request(cpu).set_cpu_limit(cpu).set_memory_request(memory).set_memory_limit(memory)
    task.set_caching_options(False)
    if retries:
        task.set_retry(RETRIES, RETRY_BACKOFF, RETRY_FACTOR)
    return task


def _on_cluster(task: dsl.PipelineTask, stage: Stage | None = None, place: dsl.PipelineTask | None = None) -> None:
    """The task's Kubernetes settings: credentials, a scratch volume, the data sets for a stage that reads them,
    and the device's node for an on-device stage. (The launcher's own staging paths for artifacts, /gcs, /s3 and
    /minio, are the backend's to mount: a second mount at the same path would be refused.)"""
    from kfp import kubernetes

    kubernetes.use_secret_as_env(task, TRACKING_SECRET, TRACKING_SECRET_ENV, optional=True)
    kubernetes.empty_dir_mount(task, volume_name="scratch", mount_path="/tmp")
    if stage is not None and stage.data_deps:  # it reads the data root
        kubernetes.mount_pvc(task, pvc_name=DATA_CLAIM, mount_path=DATA_MOUNT)
    if place is not None:
        kubernetes.add_node_selector_json(task, place.outputs["node_selector"])
        kubernetes.add_toleration_json(task, place.outputs["tolerations"])


def build_pipeline(default_devices: Sequence[str], tracking_uri: str = DEFAULT_TRACKING_URI, image: str = IMAGE,
                   overrides: Sequence[str] = (), stages: Sequence[Stage] = STAGES, cluster: bool = True):
    """The `compress-nightly` pipeline function; the arguments are its run parameters' defaults.

    `cluster`: with the Kubernetes settings and the summary as exit handler (the spec to upload); without, the
    pipeline KFP's local runner can execute (see the module's docstring).
    """
    check_table(stages)  # each stage reads only stages before it, so table order is a topological order
    components = make_components(image, stages)
    placement = _lightweight(PLACEMENT_SOURCE, "placement", image)
    summary = _lightweight(SUMMARY_SOURCE, "summary", image)
    job_id = dsl.PIPELINE_JOB_ID_PLACEHOLDER

    @dsl.pipeline(name=PIPELINE_NAME, description=__doc__.splitlines()[0])
    def compress_nightly(devices: list = list(default_devices), overrides: list = list(overrides),
                         tracking_uri: str = tracking_uri, run_key: str = ""):
        run = {"run_key": run_key, "job_id": job_id, "overrides": overrides, "tracking_uri": tracking_uri}

        def step(stage: Stage, tasks: dict, place=None, **device) -> None:
            inputs = {input_name(up): tasks[up].outputs["output_dir"] for up in stage.reads}
            task = _configure(components[stage.name](**run, **device, **inputs), stage.resources)
            if stage.on_device and place is not None:
                task.after(place)  # an unknown device fails in `placement`, before it is timed
            if cluster:
                _on_cluster(task, stage, place if stage.on_device else None)
            tasks[stage.name] = task

        def every_stage() -> None:
            tasks: dict[str, dsl.PipelineTask] = {}
            for stage in stages:
                if not stage.per_device:
                    step(stage, tasks)
            per_device = [stage for stage in stages if stage.per_device]
            if per_device:
                # here one device at a time: the local devices are this machine's cores, timed one by one
                with dsl.ParallelFor(devices, name="per-device", parallelism=0 if cluster else 1) as device:
                    place = None
                    if any(stage.on_device for stage in per_device):
                        place = _configure(placement(device=device, overrides=overrides), SMALL_TASK)
                    for stage in per_device:
                        step(stage, tasks, place, device=device)

        if not cluster:
            every_stage()
            return
        last = _configure(summary(run_key=run_key, job_id=job_id, devices=devices, overrides=overrides,
                                  tracking_uri=tracking_uri), SMALL_TASK, retries=False)
        _on_cluster(last)
        with dsl.ExitHandler(last, name="stages"):  # the summary runs after them, whether they failed or not
            every_stage()

    return compress_nightly


def pool_devices(overrides: Sequence[str] = ()) -> list[str]:
    """The devices a run covers by default: `profile.devices`, else the whole pool (as the Airflow DAG)."""
    from components.config import load_params
    from components.devices.pool import chosen

    return [d.name for d in chosen(load_params(PROJECT_ROOT / "params.yaml", overrides))]


def compile_pipeline(output: Path = DEFAULT_OUTPUT, tracking_uri: str = DEFAULT_TRACKING_URI, image: str = IMAGE,
                     overrides: Sequence[str] = (), stages: Sequence[Stage] = STAGES, cluster: bool = True) -> Path:
    """Compile the pipeline to `output`; the overrides are checked against params.yaml first."""
    pipeline = build_pipeline(pool_devices(overrides), tracking_uri, image, overrides, stages, cluster)
    compiler.Compiler().compile(pipeline, str(output))
    return output


def run_local(devices: Sequence[str], overrides: Sequence[str], tracking_uri: str, run_key: str, pipeline_root: Path,
              stages: Sequence[Stage] = STAGES) -> None:
    """Execute the pipeline with KFP's local SubprocessRunner (each task a subprocess of this Python, in this
    environment), then the night's summary, as the cluster's exit handler would. Raises if a task failed.

    The tasks read the params file the CLI would ($IOT_COMPRESS_PARAMS, else ./params.yaml).
    """
    from kfp import local

    from components.drivers import kfp_tasks

    if not run_key:
        raise ValueError("run_local needs a run key: the summary step finds the night's MLflow runs by it")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root), raise_on_error=True)
    pipeline = build_pipeline(list(devices), tracking_uri, overrides=overrides, stages=stages, cluster=False)
    summary = {"pipeline_key": run_key, "devices": devices, "overrides": overrides, "tracking_uri": tracking_uri,
               "report": str(Path(pipeline_root) / "summary")}
    try:
        pipeline(devices=list(devices), overrides=list(overrides), tracking_uri=tracking_uri, run_key=run_key)
    except BaseException:  # as the exit handler: the failed devices' summary too; the task's error is the one raised
        try:
            kfp_tasks.summarise(**summary)
        except Exception as exc:  # noqa: BLE001 - it says a device failed, which the task's error says better
            logging.getLogger(__name__).warning("the night's summary after the failure: %s", exc)
        raise
    kfp_tasks.summarise(**summary)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Compile the compress-nightly KFP pipeline spec, or run it locally.")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="where to write the YAML "
                   "(default: the committed infra/kfp/compress_nightly.yaml)")
    p.add_argument("--tracking-uri", default=DEFAULT_TRACKING_URI,
                   help=f"the default of the run parameter `tracking_uri` (default: {DEFAULT_TRACKING_URI})")
    p.add_argument("--image", default=IMAGE, help=f"the project image (default: {IMAGE})")
    p.add_argument("-p", "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="the default of the run parameter `overrides` (repeatable), as `python -m components -p`")
    p.add_argument("--local", action="store_true",
                   help="execute it here with KFP's local runner instead (tracking URI: $MLFLOW_TRACKING_URI or the "
                        "params file's store; --output: the pipeline root folder, default .state/kfp)")
    p.add_argument("--device", action="append", default=[], metavar="NAME",
                   help="--local: a device to cover (repeatable; default: profile.devices, else the pool)")
    args = p.parse_args(argv)
    from components.config import ConfigError

    try:
        if args.local:
            return _main_local(args)
        path = compile_pipeline(args.output, args.tracking_uri, args.image, args.overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{PIPELINE_NAME}: compiled to {path}")
    return 0


def _main_local(args) -> int:
    import time
    import uuid
    from datetime import datetime, timezone

    from components.config import default_params_path, load_params
    from components.devices.pool import chosen
    from components.drivers import kfp_tasks
    from components.tracking import server

    params = load_params(default_params_path(), args.overrides)
    devices = [d.name for d in chosen(params, args.device)]  # the params file the tasks read, not the checkout's
    root = args.output if args.output != DEFAULT_OUTPUT else params.path(params.pipeline.state_dir) / "kfp"
    key = f"kfp-local-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    started = time.perf_counter()
    try:
        run_local(devices, args.overrides, server.tracking_uri(params), key, root)
    except (kfp_tasks.TaskFailed, RuntimeError) as exc:
        print(f"error: {PIPELINE_NAME} {key}: {exc}", file=sys.stderr)
        return 1
    print(f"{PIPELINE_NAME} {key}: done locally in {time.perf_counter() - started:.0f} s (artifacts under {root})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
