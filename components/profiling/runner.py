"""Profile a list of items on one device: convert and time them in worker processes, one row per item.

For a timed device, conversions run in one worker and timings in another,
pinned to the device's cores. Items are timed a batch at a time, round-robin
(see devices/timing.py). When the host has cores the device does not use,
the next batch converts there while the current one is timed, so the
converter's cost hides behind the measurement; otherwise they take turns, so
nothing else runs on the timed cores. A worker that crashes or overruns fails
only the item it was on: a batch whose timing worker died is timed again one
item at a time to find the culprit. Computed devices (the microcontroller
model) need no workers.

With a `reference` item (the baseline model), the reference is converted
once, kept for the profiler's lifetime and timed in every batch alongside
the items (devices/timing.py): each row then carries `reference_id` (its
key), `reference_ms` and `ratio` (with `ratio_q1`, `ratio_q3`), the item's
time relative to the reference's in the same rounds, which survives the
machine's speed phases that milliseconds do not. A reference that fails to
convert or load leaves those columns empty (with a warning); the
milliseconds are measured all the same.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from components.devices.base import Backend
from components.devices.pool import Device
from components.devices.worker import Worker, WorkerFailed
from components.profiling.items import Item, item_explanatory
from components.settings.profile import ProfileParams

log = logging.getLogger(__name__)


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
    """The two workers of one timed device and the loop that feeds them, a batch at a time."""

    def __init__(self, device: Device, backend: Backend, p: ProfileParams, work_dir: Path, version: str,
                 reference: Item | None = None):
        self.device, self.backend, self.p, self.work_dir, self.version = device, backend, p, work_dir, version
        self.reference = reference
        self._reference_entry: dict | None = None  # what each timing request carries, once converted
        timing_cpus = device.pinned_cpus()
        spare = tuple(sorted(set(os.sched_getaffinity(0)) - set(timing_cpus)))
        self.needs_convert = bool(backend.artifact_suffix)
        self.overlap = self.needs_convert and bool(spare)
        logs = work_dir / "logs"
        self.timer = Worker("time", device.runtime, device.threads, timing_cpus, logs / "time.log")
        self.converter = Worker("convert", device.runtime, 1, spare if self.overlap else timing_cpus,
                                logs / "convert.log")

    def rows(self, items: list[Item]) -> Iterator[dict]:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        batches = [items[i : i + self.p.batch_size] for i in range(0, len(items), self.p.batch_size)]
        try:
            self.timer.start()  # its imports overlap the first batch's conversion
            self._prepare_reference()
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="convert") as pool:
                converted = self._convert(batches[0]) if batches else []
                for k, batch in enumerate(batches):
                    following = batches[k + 1] if k + 1 < len(batches) else []
                    # the next batch converts on the spare cores while this one is timed
                    ahead = pool.submit(self._convert, following) if self.overlap and following else None
                    busy_s = sum(c.get("convert_s", 0.0) for c in converted) if ahead else 0.0
                    log.info("%s: timing batch %d of %d (%d configurations, round-robin)", self.device.name,
                             k + 1, len(batches), len(batch))
                    yield from self._time(batch, converted, busy_s)
                    converted = ahead.result() if ahead else self._convert(following)
        finally:
            self.timer.close()
            self.converter.close()

    def _artifact(self, item: Item) -> Path | None:
        return self.work_dir / f"{item.key}{self.backend.artifact_suffix}" if self.needs_convert else None

    def _reference_artifact(self) -> Path | None:
        # its own name: the item's artifact is deleted once the item is timed, the reference's is kept
        suffix = self.backend.artifact_suffix
        return self.work_dir / f"reference-{self.reference.key}{suffix}" if self.needs_convert else None

    def _prepare_reference(self) -> None:
        """Convert the reference once (a later `rows` call reuses the file while it is there)."""
        if self.reference is None:
            return
        artifact = self._reference_artifact()
        if self._reference_entry is not None and (artifact is None or artifact.exists()):
            return
        self._reference_entry = None
        if artifact is not None:
            try:
                answer = self.converter.call({"item": self.reference.to_json(), "artifact": str(artifact)},
                                             self.p.item_timeout_s)
            except WorkerFailed as exc:
                answer = {"ok": False, "error": str(exc)[:500]}
            if not answer["ok"]:
                log.warning("%s: the reference model %s did not convert (%s); timing without ratios",
                            self.device.name, self.reference.key, answer["error"])
                return
        self._reference_entry = {"item": self.reference.to_json(), "artifact": str(artifact or "")}

    def _convert(self, batch: list[Item]) -> list[dict]:
        """One answer per item: {"ok": True, "convert_s": ...} or {"ok": False, "error": ...}."""
        if not self.needs_convert:
            return [{"ok": True} for _ in batch]
        answers = []
        for item in batch:
            try:
                answers.append(self.converter.call({"item": item.to_json(), "artifact": str(self._artifact(item))},
                                                   self.p.item_timeout_s))
            except WorkerFailed as exc:
                answers.append({"ok": False, "error": str(exc)[:500]})
        return answers

    def _time(self, batch: list[Item], converted: list[dict], busy_s: float) -> Iterator[dict]:
        ready = [item for item, c in zip(batch, converted) if c["ok"]]
        timed = dict(zip((item.key for item in ready), self._time_together(ready, busy_s)))
        for item, conversion in zip(batch, converted):
            row = base_row(self.device, self.backend, self.version, item)
            artifact = self._artifact(item)
            if artifact is not None:
                artifact.unlink(missing_ok=True)
            if not conversion["ok"]:
                yield row | {"status": "failed", "failed_step": "convert", "error": conversion["error"]}
                continue
            row["convert_s"] = conversion.get("convert_s")
            answer = timed[item.key]
            if not answer["ok"]:
                yield row | {"status": "failed", "failed_step": "time", "error": answer["error"]}
                continue
            yield row | {"status": "ok", "load_s": answer["load_s"]} | self._with_reference(answer["timing"])

    def _with_reference(self, timing: dict) -> dict:
        """The timing's columns, with the reference's key where it carries a ratio."""
        has_ratio = timing.get("ratio") is not None
        return timing | {"reference_id": self.reference.key if has_ratio and self.reference else None}

    def _time_together(self, items: list[Item], busy_s: float) -> list[dict]:
        """Time `items` in one worker call; if the worker dies, time them one by one to find the culprit."""
        if not items:
            return []
        try:
            answer = self.timer.call(self._timing_request(items, busy_s), self.p.item_timeout_s * len(items))
        except WorkerFailed as exc:
            answer = {"ok": False, "error": str(exc)[:500]}
        if answer["ok"]:
            if answer.get("reference_error"):
                log.warning("%s: the reference model did not load (%s); this batch has no ratios",
                            self.device.name, answer["reference_error"])
            return answer["results"]
        if len(items) == 1:
            return [answer]
        return [self._time_together([item], 0.0)[0] for item in items]

    def _timing_request(self, items: list[Item], busy_s: float) -> dict:
        entries = [{"item": item.to_json(), "artifact": str(self._artifact(item) or "")} for item in items]
        request = {"items": entries, "timing": self.p.timing.model_dump(), "busy_s": busy_s}
        if self._reference_entry is not None:
            request["reference"] = self._reference_entry
        return request


def fingerprint(params, device: Device, version: str, reference: Item | None) -> dict:
    """What the rows depend on; the reference too, since every ratio in the log is relative to it."""
    return {"device": device.to_dict(), "timing": params.profile.timing.model_dump(), "runtime_version": version,
            "reference_id": reference.key if reference is not None else None}
