"""Profile a list of items on one device: convert and time each in worker processes, one row per item.

For a timed device, conversions run in one worker and timings in another,
pinned to the device's cores. When the host has cores the device does not
use, the next item converts there while the current one is timed, so the
converter's cost hides behind the measurement; otherwise they take turns, so
nothing else runs on the timed cores. A worker that crashes or overruns
fails only the item it was on. Computed devices (the microcontroller model)
need no workers.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from components.config import ProfileParams
from components.devices.base import Backend
from components.devices.pool import Device
from components.devices.worker import Worker, WorkerFailed
from components.profiling.items import Item, item_explanatory


def base_row(device: Device, backend: Backend, version: str, item: Item) -> dict:
    row = {"device": device.name, "runtime": device.runtime, "runtime_version": version,
           "method": "timed" if backend.timed else "computed", "kind": item.kind, "sweep": item.sweep,
           "config_id": item.key, "config": item.to_json(), "layers": len(item.layers),
           "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    if item.layer is not None:
        layer = item.layer
        row |= {"in_features": layer.in_features, "out_features": layer.out_features, "kernel": layer.kernel,
                "stride": layer.stride, "length": layer.length, "instances": layer.instances}
    return row | item_explanatory(item)


def computed_rows(items: list[Item], device: Device, backend: Backend) -> Iterator[dict]:
    version = backend.version()
    for item in items:
        row = base_row(device, backend, version, item)
        try:
            figures = backend.compute(item, device)
        except Exception as exc:  # one configuration's failure is recorded, the stage goes on
            yield row | {"status": "failed", "failed_step": "compute", "error": f"{type(exc).__name__}: {exc}"}
            continue
        figures.pop("method", None)
        yield row | {"status": "ok"} | figures


class TimedProfiler:
    """The two workers of one timed device and the loop that feeds them."""

    def __init__(self, device: Device, backend: Backend, p: ProfileParams, work_dir: Path, version: str):
        self.device, self.backend, self.p, self.work_dir, self.version = device, backend, p, work_dir, version
        timing_cpus = device.pinned_cpus()
        spare = tuple(sorted(set(os.sched_getaffinity(0)) - set(timing_cpus)))
        self.needs_convert = bool(backend.artifact_suffix)
        self.overlap = self.needs_convert and bool(spare)
        logs = work_dir / "logs"
        self.timer = Worker("time", device.runtime, device.threads, timing_cpus, logs / "time.log")
        self.converter = Worker("convert", device.runtime, 1, spare if self.overlap else timing_cpus,
                                logs / "convert.log")

    def _artifact(self, item: Item) -> Path | None:
        return self.work_dir / f"{item.key}{self.backend.artifact_suffix}" if self.needs_convert else None

    def _request(self, item: Item, busy_s: float = 0.0) -> dict:
        artifact = self._artifact(item)
        return {"item": item.to_json(), "artifact": str(artifact) if artifact else "",
                "timing": asdict(self.p.timing), "busy_s": busy_s}

    def rows(self, items: list[Item]) -> Iterator[dict]:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        try:
            if self.needs_convert and items:
                self.converter.submit(self._request(items[0]))
            for i, item in enumerate(items):
                following = items[i + 1] if i + 1 < len(items) else None
                yield self._profile_one(item, following)
        finally:
            self.timer.close()
            self.converter.close()

    def _profile_one(self, item: Item, following: Item | None) -> dict:
        row = base_row(self.device, self.backend, self.version, item)
        if self.needs_convert:
            converted = self._answer(self.converter)
            if self.overlap and following is not None:
                self.converter.submit(self._request(following))  # converts on spare cores while this is timed
            if not converted["ok"]:
                self._cleanup(item)
                self._next_conversion(following)
                return row | {"status": "failed", "failed_step": "convert", "error": converted["error"]}
            row["convert_s"] = converted["convert_s"]
        # while the next item converts on the spare cores, keep sampling about as long: it costs no wall time
        busy_s = min(row["convert_s"], self.p.timing.max_time_s) if self.overlap and following is not None else 0.0
        try:
            self.timer.submit(self._request(item, busy_s))
            timed = self._answer(self.timer)
        finally:
            self._cleanup(item)
        self._next_conversion(following)
        if not timed["ok"]:
            return row | {"status": "failed", "failed_step": "time", "error": timed["error"]}
        return row | {"status": "ok", "load_s": timed["load_s"]} | timed["timing"]

    def _next_conversion(self, following: Item | None) -> None:
        if self.needs_convert and not self.overlap and following is not None:
            self.converter.submit(self._request(following))

    def _answer(self, worker: Worker) -> dict:
        try:
            return worker.result(self.p.item_timeout_s)
        except WorkerFailed as exc:
            return {"ok": False, "error": str(exc)[:500]}

    def _cleanup(self, item: Item) -> None:
        artifact = self._artifact(item)
        if artifact is not None:
            artifact.unlink(missing_ok=True)
