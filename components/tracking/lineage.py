"""What a stage run read and what it made, in MLflow's own terms (called through tracking.StageRun).

The windows ingest wrote are an MLflow dataset: named after the data set
(`uci_hapt`), its digest the data hash (the sha256 over the source files'
sha256s that ingest records in data_card.json, cut to DIGEST_CHARS: MLflow
keeps at most 36 characters), its source the ingest folder (the UI shows it
as a local path), its schema the window arrays and columns, its profile the
counts. Every stage that reads the windows logs it as an input, with a
context saying how (`training`, `evaluation`; ingest: `produced`), so the
runs' Datasets column and the experiment's dataset filter show which runs
worked on which data. MLflow keeps one dataset per (name, digest) in an
experiment, with the source and profile it was first logged with; what
differs per run (the folder it read, the ingest run that wrote it) goes in the
input's tags.

A saved model folder (components.models.save: description + safetensors
weights, sealed) is logged as a LoggedModel: a pyfunc model from code
(logged_model.py, nothing pickled) whose artifact is the folder, so the run's
Models column shows it, `mlflow.pyfunc.load_model("models:/m-...")` loads it,
and metrics logged with its `model_id` are linked to it. Its tag
`weights_sha256` (from the folder's seal) lets a later stage find it by
content (`find_model`), wherever the folder was copied.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from components.data.windows import Windows

log = logging.getLogger(__name__)
DIGEST_CHARS = 16  # what the reports and data cards show of the data hash; MLflow stores at most 36
WEIGHTS_TAG = "weights_sha256"
_COLUMN_TYPES = {"i": "long", "u": "long", "f": "double", "b": "boolean"}  # numpy kind -> MLflow column type


def digest(data_hash: str) -> str:
    return data_hash[:DIGEST_CHARS]


def windows_dataset(windows: Windows):
    """The MLflow dataset of ingest's windows: metadata only (nothing is read or copied but the shapes)."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    card = windows.card
    with warnings.catch_warnings():  # the local file system is registered under two schemes ("", "file")
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(str(Path(windows.directory).resolve()))

    profile = _profile(windows)

    class WindowsDataset(MetaDataset):  # MetaDataset keeps no profile; the UI shows this one beside the schema
        @property
        def profile(self):
            return profile

        def to_dict(self):
            return super().to_dict() | {"profile": json.dumps(profile)}

    return WindowsDataset(source, name=card.get("dataset") or "windows", digest=digest(card.get("data_hash", "")),
                          schema=_schema(windows))


def _schema(windows: Windows):
    from mlflow.types.schema import Array, ColSpec, DataType, Schema

    def nested(ndim: int):  # a window of an [N, ...] float array: arrays of arrays of floats
        kind = DataType.float
        for _ in range(ndim - 1):
            kind = Array(kind)
        return kind

    cols = [ColSpec(nested(windows.x.ndim), "x"), ColSpec(nested(windows.signal.ndim), "signal")]
    cols += [ColSpec(_COLUMN_TYPES.get(dtype.kind, "string"), str(name)) for name, dtype in windows.meta.dtypes.items()]
    return Schema(cols)


def _profile(windows: Windows) -> dict:
    card, meta = windows.card, windows.meta
    held_out = sorted(set(meta.loc[meta["split"] == "test", "user"].astype(str)))
    profile = {"windows": int(len(meta)), "users": int(meta["user"].nunique()), "held_out_users": held_out,
               "classes": list(windows.classes), "x_shape": list(windows.x.shape),
               "signal_shape": list(windows.signal.shape), "data_hash": card.get("data_hash", "")}
    for key in ("intervals_per_window", "sensors", "layout"):
        if key in card:
            profile[key] = card[key]
    return profile


def log_windows_input(mlflow, run, windows: Windows, context: str, ingest_run_id: str | None = None):
    """Declare the windows an input of `run` (the active run); return the dataset (for metrics linked to it)."""
    dataset = windows_dataset(windows)
    data_hash = windows.card.get("data_hash", "")
    ingest_run_id = ingest_run_id or _ingest_run(mlflow, run, data_hash, len(windows.meta))
    tags = {"data_hash": data_hash, "ingest_dir": str(Path(windows.directory).resolve()),
            "windows": str(len(windows.meta)), **({"ingest_run_id": ingest_run_id} if ingest_run_id else {})}
    mlflow.log_input(dataset, context=context, tags=tags)
    return dataset


def _ingest_run(mlflow, run, data_hash: str, windows: int) -> str | None:
    """The finished ingest run that wrote these windows: the same data hash and count, this pipeline run's first."""
    if not data_hash or "'" in data_hash:
        return None
    query = (f"tags.stage = 'ingest' and tags.data_hash = '{data_hash}' and attributes.status = 'FINISHED' "
             f"and metrics.windows = {windows}")
    key = run.data.tags.get("pipeline_run_key")
    for where in ([f"{query} and tags.pipeline_run_key = '{key}'"] if key else []) + [query]:
        found = mlflow.search_runs([run.info.experiment_id], filter_string=where, max_results=1,
                                   order_by=["attributes.start_time DESC"], output_format="list")
        if found:
            return found[0].info.run_id
    return None


def log_model_folder(mlflow, model_dir: Path, name: str, tags: dict[str, str]):
    """Log a saved model folder as a LoggedModel of the active run; return its ModelInfo (model_id, model_uri)."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    import components
    from components.models import SPEC_FILE, ModelSpec

    spec = ModelSpec.from_json((Path(model_dir) / SPEC_FILE).read_text())
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *spec.input_shape))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, len(spec.classes)))]))
    tags = {**tags, WEIGHTS_TAG: _weights_sha256(model_dir), "arch": spec.arch, "params": str(spec.params)}
    return mlflow.pyfunc.log_model(
        name=name, python_model=str(Path(__file__).with_name("logged_model.py")), artifacts={"model": str(model_dir)},
        code_paths=[str(Path(components.__file__).parent)], signature=signature, tags=tags, model_type=spec.arch,
        pip_requirements=requirements())


def find_model(mlflow, experiment_id: str, model_dir: Path) -> str | None:
    """The id of the newest LoggedModel holding this saved model folder's weights (by sha256), if one was logged."""
    sha256 = _weights_sha256(model_dir)
    if not sha256:
        return None
    found = mlflow.search_logged_models(experiment_ids=[experiment_id], filter_string=f"tags.{WEIGHTS_TAG} = '{sha256}'",
                                        max_results=1, order_by=[{"field_name": "creation_time", "ascending": False}],
                                        output_format="list")
    return found[0].model_id if found else None


def _weights_sha256(model_dir: Path) -> str:
    """The weights' sha256 as `models.save` sealed it beside them ("" without a seal)."""
    from components.artifacts.seals import SEAL_FILE
    from components.models import WEIGHTS_FILE

    seal = Path(model_dir) / SEAL_FILE
    if not seal.exists():
        return ""
    return json.loads(seal.read_text())["files"].get(WEIGHTS_FILE, {}).get("sha256", "")


def requirements(runtime: str = "torch") -> list[str]:
    """Pinned pip requirements of a pyfunc model that runs in `runtime` (inferring them takes ~10 s)."""
    from importlib import metadata

    packages = ["mlflow", "numpy", "pyyaml", "safetensors", "torch"]
    packages += {"onnxruntime": ["onnxruntime"], "tflite": ["ai-edge-litert"]}.get(runtime, [])
    pins = []
    for package in packages:
        try:
            version = metadata.version(package)
        except metadata.PackageNotFoundError:  # not installed here: the runtime's loader will say so
            continue
        pins.append(f"{package}=={version.split('+')[0]}" if package != "torch" else f"torch=={version}")
    return pins
