"""Conversions and timings in a child process, so a converter or runtime that crashes cannot take the stage down.

The child (`python -m components.devices.worker ROLE RUNTIME THREADS CPUS`; ROLE
convert, time, or validate: exported whole models run on test windows)
pins itself to its cores, then answers one JSON request per line on stdin
with one JSON line on a private copy of stdout (libraries that print go to
stderr, which the parent sends to a log file). The parent side, `Worker`,
restarts the child after a crash or a timeout and reports what happened.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path

THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TF_NUM_INTRAOP_THREADS")


class WorkerFailed(RuntimeError):
    """The child died or overran its time; the message says how, with the tail of its log."""


class Worker:
    """One long-lived child process for a role (convert or time) on one device."""

    def __init__(self, role: str, runtime: str, threads: int, cpus: tuple[int, ...], log_path: Path):
        self.role, self.runtime, self.threads, self.cpus = role, runtime, threads, cpus
        self.log_path = log_path
        self._proc: subprocess.Popen | None = None
        self._lines: queue.Queue = queue.Queue()

    def start(self) -> None:
        """Start the child now (its imports then overlap other work); `submit` starts it otherwise."""
        if self._proc is None or self._proc.poll() is not None:
            self._start()

    def _start(self) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="3")
        env.update({var: str(self.threads) for var in THREAD_ENV})
        cmd = [sys.executable, "-m", "components.devices.worker", self.role, self.runtime, str(self.threads),
               ",".join(map(str, self.cpus))]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env,
                                      cwd=Path(__file__).resolve().parents[2])
        log.close()
        self._lines = queue.Queue()
        threading.Thread(target=self._read, args=(self._proc, self._lines), daemon=True).start()

    @staticmethod
    def _read(proc: subprocess.Popen, lines: queue.Queue) -> None:
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    def submit(self, request: dict) -> None:
        self.start()
        self._proc.stdin.write((json.dumps(request) + "\n").encode())
        self._proc.stdin.flush()

    def result(self, timeout_s: float) -> dict:
        """The answer to the last request; raises WorkerFailed if the child died or overran."""
        try:
            line = self._lines.get(timeout=timeout_s)
        except queue.Empty:
            self.close()
            raise WorkerFailed(f"{self.role} worker overran {timeout_s:.0f} s and was killed") from None
        if line is None:
            code = self._proc.wait()
            self._proc = None
            raise WorkerFailed(f"{self.role} worker died ({describe_exit(code)}){self._log_tail()}")
        return json.loads(line)

    def call(self, request: dict, timeout_s: float) -> dict:
        self.submit(request)
        return self.result(timeout_s)

    def close(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            self._proc = None

    def _log_tail(self, lines: int = 4) -> str:
        try:
            tail = self.log_path.read_text(errors="replace").strip().splitlines()[-lines:]
        except OSError:
            return ""
        return (": " + " | ".join(t.strip() for t in tail)) if tail else ""


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit status {code}"


# ---- the child side -------------------------------------------------------------------------------------------


def _handle(role: str, backend, threads: int, request: dict) -> dict:
    from components.profiling.items import Item

    if role == "convert":
        start = time.perf_counter()
        backend.convert(Item.from_json(request["item"]), Path(request["artifact"]))
        return {"ok": True, "convert_s": time.perf_counter() - start}
    if role == "validate":
        return _validate_files(backend, threads, request)
    return _time_batch(backend, threads, request)


def _time_batch(backend, threads: int, request: dict) -> dict:
    """Load every item of the batch, then time those that loaded together (round-robin).

    With a `reference` entry ({"item": ..., "artifact": ...}), that model is
    timed in the same rounds and every timing carries its ratio to it; if the
    reference cannot be loaded, the items are timed without it and the answer
    says why (`reference_error`).
    """
    from components.devices.timing import measure_many
    from components.settings.profile import TimingParams

    results: list[dict] = []
    runs, loaded = [], []
    for entry in request["items"]:
        start = time.perf_counter()
        try:
            run = _bound_run(backend, threads, entry)
        except Exception as exc:  # this configuration fails; the others are still timed
            traceback.print_exc()
            results.append({"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]})
            continue
        results.append({"ok": True, "load_s": time.perf_counter() - start})
        runs.append(run)
        loaded.append(len(results) - 1)
    answer: dict = {"ok": True, "results": results}
    reference = None
    if request.get("reference") and runs:
        try:
            reference = _reference_run(backend, threads, request["reference"])
        except Exception as exc:  # milliseconds are still worth having; the ratios are missing
            traceback.print_exc()
            answer["reference_error"] = f"{type(exc).__name__}: {exc}"[:500]
    meter = _meter(request, answer)
    timings = measure_many(runs, TimingParams(**request["timing"]), busy_s=request.get("busy_s", 0.0),
                           reference=reference, meter=meter)
    for index, timing in zip(loaded, timings):
        results[index]["timing"] = timing.to_dict()
    return answer


def _bound_run(backend, threads: int, entry: dict):
    """One inference of the entry's item on its example input, as a no-argument callable."""
    from components.profiling.items import Item, example_input

    item = Item.from_json(entry["item"])
    artifact = Path(entry["artifact"]) if entry.get("artifact") else None
    return backend.load(item, artifact, threads).bind(example_input(item))


_REFERENCE: dict[tuple[str, str], object] = {}  # the reference loaded by this worker: the same one every batch


def _reference_run(backend, threads: int, entry: dict):
    """The reference's bound run, loaded on its first batch and kept while this worker lives."""
    key = (entry["item"], entry.get("artifact") or "")
    if key not in _REFERENCE:
        _REFERENCE.clear()
        _REFERENCE[key] = _bound_run(backend, threads, entry)
    return _REFERENCE[key]


def _validate_files(backend, threads: int, request: dict) -> dict:
    """Check, load and run exported models on the test windows (`predict`), and/or time them together (`time`).

    Per model: its sha256 is checked before loading. With `reference_index`,
    that model (e.g. the baseline) is also the timing reference: every timing
    then carries its ratio to it (devices/timing.py). With `predict`, the
    outputs on every window are saved and the peak memory is the process's
    resident-set high-water mark while loading and running it, above what was
    resident once the runtime was imported: run one model per fresh worker,
    so it is that model's footprint with the runtime's working set.
    """
    import numpy as np

    from components.artifacts.seals import verify
    from components.devices.timing import measure_many
    from components.settings.profile import TimingParams

    backend.version()  # imports the runtime before anything is measured
    x = np.load(request["windows"])  # read whole, so the windows' pages are resident before measuring
    results: list[dict] = []
    runs, loaded = [], []
    for entry in request["models"]:
        path = Path(entry["path"])
        try:
            verify(path, entry["sha256"])
            before = _reset_peak_rss()
            start = time.perf_counter()
            runner = backend.load_file(path, entry["format"], threads)
            result = {"ok": True, "load_s": time.perf_counter() - start}
            if request.get("predict", True):
                outputs = np.concatenate([runner.predict(x[i : i + 1]) for i in range(len(x))])
                peak = _peak_rss()
                np.save(entry["outputs"], outputs.astype(np.float32))
                result["peak_memory_bytes"] = peak - before if peak is not None and before is not None else None
            run = runner.bind(x[:1])
        except Exception as exc:  # this model fails (its gates say why); the others are still run and timed
            traceback.print_exc()
            results.append({"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]})
            continue
        if request.get("predict", True) and entry["format"].startswith("tflite"):
            result["graph"] = _graph_memory(path)
        results.append(result)
        runs.append(run)
        loaded.append(len(results) - 1)
    answer = {"ok": True, "results": results}
    if request.get("time", True):
        reference = _reference_of(runs, loaded, request.get("reference_index"))
        timings = measure_many(runs, TimingParams(**request["timing"]), reference=reference,
                               meter=_meter(request, answer))
        for index, timing in zip(loaded, timings):
            results[index]["timing"] = timing.to_dict()
    return answer


def _meter(request: dict, answer: dict):
    """The request's power meter (its `meter` spec), or None; one that cannot be read says why in the answer
    (`meter_error`), and the timings go on without energy (it is modelled then, where declared)."""
    from components.devices.meters import MeterUnavailable, open_meter

    try:
        return open_meter(request.get("meter"))
    except MeterUnavailable as exc:
        answer["meter_error"] = str(exc)
        return None


def _reference_of(runs: list, loaded: list[int], index: int | None):
    """The run of model `index` (e.g. the baseline) as the timing reference, or None if absent or not loaded."""
    if index is None or index not in loaded:
        return None
    return runs[loaded.index(index)]


def _graph_memory(path: Path) -> dict | None:
    """The file's weights and peak activations, or None if its graph cannot be read (the model still ran)."""
    from components.devices.tflite import graph_memory

    try:
        return graph_memory(path)
    except Exception:  # an analysis that fails is no reason to fail a model that ran
        traceback.print_exc()
        return None


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> int | None:
    """Reset the resident-set high-water mark (Linux: `5` into clear_refs); the resident bytes now."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    rss = _status_kb("VmRSS")
    return rss * 1024 if rss is not None else None


def _peak_rss() -> int | None:
    hwm = _status_kb("VmHWM")
    return hwm * 1024 if hwm is not None else None


def _serve(role: str, runtime: str, threads: int, cpus: str) -> None:
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything a library prints goes to the log, not into the protocol
    sys.stdout = sys.stderr
    if cpus:
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
    from components.devices.base import get_backend

    backend = get_backend(runtime)
    for line in sys.stdin:
        request = json.loads(line)
        try:
            answer = _handle(role, backend, threads, request)
        except Exception as exc:  # recorded as this configuration's failure; the worker serves the next one
            traceback.print_exc()
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
        protocol.write(json.dumps(answer) + "\n")


if __name__ == "__main__":
    _serve(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else "")
