# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
# Everything a run writes (venv, MLflow store, Airflow home, caches) stays in
# ignored folders of this checkout.

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
UV_VERSION := 0.13.9
STATE := $(CURDIR)/.state
# The machine's local wheel folder (it holds the CPU-only torch wheel); uv does
# not read pip's configuration, so hand it over explicitly.
FIND_LINKS ?= $(shell pip config get global.find-links 2>/dev/null || pip config get :env:.find-links 2>/dev/null)
UV_FLAGS := $(if $(FIND_LINKS),--find-links $(FIND_LINKS))

# Tool homes inside the project, so runs never touch ~/airflow, ~/.cache, ...
export AIRFLOW_HOME := $(STATE)/airflow
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export XDG_CACHE_HOME := $(STATE)/cache
export XDG_CONFIG_HOME := $(STATE)/config
export XDG_DATA_HOME := $(STATE)/share
export KERAS_HOME := $(STATE)/keras
export DVC_SITE_CACHE_DIR := $(STATE)/dvc-site
export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := false
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# The cluster policy that routes each device's mapped tasks to its queue and pool.
export PYTHONPATH := $(CURDIR)/infra/airflow$(if $(PYTHONPATH),:$(PYTHONPATH))

.PHONY: install browser run kfp-local test test-fast test-slow test-e2e test-deployment test-static lock dvc-repro airflow-test airflow-up airflow-down \
        mlflow-server mlflow-server-stop mlflow-ui benchmark images clean

install: $(VENV)/.installed

$(VENV)/.installed: requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet uv==$(UV_VERSION)
	$(UV) pip install --python $(PY) --compile-bytecode $(UV_FLAGS) -r requirements.lock
	$(UV) pip install --python $(PY) --compile-bytecode --no-deps -e .
	touch $@

# Debian's Chromium for the MLflow UI browser test (Playwright drives it; it never downloads a browser).
CHROMIUM ?= /usr/bin/chromium
browser:
	@test -x $(CHROMIUM) || { echo "installing Debian's chromium for the browser test"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; }

# Resolve requirements.in into the lock file (needs the package registry).
lock:
	test -x $(UV) || { $(PYTHON) -m venv $(VENV) && $(PY) -m pip install --quiet uv==$(UV_VERSION); }
	$(UV) pip compile requirements.in --python-version 3.11 $(UV_FLAGS) \
	  --no-emit-find-links --custom-compile-command "make lock" -o requirements.lock

# The whole pipeline on the embedded default: local files, SQLite, no server.
run: install
	$(PY) -m components pipeline

# The Kubeflow pipeline, run here with KFP's local runner (each task a subprocess): the cluster's spec minus its
# Kubernetes settings (infra/kfp/README.md).
kfp-local: install
	$(PY) infra/kfp/pipeline.py --local

# The tiers (tests/conftest.py; a test over its tier's time fails, naming the tier):
#   unit   pure logic: no subprocess, no MLflow store, no TensorFlow (~30 s)
#   static the repository's files checked by real tools (hadolint, Kubernetes and compose schemas, KFP, dvc.yaml)
#   stage  each stage once on small real data, from a pre-migrated MLflow store
# `make test` runs these three, each stage once (<= 10 min on 2 cores); CI adds `make test-slow` (the further
# cases of a stage marked slow), `make test-e2e` and `make test-deployment`.
test: install
	$(PY) -m pytest -m "not slow" tests/unit tests/static tests/stage

test-slow: install
	$(PY) -m pytest -m slow tests/unit tests/static tests/stage

# End to end: one shared quick pipeline run that the CLI, MLflow UI (a browser), registry and DVC checks read,
# plus the Airflow DAG run in-process and one run per data set.
test-e2e: install browser
	$(PY) -m pytest tests/e2e

# Deployment mode on loopback: the Airflow Celery stack on PostgreSQL + Redis, the MLflow server on
# PostgreSQL + S3 (moto_server), DVC's S3 remote (~20 min).
test-deployment: install
	$(PY) -m pytest tests/deployment

# Dockerfiles, compose, Kubernetes manifests and the KFP spec, checked without an engine (seconds).
test-static: install
	$(PY) -m pytest -q tests/static

# Pure logic only (~30 s).
test-fast: install
	$(PY) -m pytest tests/unit

dvc-repro: install
	$(VENV)/bin/dvc repro

airflow-test: install
	$(VENV)/bin/airflow db migrate >/dev/null
	$(PY) infra/airflow/create_pools.py >/dev/null
	IOT_COMPRESS_DEADLINE_H=0 $(VENV)/bin/airflow dags test compress_nightly

# The deployment mode on this machine: CeleryExecutor, the machine's PostgreSQL and Redis, a worker per queue.
airflow-up: install
	$(PY) infra/airflow/celery_stack.py start

airflow-down:
	$(PY) infra/airflow/celery_stack.py stop

# The MLflow server mode on this machine: PostgreSQL backend, S3 artifacts (an in-memory moto S3 for a demo).
mlflow-server: install
	$(PY) infra/mlflow/server.py start --with-moto

mlflow-server-stop:
	$(PY) infra/mlflow/server.py stop

mlflow-ui: install
	$(PY) -m components mlflow-ui

benchmark: install
	$(PY) benchmarks/kfp_local.py
	$(PY) benchmarks/ingest_throughput.py
	$(PY) benchmarks/train_baseline.py
	$(PY) benchmarks/profile_overhead.py
	$(PY) benchmarks/latency_model.py
	$(PY) benchmarks/compression.py
	$(PY) benchmarks/gate_errors.py
	$(PY) benchmarks/on_device.py
	$(PY) benchmarks/deployment.py

# Needs a Docker engine (none on the development machines; `make test-static` checks the files).
images:
	docker build -f docker/pipeline.Dockerfile -t iot-compress/pipeline:0.1.0 .
	docker build -f docker/airflow-worker.Dockerfile -t iot-compress/airflow:0.1.0 .
	docker build -f docker/mlflow.Dockerfile -t iot-compress/mlflow:0.1.0 .

clean:
	rm -rf $(STATE) data reports
