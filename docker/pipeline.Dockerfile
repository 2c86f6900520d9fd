# syntax=docker/dockerfile:1.7.1
# The pipeline image, iot-compress/pipeline:<version in pyproject.toml>:
# `python -m components <stage>` with exactly the packages of requirements.lock.
# Build from the repository root:
#   docker build -f docker/pipeline.Dockerfile -t iot-compress/pipeline:0.1.0 .

# --- builder: resolve nothing, install the lock into a venv ------------------
FROM python:3.11.14-slim-bookworm AS builder

# uv: the Makefile's version; the CPU-only torch wheel (torch==2.13.0+cpu) lives
# on PyTorch's index. Every package is pinned by the lock, so taking each one
# from whichever index has that exact version cannot swap in another release.
ARG UV_VERSION=0.13.9
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN pip install --no-cache-dir "uv==${UV_VERSION}" \
 && uv venv /opt/venv --python /usr/local/bin/python3.11

COPY requirements.lock /tmp/requirements.lock
RUN uv pip install --python /opt/venv/bin/python --no-cache \
      --extra-index-url "${TORCH_INDEX_URL}" --index-strategy unsafe-best-match \
      -r /tmp/requirements.lock

# An editable install: the package resolves to /app/components, where the
# runtime stage puts the source, so code that finds params.yaml, dvc.yaml or
# its converter subprocesses next to the package keeps working.
WORKDIR /app
COPY pyproject.toml README.md ./
COPY components/ components/
RUN uv pip install --python /opt/venv/bin/python --no-cache --no-deps -e .

# --- runtime ----------------------------------------------------------------
FROM python:3.11.14-slim-bookworm

# tini as PID 1: Celery workers and the pipeline's converter and timing
# subprocesses fork children that must be reaped and must get the stop signal.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --home-dir /app/.state/home --no-create-home --shell /usr/sbin/nologin app

# Every tool home inside the work dir's ignored .state folder (as the Makefile
# does), so nothing writes to ~ and one volume on /app/.state holds it all.
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/app/.state/home \
    AIRFLOW_HOME=/app/.state/airflow \
    AIRFLOW__CORE__DAGS_FOLDER=/app/dags \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    XDG_CACHE_HOME=/app/.state/cache \
    XDG_CONFIG_HOME=/app/.state/config \
    XDG_DATA_HOME=/app/.state/share \
    KERAS_HOME=/app/.state/keras \
    MPLCONFIGDIR=/app/.state/config/matplotlib \
    DVC_SITE_CACHE_DIR=/app/.state/dvc-site \
    DVC_NO_ANALYTICS=1 \
    GX_ANALYTICS_ENABLED=false \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=1 \
    IOT_COMPRESS_DATA_ROOT=/data/datasets

COPY --from=builder /opt/venv /opt/venv

# Source owned by root and read-only to the app user; only the output folders
# are writable. The folders that volumes mount into exist already, owned by
# the app user: a runtime would create missing mount points as root.
WORKDIR /app
COPY pyproject.toml params.yaml dvc.yaml ./
COPY components/ components/
COPY dags/ dags/
COPY infra/ infra/
# Bytecode now, as the venv's was compiled at install: the source is
# read-only at run time, and every Airflow process imports it.
RUN python -m compileall -q components dags infra \
 && mkdir -p /app/.state/home /app/.state/airflow/logs /app/.state/runs /app/data /app/reports /data/datasets \
 && chown -R app:app /app/.state /app/data /app/reports

USER 10001:10001
ENTRYPOINT ["tini", "--", "python", "-m", "components"]
CMD ["pipeline"]
