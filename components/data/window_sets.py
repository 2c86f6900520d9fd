"""Loaders for data sets published as ready-cut windows.

- HHAR_SA (AdaTime benchmark, Ragab et al.): `test_<k>.pt`, one file per user,
  accelerometer windows [N, 128, 3], standardised per file.
- UCI HAR (Anguita et al. 2013) as AdaTime packs it: `<split>_<subject>.pt`,
  [N, 9, 128] = body_acc, body_gyro, total_acc (x, y, z each); both of a
  subject's files are merged, since the pipeline splits by subject itself.
- WISDM v1.1 (Kwapisz et al. 2010) as AdaTime packs it: `<split>_<user>.pt`,
  phone accelerometer windows [N, 128, 3] at 20 Hz, standardised; both of a
  user's files are merged (a user is held out whole).
- UEA BasicMotions (smartwatch accelerometer + gyroscope, 10 Hz, 10 s), read
  from the ARFF files a PyPI package ships, without importing the package.

The `.pt` files are legacy pickles. They are read with torch's weights-only
unpickler, which refuses every global except the numpy array reconstruction
functions allow-listed here, so no code from the file can run.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from components.artifacts.seals import sha256_of
from components.data.errors import DataError

HHAR_LABELS = ("bike", "sit", "stairsdown", "stairsup", "stand", "walk")  # alphabetical, as HHAR_SA numbers them
HHAR_SA_USERS = "abcdefghi"  # test_<k>.pt <-> k-th user (AdaTime's domain order; assumed, see the data README)
UCI_HAR_LABELS = ("walking", "walking_upstairs", "walking_downstairs", "sitting", "standing", "laying")
UCI_HAR_CHANNELS = {"body_acc": ("g", 0), "body_gyro": ("rad/s", 1), "total_acc": ("g", 2)}  # AdaTime's order
WISDM_LABELS = ("downstairs", "jogging", "sitting", "standing", "upstairs", "walking")  # alphabetical, as AdaTime


@dataclass
class WindowSet:
    """Windows in the time domain with their metadata; what every loader returns."""

    signal: np.ndarray  # float32 [N, sensors, axes, length]
    label: np.ndarray  # int16 [N], index into label_names
    label_names: tuple[str, ...]
    user: np.ndarray  # str [N]
    model: np.ndarray  # str [N]
    device: np.ndarray  # str [N]
    sensors: tuple[str, ...]
    units: tuple[str, ...]  # per sensor: "m/s^2", "rad/s", "g", "standardised", "unknown"
    sample_rate_hz: float
    sources: dict[str, str] = field(default_factory=dict)  # file -> sha256
    notes: list[str] = field(default_factory=list)
    source: np.ndarray | None = None  # str [N], the file each window came from
    published_split: np.ndarray | None = None  # "train"/"test" per window when users are unknown


# Every global a pickle of plain numeric numpy arrays names, and nothing else: the array rebuilder under
# numpy 1's name and numpy 2's (numpy 2 moved numpy.core to numpy._core), the array and dtype classes, and
# the class of each numeric dtype (the unpickler rebuilds a dtype's state only for an allowed class).
_NUMPY_ARRAY_GLOBALS = ("numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct")
_NUMERIC_DTYPES = ("?", "f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8")
_NUMERIC_KINDS = "biuf"  # bool, signed and unsigned integers, floats
_BUILD_REFUSED = re.compile(r"but got <class '([\w.]+)'>")


def _array_globals() -> list:
    """The allow-list handed to torch's weights-only unpickler (anything else in the file is refused)."""
    from numpy._core.multiarray import _reconstruct

    allowed: list = [(_reconstruct, name) for name in _NUMPY_ARRAY_GLOBALS] + [np.ndarray, np.dtype]
    return allowed + [type(np.dtype(c)) for c in _NUMERIC_DTYPES]


def load_legacy_pt(path: Path) -> dict[str, np.ndarray]:
    """Read an AdaTime `.pt` file (a pickled dict of numeric arrays) without running pickled code."""
    import torch
    from torch.serialization import safe_globals

    _check_pt_container(path)
    try:
        with safe_globals(_array_globals()):
            obj = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # torch wraps every unpickling failure in its own types
        raise DataError(path, f"not a readable window file: {_unpickling_reason(exc)}") from None
    if not isinstance(obj, dict) or not {"samples", "labels"} <= set(obj):
        keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise DataError(path, f"expected a dict with 'samples' and 'labels', found {keys}")
    arrays = {k: np.asarray(v.numpy() if hasattr(v, "numpy") else v) for k, v in obj.items()}
    for key in ("samples", "labels"):
        if arrays[key].dtype.kind not in _NUMERIC_KINDS:
            raise DataError(path, f"{key!r} holds {arrays[key].dtype} values, not numbers", key)
    return arrays


def _unpickling_reason(exc: Exception) -> str:
    """The one line of torch's many that says what was wrong."""
    boilerplate = ("Weights only load failed", "Check the documentation", "(1)", "(2)", "Please use", "Please file")
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and not ln.strip().startswith(boilerplate)]
    reason = lines[0].removeprefix("WeightsUnpickler error: ") if lines else type(exc).__name__
    refused = _BUILD_REFUSED.search(reason)
    if refused:
        return f"it holds {refused.group(1)} objects, not numeric arrays (refused)"
    if "global" in reason.lower():  # torch's advice to allow-list the global is not for a data file
        return f"it asks to run code, not just to rebuild numpy arrays (refused): {reason.split(' Please use')[0]}"
    return reason


def _check_pt_container(path: Path) -> None:
    """Refuse an empty file or one that is neither of torch's formats (a zip, or a pickle) before unpickling."""
    if not path.exists():
        raise DataError(path, "file not found")
    with open(path, "rb") as f:
        head = f.read(8)
    if not head:
        raise DataError(path, "the file is empty (an interrupted copy?)")
    if not (head.startswith(b"PK") or head[:1] == b"\x80"):
        raise DataError(path, f"not a torch .pt file (neither a zip archive nor a pickle): it starts with {head!r}")


def _check_windows(path: Path, samples: np.ndarray, labels: np.ndarray, shape: tuple, n_labels: int) -> None:
    if samples.ndim != 3 or any(want and got != want for want, got in zip(shape, samples.shape)):
        raise DataError(path, f"'samples' has shape {samples.shape}, expected [N, {shape[1]}, {shape[2]}]", "samples")
    if labels.shape != (samples.shape[0],):
        raise DataError(path, f"'labels' has shape {labels.shape}, expected [{samples.shape[0]}]", "labels")
    bad = np.flatnonzero((labels < 0) | (labels >= n_labels) | (labels != np.round(labels)))
    if len(bad):
        raise DataError(path, f"label {labels[bad[0]].item()!r} is not one of 0..{n_labels - 1}", f"window {bad[0]}")


def _read_pt_windows(directory: Path, what: str, inner_shape: tuple[int, int], n_labels: int,
                     to_signal, user_of) -> dict:
    """Read every `<split>_<k>.pt` of `directory` into the arrays a WindowSet needs."""
    files = sorted(directory.glob("*_[0-9]*.pt"), key=lambda p: (p.stem.split("_")[0], int(p.stem.split("_")[1])))
    if not files:
        raise DataError(directory, f"no {what} window files (<split>_<k>.pt) found")
    parts: dict[str, list] = {"signal": [], "label": [], "user": [], "source": []}
    sources = {}
    for path in files:
        d = load_legacy_pt(path)
        samples, labels = d["samples"], d["labels"]
        _check_windows(path, samples, labels, (0, *inner_shape), n_labels)
        name = f"{directory.name}/{path.name}"
        n = len(labels)
        parts["signal"].append(to_signal(samples).astype(np.float32))
        parts["label"].append(labels.astype(np.int16))
        parts["user"].append(np.full(n, user_of(int(path.stem.split("_")[1]))))
        parts["source"].append(np.full(n, name))
        sources[name] = sha256_of(path)
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    return arrays | {"sources": sources}


def load_hhar_sa(directory: Path) -> WindowSet:
    arrays = _read_pt_windows(directory, "HHAR_SA", (128, 3), len(HHAR_LABELS),
                              to_signal=lambda s: s.transpose(0, 2, 1)[:, None],  # [N, 1 sensor, 3 axes, 128]
                              user_of=lambda k: HHAR_SA_USERS[k])
    n = len(arrays["label"])
    return WindowSet(
        **arrays, label_names=HHAR_LABELS, model=np.full(n, "samsungold"), device=np.full(n, "samsungold"),
        sensors=("accelerometer",), units=("standardised",), sample_rate_hz=50.0,
        notes=[
            "HHAR_SA (AdaTime): only the per-user test files are available; file k is taken as user k of a..i",
            "values are standardised per file, not m/s^2; the device (Galaxy S+, ~50 Hz) is inferred from the data",
            "label names follow the alphabetical UCI gt order (inferred from the data, see the data README)",
        ],
    )


def load_uci_har(directory: Path, sensors: tuple[str, ...] = ("total_acc", "body_gyro")) -> WindowSet:
    """UCI HAR windows; `sensors` picks which of its three signals the model sees, as DeepSense sensors.

    The default pairs the accelerometer with gravity (`total_acc`, g) with the gyroscope (`body_gyro`,
    rad/s): DeepSense's two-sensor input. `body_acc` is `total_acc` minus a low-passed gravity.
    """
    unknown = [s for s in sensors if s not in UCI_HAR_CHANNELS]
    if unknown or not sensors or len(set(sensors)) != len(sensors):
        raise DataError("params.yaml", f"ingest.uci_har.sensors {list(sensors)}: choose distinct signals among "
                        f"{list(UCI_HAR_CHANNELS)}", "ingest.uci_har.sensors")
    picked = [UCI_HAR_CHANNELS[s][1] for s in sensors]
    arrays = _read_pt_windows(directory, "UCI HAR", (9, 128), len(UCI_HAR_LABELS),
                              # [N, 9, 128] -> [N, 3 signals, 3 axes, 128] -> the chosen signals
                              to_signal=lambda s: s.reshape(len(s), 3, 3, 128)[:, picked],
                              user_of=lambda k: f"subject{k:02d}")
    n = len(arrays["label"])
    return WindowSet(
        **arrays, label_names=UCI_HAR_LABELS, model=np.full(n, "galaxy_s2"), device=np.full(n, "galaxy_s2"),
        sensors=tuple(sensors), units=tuple(UCI_HAR_CHANNELS[s][0] for s in sensors), sample_rate_hz=50.0,
        notes=["UCI HAR windows (2.56 s, 128 samples at 50 Hz, band-filtered by the authors) overlap by 50 %; "
               "train_k and test_k of a subject are merged and the pipeline holds out whole subjects, so no "
               "overlapping window is on both sides",
               f"signals used as sensors: {', '.join(f'{s} ({UCI_HAR_CHANNELS[s][0]})' for s in sensors)}; "
               "values are the published ones, not standardised"],
    )


def load_wisdm(directory: Path) -> WindowSet:
    arrays = _read_pt_windows(directory, "WISDM", (128, 3), len(WISDM_LABELS),
                              to_signal=lambda s: s.transpose(0, 2, 1)[:, None],  # [N, 1 sensor, 3 axes, 128]
                              user_of=lambda k: f"user{k:02d}")
    n = len(arrays["label"])
    return WindowSet(
        **arrays, label_names=WISDM_LABELS, model=np.full(n, "android_phone"), device=np.full(n, "android_phone"),
        sensors=("accelerometer",), units=("standardised",), sample_rate_hz=20.0,
        notes=["WISDM v1.1 (AdaTime): 128 samples at 20 Hz = 6.4 s per window, phone in the front trouser pocket",
               "values are standardised (train files exactly per channel, test files roughly), not m/s^2: a model "
               "must not rely on absolute units, and the physical-range check can only test finiteness",
               "classes are unbalanced and some users lack some classes: per-user macro-F1 averages only the "
               "classes that user has or is predicted (see windows per user and label)",
               "train_k and test_k of a user are merged; a user is held out whole"],
    )


def _package_dir(package: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise DataError(package, f"the package {package!r} that ships this data set is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / relative


def load_basic_motions(package: str) -> WindowSet:
    directory = _package_dir(package, "datasets/cached_datasets/UEA/BasicMotions")
    parts = [read_uea_arff(directory / f"BasicMotions_{split}.arff") for split in ("TRAIN", "TEST")]
    names = tuple(sorted(set(parts[0][2]) | set(parts[1][2])))
    signal = np.concatenate([p[0] for p in parts]).reshape(-1, 2, 3, parts[0][0].shape[-1])
    label = np.concatenate([np.searchsorted(names, p[1]) for p in parts]).astype(np.int16)
    split = np.concatenate([np.full(len(p[1]), s) for p, s in zip(parts, ("train", "test"))])
    origin = np.concatenate([np.full(len(p[1]), f"{package}:BasicMotions_{s}.arff")
                             for p, s in zip(parts, ("TRAIN", "TEST"))])
    n = len(label)
    return WindowSet(
        signal=signal.astype(np.float32), label=label, label_names=tuple(n_.lower() for n_ in names),
        user=np.full(n, "unknown"), source=origin, model=np.full(n, "smartwatch"), device=np.full(n, "smartwatch"),
        sensors=("accelerometer", "gyroscope"), units=("unknown", "unknown"), sample_rate_hz=10.0,
        sources={f"{package}:BasicMotions_{s}.arff": sha256_of(directory / f"BasicMotions_{s}.arff")
                 for s in ("TRAIN", "TEST")},
        notes=["UEA BasicMotions records no participant id: the published TRAIN/TEST split is used, not a user split"],
        published_split=split,
    )


_ATTRIBUTE = re.compile(r"@attribute\s+(\S+)\s+(.*)", re.IGNORECASE)


def read_uea_arff(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read a multivariate UEA ARFF file: (values [N, channels, length], labels [N], class names)."""
    if not path.exists():
        raise DataError(path, "file not found")
    classes: list[str] = []
    values, labels = [], []
    in_data = False
    with open(path, encoding="utf-8-sig") as f:  # a leading byte-order mark is legal: skip it
        for number, line in enumerate(f, start=1):
            line = line.strip()
            if not line or line.startswith("%"):
                continue
            if not in_data:
                m = _ATTRIBUTE.match(line)
                if m and m.group(2).startswith("{"):
                    classes = [c.strip() for c in m.group(2).strip("{}").split(",")]
                in_data = line.lower() == "@data"
                continue
            if line.lower() == "@data":
                continue
            body, _, label = line.rpartition(",")
            try:
                channels = [np.array(ch.split(","), dtype=np.float64) for ch in body.strip("'\"").split("\\n")]
                values.append(np.stack(channels))
            except ValueError as exc:
                raise DataError(path, f"not a multivariate series: {exc}", f"line {number}") from None
            if label not in classes:
                raise DataError(path, f"label {label!r} is not one of {classes}", f"line {number}")
            labels.append(label)
    if not values:
        raise DataError(path, "no data rows after @data")
    return np.stack(values), np.array(labels), classes
