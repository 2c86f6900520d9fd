"""`pipeline`: what every stage shares: the MLflow experiment, the state and run folders."""

from __future__ import annotations

from pydantic import Field

from components.settings.base import Section


class PipelineParams(Section):
    experiment: str = Field(description="MLflow experiment every stage logs to")
    state_dir: str = Field(description="ignored folder for tool homes, the default MLflow store, downloads")
    runs_dir: str = Field(description="run-keyed outputs when the Airflow DAG runs the stages")
    summary_nights: int = Field(ge=1, description="the night's summary charts each device over this many nights")
