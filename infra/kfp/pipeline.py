"""The nightly pipeline as a Kubeflow Pipelines (KFP v2) spec: one container component per stage.

A loop over the stage table `components.stages.STAGES`, as the Airflow DAG
and dvc.yaml are: the stages that run once at the top level in table order,
the per-device ones in one `dsl.ParallelFor` over the pipeline parameter
`devices`, each fed its upstream stages' `output_dir` artifacts (the table is
in topological order). Each component runs the project image with `python -m
components <stage>`, the command DVC and the Makefile run, so Kubeflow stays
a logic-free shell and a new stage in the table is a new component here.

Data moves between tasks as KFP artifacts, one per folder: a task gets
`--input <upstream>=<artifact>` for each stage it reads, `--output <artifact>`
and `--report <artifact>` for its own folders. For a per-device stage each is
that device's folder itself, so the paths never depend on params.yaml.

The pipeline's exit handler runs `python -m components summary` once every
stage is done, failed ones included (as the Airflow DAG's `summary` task with
trigger rule `all_done`): the night's summary onto the MLflow parent run,
which it ends.

Compile-time settings (the MLflow tracking URI, params overrides) are baked
into the spec: kfp 2.16 cannot feed a pipeline parameter into an environment
variable, and `-p` takes one `section.key=value` per flag, so a run-time list
parameter has nowhere to go (see infra/kfp/README.md). Run `python
infra/kfp/pipeline.py` after changing this file or the stage table;
tests/static/test_kfp.py checks that infra/kfp/compress_nightly.yaml is a fresh compile.
"""

# No `from __future__ import annotations`: kfp reads the pipeline function's annotations as types.
import argparse
import inspect
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from kfp import compiler, dsl

from components.stages import STAGES, Stage, check_table

PIPELINE_NAME = "compress-nightly"
IMAGE = "iot-compress/pipeline:0.1.0"  # docker/pipeline.Dockerfile; the tag is the package version
DEFAULT_OUTPUT = Path(__file__).with_name("compress_nightly.yaml")
PROJECT_ROOT = Path(__file__).resolve().parents[2]
# The in-cluster MLflow service (infra/k8s). It serves artifacts itself, so tasks need no credentials.
DEFAULT_TRACKING_URI = "http://mlflow:5000"
# As the Airflow DAG: 2 retries, 5 minutes apart, doubling. A retry starts a
# fresh pod with empty outputs. A stage's own errors (bad data, an unknown
# device) fail the same way again, so retries are for lost pods and flaky services.
RETRIES, RETRY_BACKOFF, RETRY_FACTOR = 2, "300s", 2.0


def input_name(upstream: str) -> str:
    """The input artifact a stage reads `upstream`'s data folder through."""
    return f"{upstream}_dir"


def _signature(stage: Stage) -> inspect.Signature:
    """The component's interface, as kfp reads it from a decorated function's signature."""
    def param(name: str, annotation) -> inspect.Parameter:
        return inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=annotation)

    outputs = ("output_dir", "report_dir") if stage.writes_data else ("report_dir",)
    return inspect.Signature([
        *([param("device", str)] if stage.per_device else []),
        param("pipeline_key", str),
        *(param(input_name(up), dsl.Input[dsl.Artifact]) for up in stage.reads),
        *(param(name, dsl.Output[dsl.Artifact]) for name in outputs),
    ])


def make_component(stage: Stage, image: str = IMAGE, overrides: Sequence[str] = ()) -> Callable:
    """The container component running `python -m components <stage>`, named and described after the stage.

    kfp's `container_component` calls the function once with a placeholder per
    parameter of its signature; here the signature is built from the table
    rather than written out, so every stage gets the same shape of command.
    """
    signature = _signature(stage)

    def command(*placeholders) -> dsl.ContainerSpec:
        given = signature.bind(*placeholders).arguments
        args = ["--device", given["device"]] if stage.per_device else []
        args += ["--pipeline-key", given["pipeline_key"]]
        for up in stage.reads:
            args += ["--input", f"{up}={given[input_name(up)].path}"]
        if stage.writes_data:
            args += ["--output", given["output_dir"].path]
        args += ["--report", given["report_dir"].path]
        args += [arg for item in overrides for arg in ("-p", item)]
        return dsl.ContainerSpec(image=image, command=["python", "-m", "components", stage.name], args=args)

    command.__name__ = command.__qualname__ = stage.name
    command.__doc__ = stage.doc
    command.__signature__ = signature
    command.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
    return dsl.container_component(command)


def make_components(image: str = IMAGE, overrides: Sequence[str] = (),
                    stages: Sequence[Stage] = STAGES) -> dict[str, Callable]:
    """One container component per stage, by stage name.

    Made per compile rather than at import, so the image, the overrides and
    the table are arguments and importing this module does no work.
    """
    return {stage.name: make_component(stage, image, overrides) for stage in stages}


def make_summary_component(image: str = IMAGE, overrides: Sequence[str] = ()) -> Callable:
    """The night's summary (`python -m components summary`): the pipeline's exit handler, so it runs when every
    stage is done, failed ones too, writes the summary onto the parent MLflow run and ends that run."""

    def summary(pipeline_key: str, devices: list, report_dir: dsl.Output[dsl.Artifact]) -> dsl.ContainerSpec:
        # a list parameter reaches the command as one JSON argument, which `--device` accepts
        args = ["--pipeline-key", pipeline_key, "--device", devices, "--report", report_dir.path]
        args += [arg for item in overrides for arg in ("-p", item)]
        return dsl.ContainerSpec(image=image, command=["python", "-m", "components", "summary"], args=args)

    summary.__doc__ = "The night's summary on the pipeline's MLflow parent run, every device side by side."
    return dsl.container_component(summary)


SUMMARY_RESOURCES = ("1", "2G")  # reads the night's runs and draws two figures


def _configure(task: dsl.PipelineTask, stage: Stage, tracking_uri: str) -> dsl.PipelineTask:
    """Resources, retries, caching and the MLflow URI of one task.

    CPUs and memory are requested and capped alike, in whole CPUs: what the
    kubelet's static CPU manager needs to give a pod exclusive cores, which
    profile and validate time on. A stage that is not deterministic (it reads
    the data root, times a device or writes the registry) is never served from KFP's cache.
    """
    cpu, memory = stage.resources
    (task.set_cpu_request(cpu).set_cpu_limit(cpu).set_memory_request(memory).set_memory_limit(memory)
     .set_retry(RETRIES, RETRY_BACKOFF, RETRY_FACTOR).set_caching_options(stage.deterministic)
     .set_env_variable("MLFLOW_TRACKING_URI", tracking_uri))
    return task


def build_pipeline(default_devices: Sequence[str], tracking_uri: str = DEFAULT_TRACKING_URI, image: str = IMAGE,
                   overrides: Sequence[str] = (), stages: Sequence[Stage] = STAGES):
    """The `compress-nightly` pipeline function; `default_devices` is the default of its `devices` parameter."""
    check_table(stages)  # each stage reads only stages before it, so table order is a topological order
    components = make_components(image, overrides, stages)
    key = dsl.PIPELINE_JOB_ID_PLACEHOLDER  # nests every stage's MLflow run under this KFP run

    def step(stage: Stage, tasks: dict[str, dsl.PipelineTask], **device) -> None:
        inputs = {input_name(up): tasks[up].outputs["output_dir"] for up in stage.reads}
        task = components[stage.name](pipeline_key=key, **device, **inputs)
        tasks[stage.name] = _configure(task, stage, tracking_uri)

    summary = make_summary_component(image, overrides)

    @dsl.pipeline(name=PIPELINE_NAME, description=__doc__.splitlines()[0])
    def compress_nightly(devices: list = list(default_devices)):
        cpu, memory = SUMMARY_RESOURCES
        last = (summary(pipeline_key=key, devices=devices).set_caching_options(False)
                .set_cpu_request(cpu).set_cpu_limit(cpu).set_memory_request(memory).set_memory_limit(memory)
                .set_env_variable("MLFLOW_TRACKING_URI", tracking_uri))
        with dsl.ExitHandler(last, name="stages"):  # the summary runs after them, whether they failed or not
            tasks: dict[str, dsl.PipelineTask] = {}
            for stage in stages:
                if not stage.per_device:
                    step(stage, tasks)
            per_device = [stage for stage in stages if stage.per_device]
            if per_device:
                with dsl.ParallelFor(devices, name="per-device") as device:
                    for stage in per_device:
                        step(stage, tasks, device=device)

    return compress_nightly


def pool_devices(overrides: Sequence[str] = ()) -> list[str]:
    """The devices a run covers by default: `profile.devices`, else the whole pool (as the Airflow DAG)."""
    from components.config import load_params
    from components.devices.pool import chosen

    return [d.name for d in chosen(load_params(PROJECT_ROOT / "params.yaml", overrides))]


def compile_pipeline(output: Path = DEFAULT_OUTPUT, tracking_uri: str = DEFAULT_TRACKING_URI, image: str = IMAGE,
                     overrides: Sequence[str] = (), stages: Sequence[Stage] = STAGES) -> Path:
    """Compile the pipeline to `output`; the overrides are checked against params.yaml first."""
    pipeline = build_pipeline(pool_devices(overrides), tracking_uri, image, overrides, stages)
    compiler.Compiler().compile(pipeline, str(output))
    return output


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Compile the compress-nightly KFP pipeline spec.")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="where to write the YAML "
                   "(default: the committed infra/kfp/compress_nightly.yaml)")
    p.add_argument("--tracking-uri", default=DEFAULT_TRACKING_URI,
                   help=f"MLFLOW_TRACKING_URI of every task (default: {DEFAULT_TRACKING_URI})")
    p.add_argument("--image", default=IMAGE, help=f"the project image (default: {IMAGE})")
    p.add_argument("-p", "--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="a params override given to every stage (repeatable), as `python -m components -p`")
    args = p.parse_args(argv)
    from components.config import ConfigError

    try:
        path = compile_pipeline(args.output, args.tracking_uri, args.image, args.overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{PIPELINE_NAME}: compiled to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
