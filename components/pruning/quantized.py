"""Pruned, then quantized: the compressed model's int8 form as a candidate, timed and scored beside its float form.

On a timed device whose runtime has an integer form (ONNX Runtime's QDQ
`onnx_int8`, TFLite's full-integer `tflite_int8`: `Backend.int8_format`),
the fine-tuned compressed model is exported in the runtime's float and int8
forms, the int8 one calibrated on windows of the fitting users (never the
validation or held-out users), and the baseline in float. The three run on
the device on the validation users' windows (each user counts once, as every
other decision of compress) and are timed together, round-robin, against the
baseline's float form. The form taken is the fastest measured one whose
validation accuracy is at compress's floor; the float form where the int8
one is not (or did not export, or run). Weight-carrying operators the
runtime keeps in float in the int8 file (ONNX Runtime has no QDQ kernel for
GRU or LSTM) are named, never silently left out. `validate` then runs and
gates the form taken (`deploy.json`). The exported files stay in the
stage's `forms/` folder (with their manifest), so the int8 file can be run
on other users later (benchmarks/compression.py scores it on the held-out
users).
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
DEPLOY_FILE = "deploy.json"  # beside compress's model/: the form validate deploys


@dataclass
class FormChoice:
    format: str  # the form validate deploys and gates
    why: str
    float_format: str  # the runtime's float form: the baseline is compared in it
    candidates: dict[str, dict] = field(default_factory=dict)  # per form: accuracy, measured ratio, energy, ...
    baseline: dict = field(default_factory=dict)  # the baseline's float file timed with them: latency, energy

    def to_dict(self) -> dict:
        return asdict(self)


def default_form(device) -> FormChoice:
    """The runtime's float form, with no int8 candidate (a computed device, a runtime without one, or switched
    off)."""
    from components.devices.base import get_backend

    backend = get_backend(device.runtime)
    fmt = backend.formats[0] if backend.formats else ""
    why = ("compress.quantize is off" if backend.timed and backend.int8_format else
           f"runtime {device.runtime} has no int8 form a timed search can weigh")
    return FormChoice(fmt, why, fmt)


def choose_form(params, device, baseline_dir: Path, model, data, floor: float, work: Path) -> FormChoice:
    """Float or int8 for the fine-tuned `model`: the fastest measured form at the accuracy `floor`."""
    from components import models
    from components.devices.base import get_backend
    from components.devices.energy import energy_per_inference, energy_ratio, metered
    from components.devices.scoring import export_models, run_models
    from components.pruning.finetune import user_mean

    backend = get_backend(device.runtime)
    if not (params.compress.quantize and backend.timed and backend.int8_format):
        return default_form(device)
    cfg = params.validate
    float_fmt, int8_fmt = backend.formats[0], backend.int8_format
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="forms-", dir=work) as scratch:
        scratch = Path(scratch)
        models.save(model, scratch / "model")
        calibration = _calibration(data.x_fit, cfg.calibration_windows, params.compress.seed)
        log.info("%s: exporting the compressed model as %s and %s (int8 calibrated on %d windows of the fitting "
                 "users)", device.name, float_fmt, int8_fmt, len(calibration))
        exports = {"baseline": export_models(baseline_dir, [float_fmt], work / "baseline", None,
                                             cfg.convert_timeout_s),
                   "compressed": export_models(scratch / "model", [float_fmt, int8_fmt], work / "compressed",
                                               calibration, cfg.convert_timeout_s)}
        np.save(scratch / "test_windows.npy", np.ascontiguousarray(data.x_val.numpy(), dtype=np.float32))
        runs = {"baseline": (exports["baseline"], float_fmt), float_fmt: (exports["compressed"], float_fmt),
                int8_fmt: (exports["compressed"], int8_fmt)}
        log.info("%s: running both forms and the baseline on %d validation windows, then timing them together",
                 device.name, len(data.y_val))
        answers = run_models(params, device, runs, scratch, work / "logs")
    kept_float = {}
    int8_file = exports["compressed"]["files"].get(int8_fmt)
    if int8_file is not None:
        kept_float = {int8_fmt: backend.float_operators(work / "compressed" / int8_file.file, int8_fmt)}
    y, users = data.y_val.numpy(), data.users_val
    base = answers["baseline"]
    base_latency = (base.get("timing") or {}).get("latency_ms") if base.get("ok") else None
    base_energy = energy_per_inference(device, base_latency, metered(base) if base.get("ok") else None)
    candidates = {}
    for fmt in (float_fmt, int8_fmt):
        answer = answers[fmt]
        if not answer.get("ok"):
            candidates[fmt] = {"ok": False, "error": answer.get("error", "")}
            continue
        right = (answer["outputs"].argmax(axis=1) == y).astype(np.float64)
        latency = (answer.get("timing") or {}).get("latency_ms")
        energy = energy_per_inference(device, latency, metered(answer))
        candidates[fmt] = {"ok": True, "val_accuracy": user_mean(right, users), "latency_ms": latency,
                           "measured_ratio": latency / base_latency if latency and base_latency else None,
                           **energy, "energy_ratio": energy_ratio(energy, base_energy),
                           **({"float_operators": kept_float[fmt]} if fmt in kept_float else {})}
    choice = _pick(candidates, float_fmt, int8_fmt, floor, device.name)
    choice.baseline = {"format": float_fmt, "latency_ms": base_latency, **base_energy}
    return choice


def _pick(candidates: dict[str, dict], float_fmt: str, int8_fmt: str, floor: float, device: str) -> FormChoice:
    """The fastest measured form at the floor; the float form otherwise, saying why."""
    q = candidates[int8_fmt]
    f = candidates[float_fmt]
    if not q["ok"]:
        why = f"{int8_fmt} did not run: {q['error']}"
    elif q["val_accuracy"] < floor - 1e-12:
        why = f"{int8_fmt} validation accuracy {q['val_accuracy']:.4f} is below the floor {floor:.4f}"
    elif not f.get("ok") or f.get("latency_ms") is None:
        why = f"{float_fmt} did not run or was not timed"
        log.info("%s: deploying %s (%s)", device, int8_fmt, why)
        return FormChoice(int8_fmt, why, float_fmt, candidates)
    elif q["latency_ms"] is None or q["latency_ms"] >= f["latency_ms"]:
        why = f"{int8_fmt} measured no faster ({_ms(q)} vs {_ms(f)})"
    else:
        why = (f"{int8_fmt} is faster ({_ms(q)} vs {_ms(f)}) at validation accuracy {q['val_accuracy']:.4f} "
               f"(floor {floor:.4f})")
        if q.get("float_operators"):
            why += f"; kept in float: {', '.join(q['float_operators'])}"
        log.info("%s: deploying %s: %s", device, int8_fmt, why)
        return FormChoice(int8_fmt, why, float_fmt, candidates)
    log.info("%s: deploying %s: %s", device, float_fmt, why)
    return FormChoice(float_fmt, why, float_fmt, candidates)


def _ms(candidate: dict) -> str:
    return "untimed" if candidate.get("latency_ms") is None else f"{candidate['latency_ms']:.4g} ms"


def _calibration(x_fit, count: int, seed: int) -> np.ndarray:
    """`count` windows of the fitting users, drawn with `seed` (all of them if there are fewer)."""
    x = x_fit.numpy() if hasattr(x_fit, "numpy") else np.asarray(x_fit)
    if len(x) <= count:
        return np.ascontiguousarray(x, dtype=np.float32)
    pick = np.sort(np.random.default_rng(seed).choice(len(x), size=count, replace=False))
    return np.ascontiguousarray(x[pick], dtype=np.float32)
