# syntax=docker/dockerfile:1.7.1
# iot-compress/mlflow:<version>: the MLflow tracking server and model registry,
# with a PostgreSQL backend and proxied S3 artifacts. Nothing of the pipeline.
# Build from the repository root:
#   docker build -f docker/mlflow.Dockerfile -t iot-compress/mlflow:0.1.0 .
FROM python:3.11.14-slim-bookworm

RUN groupadd --system --gid 10001 mlflow \
 && useradd --system --uid 10001 --gid mlflow --create-home --home-dir /home/mlflow \
      --shell /usr/sbin/nologin mlflow

# The lock file as constraints: the server runs the same MLflow, boto3 and
# psycopg2 as the pipeline, and every transitive package at its locked version.
COPY requirements.lock /tmp/requirements.lock
RUN pip install --no-cache-dir --disable-pip-version-check --constraint /tmp/requirements.lock \
      mlflow==3.17.2 boto3==1.43.117 psycopg2-binary==2.9.13 \
 && rm /tmp/requirements.lock

# The server reads its stores from the environment (these are the CLI's own
# variables), so the command below needs no shell to expand them:
#   MLFLOW_BACKEND_STORE_URI       postgresql://user:password@host:5432/mlflow
#   MLFLOW_ARTIFACTS_DESTINATION   s3://bucket (served to clients as mlflow-artifacts:/)
#   MLFLOW_S3_ENDPOINT_URL         an S3-compatible endpoint (MinIO); unset for AWS S3
#   AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY
#   MLFLOW_SERVER_ALLOWED_HOSTS    Host headers to accept (the service's DNS names)
ENV PYTHONUNBUFFERED=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=1

EXPOSE 5000
USER 10001:10001
WORKDIR /home/mlflow
ENTRYPOINT ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000"]
