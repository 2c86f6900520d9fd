# syntax=docker/dockerfile:1.7.1
# iot-compress/airflow:<version>: the pipeline image plus the Airflow roles.
# A Celery worker by default (on $AIRFLOW_WORKER_QUEUES: `default`, or the queue
# of the device it runs on); the same image runs the scheduler, API server,
# DAG processor and the one-shot `init` with another command.
# Build the pipeline image first, then from the repository root:
#   docker build -f docker/airflow-worker.Dockerfile -t iot-compress/airflow:0.1.0 .
FROM iot-compress/pipeline:0.1.0

# infra/airflow holds airflow_local_settings, the cluster policy that routes
# each device's mapped tasks to its queue and pool; every Airflow process must
# import it as a top-level module.
ENV PYTHONPATH=/app/infra/airflow \
    AIRFLOW_WORKER_QUEUES=default

COPY --chmod=0755 docker/airflow-entrypoint.sh /usr/local/bin/airflow-entrypoint

# 8080: API server (UI, REST and execution API); 8793: a worker's log server.
EXPOSE 8080 8793

USER 10001:10001
ENTRYPOINT ["tini", "--", "airflow-entrypoint"]
CMD ["worker"]
