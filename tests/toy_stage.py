"""A toy stage for the tests of the stage table: one entry plus this module, and every driver runs it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from components.stages import Place, Stage

TOY = Stage("toy", "tests.toy_stage", "Count the files of the device's latency model.", per_device=True,
            reads=("fit_latency",), params=("fit_latency.min_rows",))


@dataclass(frozen=True)
class ToyResult:
    device: str
    files: int
    output: Path


def run(params, device_name: str, *, fit_latency: Path, out: Place, pipeline_key: str | None = None) -> ToyResult:
    files = sorted(p.name for p in Path(fit_latency).iterdir())
    Path(out.data).mkdir(parents=True, exist_ok=True)
    Path(out.report).mkdir(parents=True, exist_ok=True)
    (Path(out.data) / "files.json").write_text(json.dumps({"files": files, "pipeline_key": pipeline_key}))
    (Path(out.report) / "metrics.json").write_text(json.dumps({"files": len(files)}))
    return ToyResult(device_name, len(files), Path(out.data))


def summary(result: ToyResult) -> str:
    return f"toy {result.device}: {result.files} files -> {result.output}"
