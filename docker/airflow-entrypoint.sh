#!/bin/sh
# Entry point of iot-compress/airflow. One image serves every Airflow role:
#   worker          a Celery worker on $AIRFLOW_WORKER_QUEUES (default, or a device's queue)
#   init            migrate the metadata database and create the device pools
#   <anything else> passed to the airflow CLI (scheduler, api-server, dag-processor, ...)
# A shell is needed only for the worker's queue, which comes from the environment.
set -eu

case "${1:-worker}" in
  worker)
    if [ "$#" -gt 0 ]; then shift; fi
    exec airflow celery worker \
      --queues "${AIRFLOW_WORKER_QUEUES:?set AIRFLOW_WORKER_QUEUES to the Celery queue(s) this worker serves}" "$@"
    ;;
  init)
    airflow db migrate
    exec python /app/infra/airflow/create_pools.py
    ;;
  *)
    exec airflow "$@"
    ;;
esac
