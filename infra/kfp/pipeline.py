"""The nightly pipeline as a Kubeflow Pipelines (KFP v2) spec: one container component per stage.

The same graph as dags/compress_nightly.py and dvc.yaml: ingest -> train;
per device (a `dsl.ParallelFor` over the pipeline parameter `devices`)
profile -> fit_latency -> compress (also after train) -> validate -> register.
Each component runs the project image with `python -m components <stage>`, the
command DVC and the Makefile run, so Kubeflow stays a logic-free shell.

Data moves between tasks as KFP artifacts. Each artifact mirrors one folder of
params.yaml (`ingest.output_dir`, `profile.report_dir`, ...) and a task points
the params paths it reads and writes at its artifacts with `-p
section.key=<artifact path>`. Per-device stages write `<artifact>/<device>/`,
exactly as `data/profile/<device>/` in the repository, because compress,
validate and register find a device's latency model, compressed model and
report as `<stage>.output_dir/<device>` and have no flag for another folder;
`--output-dir`/`--input-dir` would make the artifact the device folder itself.

Compile-time settings (the MLflow tracking URI, params overrides) are baked
into the spec: kfp 2.16 cannot feed a pipeline parameter into an environment
variable, and `-p` takes one `section.key=value` per flag, so a run-time list
parameter has nowhere to go (see infra/kfp/README.md). Run `python
infra/kfp/pipeline.py` after changing this file; tests/static/test_kfp.py
checks that infra/kfp/compress_nightly.yaml is a fresh compile.
"""

# No `from __future__ import annotations`: kfp reads the components' annotations as types.
import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from kfp import compiler, dsl

PIPELINE_NAME = "compress-nightly"
IMAGE = "iot-compress/pipeline:0.1.0"  # docker/pipeline.Dockerfile; the tag is the package version
DEFAULT_OUTPUT = Path(__file__).with_name("compress_nightly.yaml")
PROJECT_ROOT = Path(__file__).resolve().parents[2]
# The in-cluster MLflow service (infra/k8s). It serves artifacts itself, so tasks need no credentials.
DEFAULT_TRACKING_URI = "http://mlflow:5000"

# Per stage: CPUs and memory, requested and capped alike. Whole CPUs with
# request == limit are what the kubelet's static CPU manager needs to give a
# pod exclusive cores, which profile and validate time on. CPUs follow the
# threads params.yaml and the device pool use (train.threads, compress.threads,
# at most 2 threads per device); memory leaves room for TensorFlow (~0.7 GB
# imported) in profile's and validate's conversions.
RESOURCES = {
    "ingest": ("2", "4G"),
    "train": ("2", "4G"),
    "profile": ("2", "4G"),
    "fit_latency": ("1", "2G"),
    "compress": ("2", "4G"),
    "validate": ("2", "6G"),
    "register": ("1", "2G"),
}
# Stages whose result is not a function of their inputs, so KFP must never
# serve a cached one: ingest reads the data root (KFP cannot hash it),
# profile and validate time the device now, register writes to the registry.
UNCACHED = frozenset({"ingest", "profile", "validate", "register"})
# As the Airflow DAG: 2 retries, 5 minutes apart, doubling. A retry starts a
# fresh pod with empty outputs. A stage's own errors (bad data, an unknown
# device) fail the same way again, so retries are for lost pods and flaky services.
RETRIES, RETRY_BACKOFF, RETRY_FACTOR = 2, "300s", 2.0


def _flags(overrides: Sequence[str], paths: dict[str, str]) -> list[str]:
    """`-p` flags: the compile-time overrides, then the artifact paths (last, so they win)."""
    items = [*overrides, *(f"{key}={path}" for key, path in paths.items())]
    return [arg for item in items for arg in ("-p", item)]


def _spec(stage: str, args: list, image: str) -> dsl.ContainerSpec:
    return dsl.ContainerSpec(image=image, command=["python", "-m", "components", stage], args=args)


def make_components(image: str = IMAGE, overrides: Sequence[str] = ()) -> dict[str, Callable]:
    """One container component per stage, named after it, each running `python -m components <stage>`.

    Made per compile rather than at import, so the image and the overrides are
    arguments and importing this module does no work.
    """

    @dsl.container_component
    def ingest(pipeline_key: str, output_dir: dsl.Output[dsl.Artifact], report_dir: dsl.Output[dsl.Artifact]):
        """Read the raw data set, check it, cut windows and split users (components/ingest.py)."""
        return _spec("ingest", ["--pipeline-key", pipeline_key, *_flags(overrides, {
            "ingest.output_dir": output_dir.path, "ingest.report_dir": report_dir.path})], image)

    @dsl.container_component
    def train(pipeline_key: str, ingest_dir: dsl.Input[dsl.Artifact], output_dir: dsl.Output[dsl.Artifact],
              report_dir: dsl.Output[dsl.Artifact]):
        """Train the baseline on ingest's windows (components/train.py)."""
        return _spec("train", ["--pipeline-key", pipeline_key, *_flags(overrides, {
            "ingest.output_dir": ingest_dir.path, "train.output_dir": output_dir.path,
            "train.report_dir": report_dir.path})], image)

    @dsl.container_component
    def profile(device: str, pipeline_key: str, output_dir: dsl.Output[dsl.Artifact],
                report_dir: dsl.Output[dsl.Artifact]):
        """Time sampled layers and whole models on one device (components/profile.py)."""
        return _spec("profile", ["--device", device, "--pipeline-key", pipeline_key, *_flags(overrides, {
            "profile.output_dir": output_dir.path, "profile.report_dir": report_dir.path})], image)

    @dsl.container_component
    def fit_latency(device: str, pipeline_key: str, profile_dir: dsl.Input[dsl.Artifact],
                    output_dir: dsl.Output[dsl.Artifact], report_dir: dsl.Output[dsl.Artifact]):
        """Fit the device's latency model from its profile (components/fit_latency.py)."""
        return _spec("fit_latency", ["--device", device, "--pipeline-key", pipeline_key, *_flags(overrides, {
            "profile.output_dir": profile_dir.path, "fit_latency.output_dir": output_dir.path,
            "fit_latency.report_dir": report_dir.path})], image)

    @dsl.container_component
    def compress(device: str, pipeline_key: str, ingest_dir: dsl.Input[dsl.Artifact],
                 train_dir: dsl.Input[dsl.Artifact], profile_dir: dsl.Input[dsl.Artifact],
                 fit_latency_dir: dsl.Input[dsl.Artifact], output_dir: dsl.Output[dsl.Artifact],
                 report_dir: dsl.Output[dsl.Artifact]):
        """Compress the baseline for the device under its latency model (components/compress.py).

        The profile table is read too: the refit rounds add to it what the search visited.
        """
        return _spec("compress", ["--device", device, "--pipeline-key", pipeline_key, *_flags(overrides, {
            "ingest.output_dir": ingest_dir.path, "train.output_dir": train_dir.path,
            "profile.output_dir": profile_dir.path, "fit_latency.output_dir": fit_latency_dir.path,
            "compress.output_dir": output_dir.path, "compress.report_dir": report_dir.path})], image)

    @dsl.container_component
    def validate(device: str, pipeline_key: str, ingest_dir: dsl.Input[dsl.Artifact],
                 train_dir: dsl.Input[dsl.Artifact], fit_latency_dir: dsl.Input[dsl.Artifact],
                 compress_dir: dsl.Input[dsl.Artifact], output_dir: dsl.Output[dsl.Artifact],
                 report_dir: dsl.Output[dsl.Artifact]):
        """Export both models, run them on the device and apply the gates (components/validate.py)."""
        return _spec("validate", ["--device", device, "--pipeline-key", pipeline_key, *_flags(overrides, {
            "ingest.output_dir": ingest_dir.path, "train.output_dir": train_dir.path,
            "fit_latency.output_dir": fit_latency_dir.path, "compress.output_dir": compress_dir.path,
            "validate.output_dir": output_dir.path, "validate.report_dir": report_dir.path})], image)

    @dsl.container_component
    def register(device: str, pipeline_key: str, validate_dir: dsl.Input[dsl.Artifact],
                 validate_report_dir: dsl.Input[dsl.Artifact]):
        """Register the device's model in MLflow if it passed every gate (components/register.py).

        The report names the exported files by absolute path under
        `validate_dir`; KFP mounts an artifact at the same local path in every
        pod, so passing it makes those files present here.
        """
        return _spec("register", ["--device", device, "--pipeline-key", pipeline_key, *_flags(overrides, {
            "validate.output_dir": validate_dir.path, "validate.report_dir": validate_report_dir.path})], image)

    return {"ingest": ingest, "train": train, "profile": profile, "fit_latency": fit_latency, "compress": compress,
            "validate": validate, "register": register}


def _configure(task: dsl.PipelineTask, stage: str, tracking_uri: str) -> dsl.PipelineTask:
    cpu, memory = RESOURCES[stage]
    (task.set_cpu_request(cpu).set_cpu_limit(cpu).set_memory_request(memory).set_memory_limit(memory)
     .set_retry(RETRIES, RETRY_BACKOFF, RETRY_FACTOR).set_caching_options(stage not in UNCACHED)
     .set_env_variable("MLFLOW_TRACKING_URI", tracking_uri))
    return task


def build_pipeline(default_devices: Sequence[str], tracking_uri: str = DEFAULT_TRACKING_URI, image: str = IMAGE,
                   overrides: Sequence[str] = ()):
    """The `compress-nightly` pipeline function; `default_devices` is the default of its `devices` parameter."""
    c = make_components(image, overrides)
    key = dsl.PIPELINE_JOB_ID_PLACEHOLDER  # nests every stage's MLflow run under this KFP run

    def step(stage: str, **inputs) -> dsl.PipelineTask:
        return _configure(c[stage](pipeline_key=key, **inputs), stage, tracking_uri)

    @dsl.pipeline(name=PIPELINE_NAME, description=__doc__.splitlines()[0])
    def compress_nightly(devices: list = list(default_devices)):
        ingest = step("ingest")
        train = step("train", ingest_dir=ingest.outputs["output_dir"])
        with dsl.ParallelFor(devices, name="per-device") as device:
            profile = step("profile", device=device)
            fit = step("fit_latency", device=device, profile_dir=profile.outputs["output_dir"])
            common = dict(device=device, ingest_dir=ingest.outputs["output_dir"],
                          train_dir=train.outputs["output_dir"], fit_latency_dir=fit.outputs["output_dir"])
            compressed = step("compress", profile_dir=profile.outputs["output_dir"], **common)
            validated = step("validate", compress_dir=compressed.outputs["output_dir"], **common)
            step("register", device=device, validate_dir=validated.outputs["output_dir"],
                 validate_report_dir=validated.outputs["report_dir"])

    return compress_nightly


def pool_devices(overrides: Sequence[str] = ()) -> list[str]:
    """The devices a run covers by default: `profile.devices`, else the whole pool (as the Airflow DAG)."""
    from components.config import load_params
    from components.devices.pool import chosen

    return [d.name for d in chosen(load_params(PROJECT_ROOT / "params.yaml", overrides))]


def compile_pipeline(output: Path = DEFAULT_OUTPUT, tracking_uri: str = DEFAULT_TRACKING_URI, image: str = IMAGE,
                     overrides: Sequence[str] = ()) -> Path:
    """Compile the pipeline to `output`; the overrides are checked against params.yaml first."""
    pipeline = build_pipeline(pool_devices(overrides), tracking_uri, image, overrides)
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
