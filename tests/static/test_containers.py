"""Static checks of docker/, the compose stacks and infra/k8s/.

No Docker engine or cluster runs on the development machines, so a broken
image, compose file or manifest would otherwise surface only at deploy time.
The checkers below are small re-implementations of the rules that matter here
(hadolint's DL codes where one exists; the Compose Specification's structure,
since no installed package ships its JSON schema; the Kubernetes API's field
names from the `kubernetes` client's models). Each rule is also fed a bad
example, so a checker that silently stops reporting fails too.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER_DIR = ROOT / "docker"
K8S_DIR = ROOT / "infra" / "k8s"
COMPOSE_FILES = ("compose.yaml", "compose.device.yaml")
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
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


@functools.lru_cache(maxsize=None)
def _parsed(path: Path) -> tuple:
    return tuple(doc for doc in yaml.load_all(path.read_text(), Loader=LOADER) if doc is not None)


def read_yaml(path: Path) -> list:
    """The documents of a YAML file, parsed once per session; callers get their own copy to change."""
    return copy.deepcopy(list(_parsed(path)))


def image_problem(ref: str) -> str | None:
    """Why `ref` does not name one exact release (a rebuild could pull something else), or None."""
    if "$" in ref:
        return f"{ref}: the image is interpolated, so what runs depends on the environment"
    name, _, digest = ref.partition("@")
    if digest:
        return None if re.fullmatch(r"sha256:[0-9a-f]{64}", digest) else f"{ref}: malformed digest"
    last = name.rsplit("/", 1)[-1]
    if ":" not in last:
        return f"{ref}: no tag, which means latest (DL3006)"
    tag = last.split(":", 1)[1]
    if tag == "latest":
        return f"{ref}: tag latest (DL3007)"
    two_part = last.split(":", 1)[0] in TWO_PART_RELEASES and re.fullmatch(r"\d+\.\d+(-[\w.-]+)?", tag)
    if not (EXACT_TAG.fullmatch(tag) or two_part):
        return f"{ref}: tag {tag!r} is not an exact version (x.y.z)"
    return None


# --- Dockerfiles ------------------------------------------------------------

@dataclass(frozen=True)
class Instruction:
    line: int
    keyword: str  # upper case; SYNTAX for the `# syntax=` parser directive
    args: str


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined; comments dropped, also those inside a continuation."""
    instructions: list[Instruction] = []
    parts: list[str] = []
    start = 0
    in_directives = True
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        directive = re.fullmatch(r"#\s*(syntax|escape|check)\s*=\s*(\S+)", line, re.IGNORECASE)
        if in_directives and directive:
            instructions.append(Instruction(number, directive[1].upper(), directive[2]))
            continue
        in_directives = False
        if line.startswith("#") or (not line and not parts):
            continue
        if not parts:
            start = number
        continued = line.endswith("\\")
        parts.append(line[:-1].strip() if continued else line)
        if continued:
            continue
        keyword, _, args = " ".join(p for p in parts if p).partition(" ")
        instructions.append(Instruction(start, keyword.upper(), args.strip()))
        parts = []
    if parts:
        raise ValueError(f"line {start}: a continuation runs past the end of the file")
    return instructions


def expand(text: str, variables: dict[str, str]) -> str:
    """Substitute $VAR / ${VAR} / ${VAR:-default} as the builder would; unknown names stay."""
    def one(match: re.Match) -> str:
        name = match[1] or match[3]
        if name in variables:
            return variables[name]
        return match[2][2:] if match[2] and match[2].startswith(":-") else match[0]
    return re.sub(r"\$\{(\w+)(:?[-+?][^}]*)?\}|\$(\w+)", one, text)


def _assignments(args: str) -> dict[str, str]:
    """`ENV A=1 B=2` (or the legacy `ENV A 1`) as a dict."""
    tokens = shlex.split(args)
    if tokens and "=" not in tokens[0]:
        return {tokens[0]: " ".join(tokens[1:])}
    return dict(token.split("=", 1) for token in tokens)


def dockerignore_patterns(root: Path = ROOT) -> list[str]:
    path = root / ".dockerignore"
    if not path.exists():
        return []
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def _glob_regex(pattern: str) -> re.Pattern:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        else:
            out += {"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i]))
            i += 1
    return re.compile(out)


def dockerignored(relative: str, patterns: list[str]) -> bool:
    """Whether the build context leaves `relative` out (a folder's exclusion covers what is inside)."""
    parts = Path(relative).parts
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    excluded = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        regex = _glob_regex(pattern.lstrip("!").strip("/"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            excluded = not negated
    return excluded


def _commands(script: str) -> list[list[str]]:
    """The simple commands of a RUN line, split at && || ; and |."""
    commands = []
    for part in re.split(r"&&|\|\||;|\|", script):
        try:
            tokens = shlex.split(part)
        except ValueError:  # a quote spans a separator: good enough for the rules below
            tokens = part.split()
        if tokens:
            commands.append(tokens)
    return commands


PIP_VALUE_OPTIONS = {"-r", "--requirement", "-c", "--constraint", "-e", "--editable", "-i", "--index-url",
                     "--extra-index-url", "-f", "--find-links", "--python", "-p", "--target", "--prefix",
                     "--index-strategy", "--platform", "--python-version"}


def _unpinned(args: list[str]) -> list[str]:
    """Requirements of a pip / uv pip install that name no exact version (paths and requirement files are fine)."""
    loose, skip = [], False
    for token in args:
        if skip:
            skip = False
        elif token in PIP_VALUE_OPTIONS:
            skip = True
        elif token.startswith("-"):
            continue
        elif "==" not in token and not token.startswith((".", "/")):
            loose.append(token)
    return loose


def _lint_run(script: str, env: dict[str, str]) -> list[tuple[str, str]]:
    problems = []
    commands = _commands(script)
    for tokens in commands:
        if tokens[0] in ("apt-get", "apt") and "install" in tokens:
            if not {"-y", "--yes", "-qq"} & set(tokens):
                problems.append(("DL3014", "apt-get install without -y"))
            # Package versions are not pinned on purpose (hadolint DL3008): Debian
            # drops superseded versions from its mirror, so exact pins break
            # rebuilds; the base image's tag pins the release instead.
            if "--no-install-recommends" not in tokens:
                problems.append(("DL3015", "apt-get install without --no-install-recommends"))
            if not any(t[:2] in (["apt-get", "update"], ["apt", "update"]) for t in commands):
                problems.append(("DL3009", "apt-get install without apt-get update in the same RUN (stale lists)"))
            if "/var/lib/apt/lists/*" not in script:
                problems.append(("DL3009", "the apt lists are not removed (rm -rf /var/lib/apt/lists/*)"))
        pip = next((i for i in range(len(tokens) - 1)
                    if re.fullmatch(r"pip3?(\.\d+)?", Path(tokens[i]).name) and tokens[i + 1] == "install"), None)
        if pip is not None:
            uv = pip > 0 and Path(tokens[pip - 1]).name == "uv"
            flag, variable = ("--no-cache", "UV_NO_CACHE") if uv else ("--no-cache-dir", "PIP_NO_CACHE_DIR")
            if flag not in tokens and env.get(variable, "").lower() not in ("1", "true", "yes", "on"):
                problems.append(("DL3042", f"{'uv ' if uv else ''}pip install without {flag}"))
            loose = _unpinned(tokens[pip + 2:])
            if loose:
                problems.append(("DL3013", f"unpinned requirements {loose}"))
        if tokens[0] == "cd":
            problems.append(("DL3003", "use WORKDIR instead of cd"))
        if tokens[0] == "sudo":
            problems.append(("DL3004", "sudo in a RUN"))
    return problems


def _lint_copy(args: str, stages: set[str], context: Path, patterns: list[str]) -> list[tuple[str, str]]:
    if args.startswith("["):
        tokens = json.loads(args)
    else:
        tokens = shlex.split(args)
    flags = [t for t in tokens if t.startswith("--")]
    paths = [t for t in tokens if not t.startswith("--")]
    source_stage = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
    if source_stage is not None:
        problem = None if source_stage in stages else image_problem(source_stage)
        return [("DL3022", f"COPY --from {problem}")] if problem else []
    problems = []
    for source in paths[:-1]:
        relative = source.rstrip("/") or "."
        found = list(context.glob(relative)) if any(c in relative for c in "*?[") else [context / relative]
        if not any(p.exists() for p in found):
            problems.append(("COPY", f"source {source} does not exist in the build context"))
        elif dockerignored(relative, patterns):
            problems.append(("COPY", f"source {source} is excluded by .dockerignore"))
    return problems


def lint_dockerfile(text: str, context: Path = ROOT, patterns: list[str] | None = None) -> list[str]:
    """Findings as 'CODE line N: message'; none for a clean Dockerfile."""
    patterns = dockerignore_patterns(context) if patterns is None else patterns
    findings: list[str] = []
    global_args: dict[str, str] = {}
    stage_names: set[str] = set()
    env: dict[str, str] = {}
    base, user, seen_from = None, None, False
    for ins in parse_dockerfile(text):
        problems: list[tuple[str, str]] = []
        if ins.keyword == "SYNTAX":
            problem = image_problem(ins.args)
            problems += [("DL3007", f"syntax directive {problem}")] if problem else []
        elif ins.keyword == "FROM":
            words = expand(ins.args, global_args).split()
            image = next(w for w in words if not w.startswith("--"))
            if image not in stage_names and image != "scratch" and (problem := image_problem(image)):
                problems.append(("DL3006", problem))
            if len(words) >= 3 and words[-2].upper() == "AS":
                stage_names.add(words[-1])
            base, user, seen_from, env = image, None, True, {}
        elif ins.keyword == "ARG":  # in a stage, a bare ARG takes the global default
            name, has_default, default = (part.strip() for part in ins.args.partition("="))
            value = default.strip('"') if has_default else global_args.get(name, "")
            (env if seen_from else global_args)[name] = value
        elif ins.keyword == "ENV":
            env.update(_assignments(ins.args))
        elif ins.keyword == "USER":
            user = expand(ins.args, env)
        elif ins.keyword in ("CMD", "ENTRYPOINT"):
            try:
                ok = isinstance(parsed := json.loads(ins.args), list) and all(isinstance(a, str) for a in parsed)
            except json.JSONDecodeError:
                ok = False
            problems += [] if ok else [("DL3025", f"{ins.keyword} in shell form: signals never reach the process")]
        elif ins.keyword == "ADD":
            problems.append(("DL3020", "ADD: use COPY for files and folders"))
        elif ins.keyword == "WORKDIR" and not expand(ins.args, env).startswith("/"):
            problems.append(("DL3000", "WORKDIR is not absolute"))
        elif ins.keyword == "COPY":
            problems += _lint_copy(expand(ins.args, env), stage_names, context, patterns)
        elif ins.keyword == "RUN":
            problems += _lint_run(expand(ins.args, env), env)
        findings += [f"{code} line {ins.line}: {message}" for code, message in problems]
    if user is None and base not in OWN_IMAGES:
        findings.append("DL3002: the final stage sets no USER, so it runs as root")
    elif user is not None and user.split(":")[0] in ("root", "0"):
        findings.append("DL3002: the last USER is root")
    return findings


def _image_env(instructions: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in instructions:
        env.update(_assignments(ins.args) if ins.keyword == "ENV" else {})
    return env


def _dockerfiles() -> list[Path]:
    return sorted(DOCKER_DIR.glob("*.Dockerfile"))


def test_every_dockerfile_builds_a_known_image():
    assert {p.name for p in _dockerfiles()} == set(BUILT_IMAGES)


@pytest.mark.parametrize("name", sorted(BUILT_IMAGES))
def test_dockerfile_passes_the_rules(name):
    assert lint_dockerfile((DOCKER_DIR / name).read_text()) == []


def test_airflow_image_builds_on_the_pipeline_image_and_serves_the_cluster_policy():
    instructions = parse_dockerfile((DOCKER_DIR / "airflow-worker.Dockerfile").read_text())
    assert [i.args for i in instructions if i.keyword == "FROM"] == [f"{BUILT_IMAGES['pipeline.Dockerfile']}:{VERSION}"]
    assert "/app/infra/airflow" in _image_env(instructions)["PYTHONPATH"].split(":")
    assert (ROOT / "infra/airflow/airflow_local_settings.py").exists()


def test_pipeline_image_installs_the_lock_and_keeps_tool_homes_in_the_work_dir():
    instructions = parse_dockerfile((DOCKER_DIR / "pipeline.Dockerfile").read_text())
    runs = " ".join(i.args for i in instructions if i.keyword == "RUN")
    copies = " ".join(i.args for i in instructions if i.keyword == "COPY")
    assert "-r /tmp/requirements.lock" in runs and "requirements.lock" in copies
    for folder in ("components/", "dags/", "infra/"):
        assert folder in copies
    for file in ("params.yaml", "dvc.yaml", "pyproject.toml"):
        assert file in copies
    env = _image_env(instructions)
    workdirs = [i.args for i in instructions if i.keyword == "WORKDIR"]
    for home in ("AIRFLOW_HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "KERAS_HOME",
                 "DVC_SITE_CACHE_DIR", "HOME"):
        assert env[home].startswith(workdirs[-1]), home
    assert env["MLFLOW_DISABLE_TELEMETRY"] == "true" and env["DVC_NO_ANALYTICS"] == "1"
    assert json.loads(next(i.args for i in instructions if i.keyword == "ENTRYPOINT"))[-3:] == \
        ["python", "-m", "components"]


def test_pinned_versions_agree_with_the_lock_and_the_makefile():
    lock = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)", (ROOT / "requirements.lock").read_text(), re.MULTILINE))
    mlflow_runs = " ".join(i.args for i in parse_dockerfile((DOCKER_DIR / "mlflow.Dockerfile").read_text())
                           if i.keyword == "RUN")
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


GOOD = "FROM python:3.11.14-slim-bookworm\nUSER 10001\nCMD [\"python\"]\n"


@pytest.mark.parametrize(("code", "dockerfile"), [
    ("DL3006", "FROM python\nUSER app\n"),
    ("DL3006", "FROM python:3.11-slim\nUSER app\n"),
    ("DL3006", "ARG BASE=python:latest\nFROM ${BASE}\nUSER app\n"),
    ("DL3007", "# syntax=docker/dockerfile:latest\n" + GOOD),
    ("DL3002", "FROM python:3.11.14-slim-bookworm\n"),
    ("DL3002", GOOD + "USER root\n"),
    ("DL3025", GOOD + "ENTRYPOINT python -m components\n"),
    ("DL3020", GOOD + "ADD params.yaml /app/\n"),
    ("DL3000", GOOD + "WORKDIR app\n"),
    ("DL3003", GOOD + "RUN cd /app && make\n"),
    ("DL3014", GOOD + "RUN apt-get update && apt-get install --no-install-recommends tini "
                      "&& rm -rf /var/lib/apt/lists/*\n"),
    ("DL3015", GOOD + "RUN apt-get update && apt-get install -y tini && rm -rf /var/lib/apt/lists/*\n"),
    ("DL3009", GOOD + "RUN apt-get update \\\n && apt-get install -y --no-install-recommends tini\n"),
    ("DL3042", GOOD + "RUN pip install mlflow==3.17.2\n"),
    ("DL3042", GOOD + "RUN uv pip install --system mlflow==3.17.2\n"),
    ("DL3013", GOOD + "RUN pip install --no-cache-dir mlflow\n"),
    ("DL3013", GOOD + "ARG V\nRUN pip install --no-cache-dir \"uv>=${V}\"\n"),
    ("DL3022", GOOD + "COPY --from=ghcr.io/astral-sh/uv /uv /bin/uv\n"),
    ("COPY", GOOD + "COPY no-such-folder/ /app/\n"),
    ("COPY", GOOD + "COPY .venv/ /app/.venv/\n"),
])
def test_a_bad_dockerfile_is_reported(code, dockerfile):
    findings = lint_dockerfile(dockerfile)
    assert any(f.startswith(code) for f in findings), findings


def test_a_clean_dockerfile_passes_and_continuations_and_comments_parse():
    text = (GOOD + "ENV PIP_NO_CACHE_DIR=1\n"
            "RUN apt-get update \\\n# a comment inside the continuation\n"
            " && apt-get install -y --no-install-recommends tini \\\n && rm -rf /var/lib/apt/lists/*\n"
            "COPY --from=python:3.11.14-slim-bookworm /usr/local/bin/python3 /tmp/\n"
            "RUN pip install uv==0.13.9 && uv pip install --no-cache -r requirements.lock -e .\n")
    assert lint_dockerfile(text) == []
    run = [i for i in parse_dockerfile(text) if i.keyword == "RUN"][0]
    assert run.line == 5 and "comment" not in run.args and run.args.endswith("/var/lib/apt/lists/*")
    with pytest.raises(ValueError, match="continuation"):
        parse_dockerfile("FROM x:1.0.0\nRUN true \\\n")


# --- .dockerignore and docker/.env ------------------------------------------

def test_dockerignore_keeps_big_and_local_folders_out_of_the_build_context():
    patterns = dockerignore_patterns()
    for path in (".venv/bin/python", ".state/airflow", "data/ingest", "reports/x.html", ".git/HEAD",
                 "components/__pycache__/x.pyc", "docker/.env"):
        assert dockerignored(path, patterns), path
    for path in ("components/config.py", "requirements.lock", "docker/airflow-entrypoint.sh", "README.md"):
        assert not dockerignored(path, patterns), path
    assert dockerignored("a/b", ["a"]) and not dockerignored("a/b", ["a", "!a/b"])


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

TOP_LEVEL_KEYS = {"name", "services", "networks", "volumes", "configs", "secrets", "include", "models"}
SERVICE_KEYS = set("""
annotations attach blkio_config build cap_add cap_drop cgroup cgroup_parent command configs container_name
cpu_count cpu_percent cpu_period cpu_quota cpu_rt_period cpu_rt_runtime cpu_shares cpus cpuset credential_spec
depends_on deploy develop device_cgroup_rules devices dns dns_opt dns_search domainname entrypoint env_file
environment expose extends external_links extra_hosts gpus group_add healthcheck hostname image init ipc
isolation label_file labels links logging mac_address mem_limit mem_reservation mem_swappiness memswap_limit
network_mode networks oom_kill_disable oom_score_adj pid pids_limit platform ports post_start pre_stop
privileged profiles provider pull_policy read_only restart runtime scale secrets security_opt shm_size
stdin_open stop_grace_period stop_signal storage_opt sysctls tmpfs tty ulimits use_api_socket user userns_mode
uts volumes volumes_from working_dir
""".split())
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
BUILD_KEYS = {"context", "dockerfile", "args", "target", "additional_contexts", "cache_from", "cache_to", "labels",
              "network", "platforms", "secrets", "ssh", "tags", "pull", "no_cache", "shm_size", "extra_hosts"}
# Services whose ports this stack means to publish (UIs, and the backends device workers reach).
PUBLISHED = {"postgres", "redis", "minio", "mlflow", "airflow-api-server"}


def resolve_defaults(text: str) -> str:
    """Interpolate as compose would with nothing set: ${A:-x} -> x, ${A} and ${A:?m} -> <A>."""
    return re.sub(r"\$\{(\w+)(?::?-([^}]*))?(?::?\?[^}]*)?\}", lambda m: m[2] if m[2] is not None else f"<{m[1]}>",
                  text)


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


def _environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def _secret_findings(doc: dict) -> list[str]:
    """Credentials must come from the environment (${VAR}), never be written in the file."""
    findings = []
    for text in _strings(doc):
        for match in URL_CREDENTIALS.finditer(text):
            if not match[1].startswith("${"):
                findings.append(f"a URL carries a literal password: {text}")
        if re.search(r"\$(?!\$|\{\w+(:?[-?][^}]*)?\}|\w)", text.replace("$$", "")):
            findings.append(f"malformed interpolation in {text!r}")
    for name, service in doc.get("services", {}).items():
        for key, value in _environment(service).items():
            if SECRET_NAME.search(key) and value and not value.startswith("${"):
                findings.append(f"{name}: {key} is a literal secret; interpolate it from docker/.env")
        command = service.get("command") or []
        for flag, value in zip(command, command[1:]) if isinstance(command, list) else ():
            if re.match(r"-+\w*(pass|secret|auth)", str(flag), re.IGNORECASE) and not str(value).startswith("${"):
                findings.append(f"{name}: {flag} is given a literal secret")
    return findings


def _port_findings(name: str, service: dict, published: set[str]) -> list[str]:
    findings = []
    ports = service.get("ports") or []
    if ports and name not in published:
        findings.append(f"{name}: publishes ports it is not meant to publish")
    for port in ports:
        if isinstance(port, dict):  # the long syntax
            port = f"{port.get('host_ip', '')}:{port.get('published', '')}:{port.get('target', '')}".lstrip(":")
        parts = resolve_defaults(str(port)).split(":")
        if len(parts) != 3:
            findings.append(f"{name}: port {port!r} is published on every interface; bind a host address")
        elif parts[0] not in ("127.0.0.1", "[::1]"):
            findings.append(f"{name}: port {port!r} binds {parts[0]} by default, not loopback")
    return findings


def _volume_findings(name: str, service: dict, declared: set[str], compose_dir: Path) -> list[str]:
    findings = []
    for volume in service.get("volumes") or []:
        source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source", "")
        if source.startswith((".", "/")):
            if not (compose_dir / source).exists():
                findings.append(f"{name}: bind-mount source {source} does not exist")
        elif "$" not in source and source not in declared:
            findings.append(f"{name}: named volume {source} is not declared under volumes:")
    return findings


def _depends_findings(name: str, service: dict, services: dict) -> list[str]:
    findings = []
    depends = service.get("depends_on") or {}
    if isinstance(depends, list):
        return [f"{name}: depends_on without conditions starts it before its dependencies are ready"]
    for target, spec in depends.items():
        if target not in services:
            findings.append(f"{name}: depends on unknown service {target}")
            continue
        condition = (spec or {}).get("condition")
        if condition not in CONDITIONS:
            findings.append(f"{name}: depends on {target} with condition {condition!r}")
        if condition == "service_healthy" and "healthcheck" not in services[target]:
            findings.append(f"{name}: waits for {target} to be healthy, but it has no healthcheck")
        if condition == "service_completed_successfully" and services[target].get("restart", "no") != "no":
            findings.append(f"{name}: waits for {target} to complete, but it restarts")
        if set(services[target].get("profiles") or []) - set(service.get("profiles") or []):
            findings.append(f"{name}: depends on {target}, which only runs with a profile")
    return findings


def _image_findings(name: str, service: dict, compose_dir: Path) -> list[str]:
    image = service.get("image")
    if not image:
        return [f"{name}: no image, so nothing names (and pins) what it runs"]
    findings = [f"{name}: {problem}"] if (problem := image_problem(image)) else []
    if image.startswith("iot-compress/") and image not in OWN_IMAGES:
        findings.append(f"{name}: {image} is none of the images docker/ builds ({sorted(OWN_IMAGES)})")
    build = service.get("build")
    if build is not None:
        build = {"context": build} if isinstance(build, str) else build
        findings += [f"{name}: unknown build key {key}" for key in set(build) - BUILD_KEYS]
        context = compose_dir / build.get("context", ".")
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        if not context.is_dir() or not dockerfile.is_file():
            findings.append(f"{name}: build context or Dockerfile {dockerfile} missing")
        elif f"{BUILT_IMAGES.get(dockerfile.name)}:{VERSION}" != image:
            findings.append(f"{name}: {dockerfile.name} builds {BUILT_IMAGES.get(dockerfile.name)}, not {image}")
    return findings


def _healthcheck_findings(name: str, service: dict) -> list[str]:
    check = service.get("healthcheck")
    if check is None:
        long_running = str(service.get("restart", "no")) != "no"
        return [f"{name}: a long-running service without a healthcheck"] if long_running else []
    test = check.get("test")
    if not (isinstance(test, list) and test and test[0] in ("CMD", "CMD-SHELL")):
        return [f"{name}: healthcheck test must be a [CMD, ...] or [CMD-SHELL, ...] list"]
    return []


def _command(service: dict) -> list[str]:
    command = service.get("command") or []
    return command if isinstance(command, list) else shlex.split(command)


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
        env = _environment(service)
        role = _command(service)[:1]
        if role and role[0] not in AIRFLOW_ROLES:
            findings.append(f"{name}: command {role[0]!r} is not an Airflow role of the image")
        for key, prefix in AIRFLOW_NEEDS.items():
            if not env.get(key, "").startswith(prefix):
                findings.append(f"{name}: {key} must start with {prefix!r}, is {env.get(key)!r}")
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
    """Structural findings for a compose file; none for a sound one."""
    findings = [f"unknown top-level key {key}" for key in doc if key not in TOP_LEVEL_KEYS and not key.startswith("x-")]
    services = doc.get("services") or {}
    declared = set(doc.get("volumes") or {})
    for name, service in services.items():
        findings += [f"{name}: unknown key {key}" for key in service if key not in SERVICE_KEYS
                     and not key.startswith("x-")]
        findings += _image_findings(name, service, compose_dir)
        findings += _depends_findings(name, service, services)
        findings += _volume_findings(name, service, declared, compose_dir)
        findings += _port_findings(name, service, published)
        findings += _healthcheck_findings(name, service)
    return findings + _secret_findings(doc) + _airflow_findings(services)


def _load_compose(name: str) -> dict:
    return read_yaml(DOCKER_DIR / name)[0]


def test_compose_stack_is_structurally_sound():
    assert check_compose(_load_compose("compose.yaml"), published=PUBLISHED) == []


def test_device_compose_file_is_structurally_sound():
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
    ("unknown top-level key", lambda d: d.update(version="3.9")),
    ("unknown key", lambda d: d["services"]["redis"].update(healthchek={})),
    ("tag latest", lambda d: d["services"]["redis"].update(image="redis:latest")),
    ("no tag", lambda d: d["services"]["postgres"].update(image="postgres")),
    ("not an exact version", lambda d: d["services"]["postgres"].update(image="postgres:16")),
    ("none of the images", lambda d: d["services"]["mlflow"].update(image="iot-compress/mlflow:9.9.9")),
    ("Dockerfile", lambda d: d["services"]["mlflow"]["build"].update(dockerfile="docker/nope.Dockerfile")),
    ("depends on unknown", lambda d: d["services"]["mlflow"]["depends_on"].update(pg={"condition": "service_healthy"})),
    ("without conditions", lambda d: d["services"]["mlflow"].update(depends_on=["postgres"])),
    ("no healthcheck", lambda d: d["services"]["postgres"].pop("healthcheck")),
    ("not declared", lambda d: d["services"]["redis"].update(volumes=["redis-cache:/data"])),
    ("bind-mount source", lambda d: d["services"]["postgres"]["volumes"].append("./nope.sql:/x.sql:ro")),
    ("every interface", lambda d: d["services"]["mlflow"].update(ports=["5000:5000"])),
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
def test_a_broken_compose_file_is_reported(sound_stack, expected, breakage):
    breakage(sound_stack)
    findings = check_compose(sound_stack, published=PUBLISHED)
    assert any(expected in f for f in findings), findings


# --- Kubernetes -------------------------------------------------------------

KINDS = {"Namespace", "ConfigMap", "Secret", "PersistentVolumeClaim", "Deployment", "Service", "Job"}
NAMESPACE = "iot-compress"


def load_manifests(folder: Path = K8S_DIR) -> list[tuple[str, dict]]:
    return [(path.name, doc) for path in sorted(folder.glob("*.yaml")) if path.name != "kustomization.yaml"
            for doc in read_yaml(path)]


def _pod_spec(doc: dict) -> dict | None:
    return doc.get("spec", {}).get("template", {}).get("spec") if doc.get("kind") in ("Deployment", "Job") else None


def _containers(doc: dict) -> list[dict]:
    pod = _pod_spec(doc) or {}
    return pod.get("containers", []) + pod.get("initContainers", [])


def schema_findings(doc: dict) -> list[str]:
    """Fields the Kubernetes API does not know, or of the wrong type, by the client's models of the API."""
    client = pytest.importorskip("kubernetes.client")
    findings: list[str] = []

    def walk(value, type_name: str, path: str) -> None:
        if type_name.startswith("list["):
            if not isinstance(value, list):
                findings.append(f"{path}: expected a list")
                return
            for i, item in enumerate(value):
                walk(item, type_name[5:-1], f"{path}[{i}]")
        elif type_name.startswith("dict("):
            if not isinstance(value, dict):
                findings.append(f"{path}: expected a mapping")
                return
            for key, item in value.items():
                walk(item, type_name[5:-1].split(", ", 1)[1], f"{path}.{key}")
        elif type_name in ("str", "int", "bool", "float"):
            python_type = {"str": str, "int": int, "bool": bool, "float": (int, float)}[type_name]
            if not isinstance(value, python_type) or (type_name == "int" and isinstance(value, bool)):
                findings.append(f"{path}: expected {type_name}, got {value!r}")
        elif type_name != "object":
            model = getattr(client, type_name)
            if not isinstance(value, dict):
                findings.append(f"{path}: expected a {type_name} mapping")
                return
            fields = {json_name: attr for attr, json_name in model.attribute_map.items()}
            for key, item in value.items():
                if key not in fields:
                    findings.append(f"{path}.{key}: unknown field of {type_name}")
                else:
                    walk(item, model.openapi_types[fields[key]], f"{path}.{key}")

    walk(doc, f"V1{doc.get('kind')}", doc.get("kind", "?"))
    return findings


def _secret_keys_in_readme() -> dict[str, set[str]]:
    """The Secrets infra/k8s/README.md tells the operator to create, with their keys."""
    text = (K8S_DIR / "README.md").read_text()
    secrets = {}
    for block in re.split(r"(?=kubectl\b)", text):
        match = re.search(r"create secret generic (\S+)", block)
        if match:
            secrets[match[1]] = set(re.findall(r"--from-literal=([A-Za-z0-9_.-]+)=", block))
    return secrets


def _container_findings(where: str, container: dict, long_running: bool) -> list[str]:
    findings = []
    image = container.get("image", "")
    if problem := image_problem(image):
        findings.append(f"{where}: {problem}")
    if image.startswith("iot-compress/") and image not in OWN_IMAGES:
        findings.append(f"{where}: {image} is none of the images docker/ builds")
    resources = container.get("resources", {})
    for kind in ("requests", "limits"):
        if not {"cpu", "memory"} <= set(resources.get(kind, {})):
            findings.append(f"{where}: resources.{kind} must set cpu and memory")
    if long_running and "readinessProbe" not in container:
        findings.append(f"{where}: no readinessProbe")
    for variable in container.get("env", []):
        if SECRET_NAME.search(variable["name"]) and "value" in variable:
            findings.append(f"{where}: {variable['name']} has a literal value; take it from a Secret")
    if image.startswith("iot-compress/airflow:"):
        role = (container.get("args") or [None])[0]
        if role not in AIRFLOW_ROLES:
            findings.append(f"{where}: args {container.get('args')} start with no Airflow role of the image")
    return findings


def _reference_findings(name: str, doc: dict, names: dict[str, set[str]], readme: dict[str, set[str]]) -> list[str]:
    findings = []
    pod = _pod_spec(doc) or {}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for volume in volumes.values():
        claim = volume.get("persistentVolumeClaim", {}).get("claimName")
        if claim and claim not in names["PersistentVolumeClaim"]:
            findings.append(f"{name}: claim {claim} is not in the manifests")
    for container in _containers(doc):
        for mount in container.get("volumeMounts", []):
            if mount["name"] not in volumes:
                findings.append(f"{name}: mounts undeclared volume {mount['name']}")
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
    findings = []
    if doc["kind"] == "Deployment":
        selector = doc["spec"].get("selector", {}).get("matchLabels", {})
        labels = doc["spec"]["template"]["metadata"].get("labels", {})
        if not selector or selector.items() - labels.items():
            findings.append(f"{name}: selector {selector} does not match the template labels {labels}")
    if doc["kind"] == "Service":
        selector = doc["spec"].get("selector", {})
        if not any(selector and not selector.items() - labels.items() for labels in pod_labels):
            findings.append(f"{name}: Service selector {selector} matches no pod template")
    return findings


def check_manifests(manifests: list[tuple[str, dict]], readme: dict[str, set[str]] | None = None) -> list[str]:
    """Findings for a set of manifests; none for a sound one."""
    readme = _secret_keys_in_readme() if readme is None else readme
    names: dict[str, set[str]] = {kind: set() for kind in KINDS}
    for _, doc in manifests:
        names.setdefault(doc.get("kind"), set()).add(doc.get("metadata", {}).get("name"))
    pod_labels = [d["spec"]["template"]["metadata"].get("labels", {}) for _, d in manifests if _pod_spec(d)]
    findings = []
    for file, doc in manifests:
        kind, meta = doc.get("kind"), doc.get("metadata") or {}
        name = f"{file}:{kind}/{meta.get('name')}"
        if not (doc.get("apiVersion") and kind and meta.get("name")):
            findings.append(f"{name}: apiVersion, kind and metadata.name are required")
            continue
        if kind not in KINDS:
            findings.append(f"{name}: unexpected kind")
            continue
        findings += [f"{name}: {f}" for f in schema_findings(doc)]
        if kind != "Namespace" and meta.get("namespace") != NAMESPACE:
            findings.append(f"{name}: namespace is not {NAMESPACE}")
        if kind == "Secret" and (doc.get("data") or doc.get("stringData")):
            findings.append(f"{name}: a Secret with values in the repository")
        if kind == "ConfigMap":
            findings += [f"{name}: {key} looks secret" for key in doc.get("data", {}) if SECRET_NAME.search(key)]
        for container in _containers(doc):
            findings += _container_findings(f"{name}/{container.get('name')}", container, kind == "Deployment")
        findings += _reference_findings(name, doc, names, readme)
        findings += _selector_findings(name, doc, pod_labels)
    return findings


def test_manifests_are_sound():
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
    docs = [d for d in yaml.load_all(rendered.stdout, Loader=LOADER) if d]
    assert len(docs) == len(load_manifests())
    assert all(d["metadata"].get("namespace") == NAMESPACE for d in docs if d["kind"] != "Namespace")


def _deployments() -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for _, doc in load_manifests() if doc["kind"] == "Deployment"}


def _env_value(container: dict, name: str) -> str | None:
    return next((v.get("value") for v in container.get("env", []) if v["name"] == name), None)


def test_every_device_queue_has_a_worker_pinned_to_its_node():
    workers = {}
    for name, doc in _deployments().items():
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


@pytest.mark.parametrize(("expected", "breakage"), [
    ("unknown field", lambda d: d["spec"]["template"]["spec"]["containers"][0].update(imagePullPolicyy="Always")),
    ("expected str", lambda d: d["spec"]["template"]["spec"]["containers"][0]["env"][1].update(value=2)),
    ("does not match the template", lambda d: d["spec"]["selector"]["matchLabels"].update(tier="x")),
    ("resources.limits", lambda d: d["spec"]["template"]["spec"]["containers"][0]["resources"].pop("limits")),
    ("no readinessProbe", lambda d: d["spec"]["template"]["spec"]["containers"][0].pop("readinessProbe")),
    ("tag latest", lambda d: d["spec"]["template"]["spec"]["containers"][0].update(
        image="iot-compress/airflow:latest")),
    ("none of the images", lambda d: d["spec"]["template"]["spec"]["containers"][0].update(
        image="iot-compress/airflow:0.0.9")),
    ("literal value", lambda d: d["spec"]["template"]["spec"]["containers"][0]["env"].append(
        {"name": "AIRFLOW__API_AUTH__JWT_SECRET", "value": "hunter2"})),
    ("not documented", lambda d: d["spec"]["template"]["spec"]["containers"][0]["envFrom"].append(
        {"secretRef": {"name": "undocumented"}})),
    ("undeclared volume", lambda d: d["spec"]["template"]["spec"].pop("volumes")),
    ("namespace", lambda d: d["metadata"].update(namespace="default")),
    ("no Airflow role", lambda d: d["spec"]["template"]["spec"]["containers"][0].update(args=["celery", "worker"])),
])
def test_a_broken_manifest_is_reported(expected, breakage):
    doc = _sound_deployment()
    breakage(doc)
    others = [(f, d) for f, d in load_manifests() if d.get("metadata", {}).get("name") != "airflow-worker-default"]
    findings = check_manifests(others + [("broken.yaml", doc)])
    assert any(expected in f for f in findings), findings


def test_secrets_with_values_and_unknown_kinds_are_reported():
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": NAMESPACE},
              "stringData": {"password": "hunter2"}}
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "r"}}
    findings = check_manifests([("s.yaml", secret), ("r.yaml", role), ("x.yaml", {"kind": "Service"})], readme={})
    assert any("Secret with values" in f for f in findings)
    assert any("unexpected kind" in f for f in findings)
    assert any("metadata.name are required" in f for f in findings)
