"""Emit the sensing data asset when new data lands, so `compress_nightly` runs without waiting for 02:00.

Every hour one light task fingerprints the files under the data root (names,
sizes, modification times) and compares it with the fingerprint it last
announced (an Airflow Variable). Only a changed fingerprint succeeds and so
updates the asset; an unchanged one skips, and a skipped task emits nothing.
An uploader that knows when it is done can instead POST an asset event for
`iot-compress-sensing-data` through the REST API.
"""

from __future__ import annotations

from datetime import datetime

from airflow.sdk import Asset, dag, task

SENSING_DATA = Asset("iot-compress-sensing-data")  # = components.drivers.airflow_tasks.SENSING_DATA_ASSET
FINGERPRINT_VARIABLE = "iot_compress_sensing_data_fingerprint"


@dag(
    dag_id="watch_sensing_data",
    schedule="@hourly",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["iot-compress", "data"],
    doc_md=__doc__,
)
def watch_sensing_data():
    @task(task_id="announce_new_data", outlets=[SENSING_DATA])
    def announce_new_data(**context) -> dict:
        from airflow.sdk import Variable
        from airflow.sdk.exceptions import AirflowSkipException

        from components.drivers.airflow_tasks import data_fingerprint

        now = data_fingerprint()
        if Variable.get(FINGERPRINT_VARIABLE, default=None) == now["fingerprint"]:
            raise AirflowSkipException(f"no new data under {now['data_root']} ({now['files']} files unchanged)")
        Variable.set(FINGERPRINT_VARIABLE, now["fingerprint"])
        context["outlet_events"][SENSING_DATA].extra = now
        return now

    announce_new_data()


watch_sensing_data()
