"""Typed configuration: params.yaml loaded into frozen dataclasses.

One dataclass per params.yaml section (one section per stage). Loading refuses
unknown keys (also inside mappings such as `compress.budget`), missing keys,
wrong types, numbers out of their range and duplicate keys, with a message
that names the key, so a typo in params.yaml fails before any work starts, not
halfway through a nightly run. `dataclasses.asdict(params)` is what goes to
MLflow.

What a field accepts beyond its type is declared beside it (`checked`): the
range of its numbers, the keys of its mapping. The YAML is read as YAML 1.2
reads numbers (`1e-3` is a float; PyYAML alone follows YAML 1.1, where it is a
string).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import operator
import os
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Literal

import yaml

DATA_ROOT_ENV = "IOT_COMPRESS_DATA_ROOT"
PARAMS_ENV = "IOT_COMPRESS_PARAMS"


class ConfigError(ValueError):
    """params.yaml (or an override) does not match the schema."""


# ---- what a field accepts beyond its type ------------------------------------------------------------------


@dataclass(frozen=True)
class Range:
    """Bounds on a number field (on each number of a list or mapping field)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def refusal(self, value: float) -> str | None:
        """Why `value` is out of range, or None when it is in range (NaN never is)."""
        bounds = [(self.ge, operator.ge, "at least"), (self.gt, operator.gt, "more than"),
                  (self.le, operator.le, "at most"), (self.lt, operator.lt, "less than")]
        if all(bound is None or test(value, bound) for bound, test, _ in bounds):
            return None
        said = " and ".join(f"{word} {bound}" for bound, _, word in bounds if bound is not None)
        return f"must be {said}, got {value!r}"


@dataclass(frozen=True)
class Keys:
    """The keys a mapping field may have. `names` is called at load time: the names live in modules
    (the runtimes, the layer kinds) that config.py does not import up front."""

    names: Callable[[], Iterable[str]]
    plugins: bool = False  # also any `package.module:Class` (a plug-in runtime)

    def allows(self, key: str) -> bool:
        return key in self.names() or (self.plugins and ":" in key)

    def refusal(self, key: str, where: str) -> ConfigError:
        also = " (or a plug-in runtime package.module:Class)" if self.plugins else ""
        return _unknown_key(key, list(self.names()), where, also)


def checked(*, keys: Keys | None = None, ge: float | None = None, gt: float | None = None,
            le: float | None = None, lt: float | None = None, default: Any = dataclasses.MISSING):
    """A dataclass field whose numbers must lie in a range and (a mapping) whose keys must be `keys`."""
    rules: dict[str, Any] = {}
    if keys is not None:
        rules["keys"] = keys
    if (ge, gt, le, lt) != (None, None, None, None):
        rules["range"] = Range(ge, gt, le, lt)
    return dataclasses.field(default=default, metadata=rules)


@functools.cache
def _layer_kinds() -> tuple[str, ...]:
    from components.profiling.items import LAYER_KINDS

    return LAYER_KINDS


@functools.cache
def _runtimes() -> tuple[str, ...]:
    from components.devices.base import known_runtimes

    return known_runtimes()


@functools.cache
def _budget_keys() -> tuple[str, ...]:
    """The costs compress steers by: the two it names (`compress.cost`) and each computed runtime's own."""
    from components.devices.base import get_backend, known_runtimes

    return (*typing.get_args(Cost), *(r for r in known_runtimes() if not get_backend(r).timed))


LAYER_KINDS_KEYS = Keys(_layer_kinds)
RUNTIME_KEYS = Keys(_runtimes, plugins=True)
Cost = Literal["params", "latency"]


# ---- the sections ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PipelineParams:
    experiment: str  # MLflow experiment every stage logs to
    state_dir: str  # ignored folder for tool homes, the default MLflow store, downloads
    runs_dir: str  # run-keyed outputs when the Airflow DAG runs the stages
    summary_nights: int = checked(ge=1)  # the night's summary charts each device over this many nights


@dataclass(frozen=True)
class HharRawParams:
    accelerometer_files: tuple[str, ...]  # relative to the data root (or the extracted archive)
    gyroscope_files: tuple[str, ...]  # paired with accelerometer files by user/device
    interval_s: float = checked(gt=0)  # tau: length of one interval
    intervals: int = checked(ge=1)  # T: intervals per sample
    points_per_interval: int = checked(ge=1)  # each interval is resampled to this many points before the FFT
    min_rows_per_interval: int = checked(ge=1)  # an interval with fewer raw rows of a sensor is dropped
    window_stride_intervals: int = checked(ge=1)  # hop between consecutive samples, in intervals
    null_label: Literal["keep", "drop"]  # HHAR's `null` rows: a no-activity class, or dropped
    chunk_rows: int = checked(ge=1)  # rows per streamed chunk; bounds memory


@dataclass(frozen=True)
class WindowSetParams:
    dir: str  # relative to the data root
    intervals: int = checked(ge=1)  # T: each window is cut into T intervals, each FFT'd


@dataclass(frozen=True)
class UciHarParams:
    dir: str  # relative to the data root
    intervals: int = checked(ge=1)
    sensors: tuple[str, ...]  # which of body_acc, body_gyro, total_acc the model sees, each as a DeepSense sensor


@dataclass(frozen=True)
class UciHaptParams:
    dir: str  # UCI's RawData/ folder, relative to the data root
    users: tuple[str, ...]  # e.g. [user01, user02]; empty: every user with files
    activities: Literal["basic", "all"]  # basic: the six activities; all: also the six postural transitions
    interval_s: float = checked(gt=0)  # tau: one interval (a whole number of samples at 50 Hz)
    intervals: int = checked(ge=1)  # T: intervals per sample
    window_stride_intervals: int = checked(ge=1)  # hop between consecutive samples of a run, in intervals


@dataclass(frozen=True)
class CustomColumns:
    user: str  # who was recorded (required)
    label: str  # the activity; empty cells: rows outside any activity (required)
    session: str  # optional: a recording's id (samples never cross two)
    time: str  # optional: timestamps in time_unit_s units (a gap ends a run; going back is an error)
    device: str  # optional: the recording device


@dataclass(frozen=True)
class CustomSensor:
    columns: tuple[str, ...]  # one column per axis, e.g. [acc_x, acc_y, acc_z]
    unit: Literal["m/s^2", "g", "rad/s", "deg/s", "standardised", "unknown"]


@dataclass(frozen=True)
class CustomParams:
    path: str  # a CSV or Parquet file of raw rows, relative to the data root or absolute; empty: not configured
    format: Literal["auto", "csv", "parquet"]  # auto: by the file's suffix
    sample_rate_hz: float = checked(gt=0)  # rows are evenly spaced at this rate
    columns: CustomColumns
    time_unit_s: float = checked(gt=0)  # seconds per unit of the time column (1: s, 0.001: ms, 1e-9: ns)
    sensors: dict[str, CustomSensor]  # sensor name -> its axis columns and unit (the names are the user's own)
    labels: tuple[str, ...]  # the classes, in order; rows of other labels are not used; empty: every label found
    interval_s: float = checked(gt=0)
    intervals: int = checked(ge=1)
    window_stride_intervals: int = checked(ge=1)
    chunk_rows: int = checked(ge=1)  # rows per streamed block: bounds memory


@dataclass(frozen=True)
class BasicMotionsParams:
    package: str  # the PyPI package whose data files hold the UEA BasicMotions set
    intervals: int = checked(ge=1)


@dataclass(frozen=True)
class SplitParams:
    folds: int = checked(ge=2)  # users dealt into this many folds (seeded); each user is held out in exactly one
    # the fold the nightly run holds out (its users decide validate's gates and the champion); < folds (ingest checks)
    test_fold: int = checked(ge=0)
    test_users: tuple[str, ...]  # explicit held-out users instead of test_fold's
    # users kept out of every stage (no training, validation or decision), to score registered models on later
    reserve_users: tuple[str, ...]
    seed: int = checked(ge=0)


@dataclass(frozen=True)
class ExpectationParams:
    accel_abs_max: float = checked(gt=0)  # m/s^2; phones and watches clip well below this
    gyro_abs_max: float = checked(gt=0)  # rad/s
    max_time_backstep_ms: float = checked(ge=0)  # tolerated out-of-order step between consecutive rows of a device
    time_monotonic_mostly: float = checked(ge=0, le=1)  # share of rows whose step must be within that tolerance
    min_rows_per_class: int = checked(ge=0)
    min_windows_per_class: int = checked(ge=0)
    example_rows: int = checked(ge=0)  # failing rows quoted per expectation in the report


@dataclass(frozen=True)
class IngestParams:
    data_root: str
    dataset: Literal["hhar_raw", "hhar_sa", "uci_har", "uci_hapt", "wisdm", "custom", "basic_motions"]
    output_dir: str
    report_dir: str
    download_url: str  # empty: use the files under data_root
    download_sha256: str
    download_dir: str
    hhar_raw: HharRawParams
    hhar_sa: WindowSetParams
    uci_har: UciHarParams
    uci_hapt: UciHaptParams
    wisdm: WindowSetParams
    custom: CustomParams
    basic_motions: BasicMotionsParams
    split: SplitParams
    expectations: ExpectationParams


# Layer widths may be 0 here: the model builder refuses a layer left without units, naming the layer.


@dataclass(frozen=True)
class DeepSenseParams:
    sensor_filters: int = checked(ge=0)  # per-sensor convolution filters (DeepSense: 64)
    sensor_kernels: tuple[int, ...] = checked(ge=1)  # kernel sizes along frequency, first to last
    first_stride: int = checked(ge=1)  # stride of the first per-sensor convolution, in frequency bins
    merge_filters: int = checked(ge=0)
    merge_kernels: tuple[int, ...] = checked(ge=1)
    rnn: Literal["gru", "lstm"]
    rnn_units: int = checked(ge=0)  # DeepSense: 120
    rnn_layers: int = checked(ge=1)  # DeepSense: 2
    dropout: float = checked(ge=0, lt=1)


@dataclass(frozen=True)
class CnnParams:
    filters: tuple[int, ...] = checked(ge=0)
    kernel: int = checked(ge=1)
    dropout: float = checked(ge=0, lt=1)


@dataclass(frozen=True)
class MlpParams:
    units: tuple[int, ...] = checked(ge=0)
    dropout: float = checked(ge=0, lt=1)


@dataclass(frozen=True)
class ClassicalParams:
    n_estimators: int = checked(ge=1)  # random forest on per-axis statistics
    max_depth: int | None = checked(ge=1)


@dataclass(frozen=True)
class TrainParams:
    output_dir: str
    report_dir: str
    arch: Literal["deepsense", "cnn", "mlp"]
    evaluation: Literal["split", "kfold"]  # split: ingest's held-out users; kfold: every fold of users held out once
    test_users: tuple[str, ...]  # override ingest's held-out users; empty: keep them
    bootstrap: int = checked(ge=0)  # resamples of the held-out users for the 95 % intervals; 0: none
    seed: int = checked(ge=0)
    threads: int = checked(ge=1)
    epochs: int = checked(ge=1)
    batch_size: int = checked(ge=1)
    learning_rate: float = checked(gt=0)
    weight_decay: float = checked(ge=0)
    patience: int = checked(ge=1)  # epochs without a better validation loss before stopping
    # early stopping on: users (a group of whole training users, never trained on; compress decides on the same
    # users) or windows (a share of every training user's windows, which the model also trains on: flattering)
    validation: Literal["users", "windows"]
    validation_share: float = checked(gt=0, lt=1)  # validation: users: this share of the training users
    # validation: users: with fewer users than this left to fit on, train again on every training user (the
    # validation group too) for the epochs early stopping chose; the baseline has then seen the validation users
    refit_below_users: int = checked(ge=0)
    # validation: windows (and sets without user ids): this share of the training windows; 0: no validation set
    val_fraction: float = checked(ge=0, lt=1)
    class_weights: bool
    input_norm: Literal["feature", "sensor"]  # standardise each input value, or each sensor as a whole
    noise_std: float = checked(ge=0)  # Gaussian noise added while training, in feature standard deviations; 0: off
    # random rotation of each sensor's axes while training, up to this angle; 0: off
    rotation_deg: float = checked(ge=0, le=180)
    scale_std: float = checked(ge=0)  # random amplitude scaling while training, 1 + N(0, scale_std); 0: off
    axis_scale_std: float = checked(ge=0)  # random gain per sensor axis, 1 + N(0, axis_scale_std); 0: off
    # random shift of each axis' interval means, in feature standard deviations; 0: off
    offset_std: float = checked(ge=0)
    deepsense: DeepSenseParams
    cnn: CnnParams
    mlp: MlpParams
    classical: ClassicalParams


@dataclass(frozen=True)
class TimingParams:
    warmup_runs: int = checked(ge=0)  # untimed runs before calibration (caches, allocator, lazy init)
    min_sample_s: float = checked(gt=0)  # one sample loops the inference until at least this long (timer resolution)
    samples_per_round: int = checked(ge=1)  # samples of one configuration per round-robin visit
    min_rounds: int = checked(ge=1)  # visits before a configuration's median may be called stable
    max_repeats: int = checked(ge=1)  # cap on samples per configuration
    max_time_s: float = checked(gt=0)  # cap on timed seconds per configuration
    rel_tolerance: float = checked(ge=0, lt=1)  # stable: the median moved less than this share in the last round
    # with a reference model: one reference sample per this many configuration samples
    reference_every: int = checked(ge=1)


@dataclass(frozen=True)
class ConvRanges:
    in_range: tuple[int, ...] = checked(ge=1)  # [min, max] input channels
    kernels: tuple[int, ...] = checked(ge=1)
    strides: tuple[int, ...] = checked(ge=1)
    length_range: tuple[int, ...] = checked(ge=1)  # [min, max] input positions (frequency bins)
    instances: tuple[int, ...] = checked(ge=1)  # runs per window (DeepSense: one per interval)


@dataclass(frozen=True)
class SequenceRanges:
    in_range: tuple[int, ...] = checked(ge=1)  # [min, max] input features
    length_range: tuple[int, ...] = checked(ge=1)  # [min, max] sequence length (recurrent) ...
    instances: tuple[int, ...] = checked(ge=1)  # ... or runs per window (linear)


@dataclass(frozen=True)
class SweepBase:
    in_features: int = checked(ge=1)
    kernel: int = checked(ge=1)
    stride: int = checked(ge=1)
    length: int = checked(ge=1)
    instances: int = checked(ge=1)


@dataclass(frozen=True)
class SamplerParams:
    seed: int = checked(ge=0)
    # per layer kind: about half a width sweep around multiples, half random draws
    configs_per_kind: int = checked(ge=1)
    models: int = checked(ge=0)  # whole DeepSense models (end-to-end rows)
    # of those, this share is the baseline shrunk as compression shrinks it; the rest random
    scaled_share: float = checked(ge=0, le=1)
    # [min, max] keep fraction of a scaled baseline's widths (log-uniform)
    scaled_keep_range: tuple[float, ...] = checked(gt=0, le=1)
    scaled_jitter: float = checked(ge=0)  # each layer's width of a scaled baseline also times exp(U(-jitter, jitter))
    kinds: tuple[str, ...]  # layer kinds to profile
    width_range: tuple[int, ...] = checked(ge=1)  # [min, max] output filters / units
    multiples: tuple[int, ...] = checked(ge=1)  # sweeps run through widths k*m-2 .. k*m+2 for the largest of these
    # one window (T, sensors, axes, 2, F) for the whole models; empty: ingest's
    model_input_shape: tuple[int, ...] = checked(ge=1)
    conv1d: ConvRanges
    recurrent: SequenceRanges
    linear: SequenceRanges
    # per kind: the layer whose width is swept (the baseline's own)
    sweep: dict[str, SweepBase] = checked(keys=LAYER_KINDS_KEYS)


@dataclass(frozen=True)
class ProfileParams:
    devices_file: str  # the device pool (infra/devices.yaml)
    devices: tuple[str, ...]  # profile these; empty: every device in the pool
    output_dir: str  # one folder per device: profile.parquet, parts/, manifest.json
    report_dir: str  # one folder per device: metrics.json, plots
    # a device failing more than this share of its configurations fails its task
    max_failed_share: float = checked(ge=0, le=1)
    item_timeout_s: float = checked(gt=0)  # a conversion or timing taking longer is killed and recorded as failed
    batch_size: int = checked(ge=1)  # configurations timed together, round-robin (spreads each one's samples over time)
    flush_rows: int = checked(ge=1)  # rows per appended parquet part (an interruption loses at most these)
    timing: TimingParams
    sampler: SamplerParams


@dataclass(frozen=True)
class TreeParams:
    max_depth: int = checked(ge=0)  # splits from the root to a leaf, at most (0: one leaf)
    min_leaf: int = checked(ge=1)  # rows on each side of a split, at least
    min_gain: float = checked(ge=0, lt=1)  # a split must cut its node's squared relative error by at least this share
    multiples: tuple[int, ...] = checked(ge=2)  # k of the `x mod k == 0` splits
    remainder_splits: bool  # also `x mod K < c` for the largest multiple K (a tile boundary inside the period)
    max_thresholds: int = checked(ge=1)  # interval candidates per variable and node (quantiles of its values)


@dataclass(frozen=True)
class BoostedParams:
    n_estimators: int = checked(ge=1)
    max_depth: int = checked(ge=1)
    learning_rate: float = checked(gt=0)


@dataclass(frozen=True)
class ForestParams:
    n_estimators: int = checked(ge=1)
    min_samples_leaf: int = checked(ge=1)


@dataclass(frozen=True)
class FitLatencyParams:
    output_dir: str  # one folder per device: latency_model.json, rules.txt
    report_dir: str  # one folder per device: metrics.json, the evaluation table, figures
    target: Literal["ratio", "ms"]  # fit each row's ratio to the reference model (times its median ms) or its ms
    seed: int = checked(ge=0)
    folds: int = checked(ge=2)  # evaluation: each kind's configurations in this many parts, each held out once
    prune_share: float = checked(ge=0, lt=1)  # share of the fitting rows kept aside to prune each tree
    min_rows: int = checked(ge=2)  # a layer kind with fewer usable rows gets the conservative fallback (flagged)
    # whole-model rows needed to fit a scale per layer kind + offset (fewer: one scale)
    full_overhead_models: int = checked(ge=0)
    within: float = checked(gt=0)  # the band of the "within" metric (0.1: predictions within +-10 %)
    split_variables: tuple[str, ...]  # what the trees may split on (intervals)
    modular_variables: tuple[str, ...]  # of those, which may also get `mod` splits (widths)
    # per layer kind: the leaves' regressors
    leaf_variables: dict[str, tuple[str, ...]] = checked(keys=LAYER_KINDS_KEYS)
    tree: TreeParams
    boosted: BoostedParams  # the nn-Meter-style baselines, on the same rows and variables
    forest: ForestParams


@dataclass(frozen=True)
class ThresholdParams:
    start: float = checked(ge=0, le=1)  # keep-probability below which elements are removed, at first
    step: float = checked(ge=0, le=1)  # raised by this ...
    every: int = checked(ge=1)  # ... every this many search steps ...
    limit: float = checked(ge=0, le=1)  # ... up to this


@dataclass(frozen=True)
class SearchParams:
    lambda_cost: float = checked(ge=0)  # weight of the relative cost against the task loss in the compressor's reward
    # the critic's moving average: baseline = decay * baseline + (1 - decay) * reward
    critic_decay: float = checked(ge=0, lt=1)
    threshold: ThresholdParams
    max_steps: int = checked(ge=1)
    batch_size: int = checked(ge=1)
    learning_rate: float = checked(gt=0)  # the task network, trained under the masks
    compressor_learning_rate: float = checked(gt=0)
    compressor_hidden: int = checked(ge=1)
    init_keep: float = checked(gt=0, lt=1)  # keep-probability every element starts near
    eval_every: int = checked(ge=1)  # steps between validation checks of the kept structure
    checkpoint_every: int = checked(ge=1)  # steps between checkpoints (an interrupted run resumes from the last)
    # weight of distillation from the baseline in the task network's loss while searching
    distill: float = checked(ge=0, le=1)


@dataclass(frozen=True)
class RefitParams:
    # latency cost, timed device: profile what the search visited, refit, search on; 0: never
    rounds: int = checked(ge=0)
    structures: int = checked(ge=0)  # the search's most recent distinct candidate structures profiled per round
    # and the last kept structure scaled by these factors (its width neighbours)
    neighbours: tuple[float, ...] = checked(gt=0)
    max_items: int = checked(ge=1)  # whole models + their distinct layers timed per round, at most
    steps: int = checked(ge=0)  # search steps after each refit (more pruning if the refitted model says over budget)


@dataclass(frozen=True)
class SelectParams:
    # latency cost, timed device: the cheapest front candidates above the floor timed, with nudges; 0: none
    candidates: int = checked(ge=0)


@dataclass(frozen=True)
class FineTuneParams:
    epochs: int = checked(ge=0)  # 0: no fine-tuning
    patience: int = checked(ge=1)
    batch_size: int = checked(ge=1)
    learning_rate: float = checked(gt=0)
    distill: float = checked(ge=0, le=1)  # weight of distillation from the baseline; 0: labels only
    temperature: float = checked(gt=0)


@dataclass(frozen=True)
class CompressParams:
    output_dir: str  # one folder per device: model/ (the compressed model), checkpoint
    report_dir: str  # one folder per device: metrics, comparison table, trajectory and Pareto figures
    cost: Cost  # DeepIoT's parameter count or the device's predicted latency; mcu: its own
    # per cost (params, latency, computed runtimes: mcu): relative cost to reach (0.07: 7 % of the baseline's)
    budget: dict[str, float] = checked(keys=Keys(_budget_keys), gt=0, le=1)
    # a timed device: the search aims this share under the latency budget (timing noise)
    budget_margin: float = checked(ge=0, lt=1)
    # a measured ratio this share over the budget still meets it (timing repeatability)
    measured_tolerance: float = checked(ge=0, lt=1)
    # the floor: the baseline's accuracy on the validation users (train's group) minus this, mean over users
    max_accuracy_drop: float = checked(ge=0, le=1)
    # also fine-tune the structure one step back along the search's path, at this times the aim: validate
    # deploys it when the model misses only the accuracy gate; 0: none
    fallback: float = checked(ge=0, le=10)
    nudge_radius: int = checked(ge=0)  # latency cost: widths may move up by this to a width predicted no slower
    augment: bool  # augment batches (search and fine-tuning) with train's rotation, scale and noise
    baselines: tuple[str, ...]  # compared at the same budget: l1, uniform
    seed: int = checked(ge=0)
    threads: int = checked(ge=1)
    search: SearchParams
    refit: RefitParams
    select: SelectParams
    fine_tune: FineTuneParams

    def __post_init__(self):
        if 0 < self.fallback <= 1:
            raise ConfigError(f"compress.fallback: must be 0 (no fallback) or more than 1 (an aim looser than the "
                              f"budget's), got {self.fallback!r}")


@dataclass(frozen=True)
class GateParams:
    # on-device test accuracy, baseline minus compressed (same device and format), paired per held-out user:
    # the mean drop at most this ...
    max_accuracy_drop: float = checked(ge=0, le=1)
    # ... and the upper end of its 95 % interval at most this (the evidence says "no loss"); 1: not checked
    max_accuracy_drop_upper: float = checked(ge=0, le=1)
    # share of test windows where the device predicts what the torch model predicts
    min_agreement: float = checked(ge=0, le=1)
    latency_budget: float = checked(gt=0)  # measured latency of the compressed model / the baseline's, same device
    # exported file size of the compressed model / the baseline's (mcu: and fit flash, SRAM)
    size_budget: float = checked(gt=0)
    # |measured - predicted| / measured ratio of the compressed model to the baseline
    max_latency_error: float = checked(ge=0)


@dataclass(frozen=True)
class ValidateParams:
    output_dir: str  # <output_dir>/<device>/{baseline,compressed}/: the exported files and manifest.json
    report_dir: str  # <report_dir>/<device>/: report.json, report.md, report.html
    # per runtime, the formats validated; the first is deployed and gated
    formats: dict[str, tuple[str, ...]] = checked(keys=RUNTIME_KEYS)
    calibration_windows: int = checked(ge=1)  # training windows that calibrate int8 quantization
    max_test_windows: int = checked(ge=0)  # held-out windows run on the device (0: all)
    convert_timeout_s: float = checked(gt=0)  # one conversion; longer is killed and the format fails
    run_timeout_s: float = checked(gt=0)  # one format's run on the device (load, predict, time)
    seed: int = checked(ge=0)
    gates: GateParams


@dataclass(frozen=True)
class RegisterParams:
    name_prefix: str  # registered model "<prefix>-<dataset>-<device>"
    champion_tolerance: float = checked(ge=0, le=1)  # accuracies this close are a tie, broken by measured latency


@dataclass(frozen=True)
class Params:
    pipeline: PipelineParams
    ingest: IngestParams
    train: TrainParams
    profile: ProfileParams
    fit_latency: FitLatencyParams
    compress: CompressParams
    validate: ValidateParams
    register: RegisterParams
    root: Path = dataclasses.field(default=Path("."), compare=False)  # params.yaml's folder

    def path(self, relative: str) -> Path:
        """Resolve a path from params.yaml against the project root."""
        p = Path(relative).expanduser()
        return p if p.is_absolute() else (self.root / p)

    def data_root(self) -> Path:
        """The data root: $IOT_COMPRESS_DATA_ROOT if set, else ingest.data_root."""
        env = os.environ.get(DATA_ROOT_ENV)
        return Path(env).expanduser() if env else self.path(self.ingest.data_root)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("root")
        return d


# ---- reading YAML ------------------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, reading numbers as YAML 1.2 does: `1e-3`, `1E5`, `-.5`, `1.5e3` are floats.

    PyYAML implements YAML 1.1, whose floats need a dot and a signed exponent
    (`1.0e-3`), so `1e-3` would stay a string. The resolver below is tried
    after YAML 1.1's int and float ones, so `1`, `08` or `1.2.3` are read as before.
    """


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+[eE][-+]?[0-9]+|[0-9]*\.[0-9]+(?:[eE][-+]?[0-9]+)?|[0-9]+\.(?:[eE][-+]?[0-9]+)?)$"),
    list("-+.0123456789"),
)


def read_yaml(path: str | Path, what: str) -> Any:
    """The YAML file at `path` (`what` it is, for the messages); a missing, unreadable or ambiguous file
    (a key twice in one mapping) is a ConfigError naming the file."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found") from None
    try:
        return _parse_yaml(text, str(path))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None


def _parse_yaml(text: str, name: str, where: str = "") -> Any:
    loader = _Loader(text)
    loader.name = name  # the marks (line numbers) of syntax errors name the file
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _refuse_duplicate_keys(node, name, where, set())
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _refuse_duplicate_keys(node: yaml.Node, name: str, where: str, seen_nodes: set[int]) -> None:
    """PyYAML keeps the last of two equal keys; a file that says a thing twice is refused instead."""
    if id(node) in seen_nodes:  # an alias: its anchor was checked
        return
    seen_nodes.add(id(node))
    if isinstance(node, yaml.MappingNode):
        lines: dict[tuple[str, str], int] = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                key, line = (key_node.tag, key_node.value), key_node.start_mark.line + 1
                if key in lines:
                    raise ConfigError(f"{name}: {_join(where, key_node.value)}: duplicate key "
                                      f"(lines {lines[key]} and {line})")
                lines[key] = line
            label = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
            _refuse_duplicate_keys(value_node, name, _join(where, label), seen_nodes)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _refuse_duplicate_keys(item, name, f"{where}[{i}]", seen_nodes)


# ---- loading -----------------------------------------------------------------------------------------------


def default_params_path() -> Path:
    env = os.environ.get(PARAMS_ENV)
    return Path(env) if env else Path("params.yaml")


def load_params(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Params:
    """Load params.yaml, apply `section.key=value` overrides, and type-check it all."""
    path = Path(path) if path is not None else default_params_path()
    raw = read_yaml(path, "params file")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    for item in overrides:
        _apply_override(raw, item)
    fields = _build(Params, {k: v for k, v in raw.items()}, "", skip={"root"})
    return Params(**fields, root=path.resolve().parent)


def _apply_override(raw: dict, item: str) -> None:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r}: expected section.key=value")
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {part} is not a section")
    try:
        node[leaf] = _parse_yaml(value, f"override {item!r}", key)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: the value is not valid YAML: {exc}") from None


def build_dataclass(cls: type, data: Any, where: str):
    """`cls` from a mapping, with the same strict checks as params.yaml (for other config files)."""
    return cls(**_build(cls, data, where))


def _build(cls: type, data: Any, where: str, skip: frozenset | set = frozenset()) -> dict:
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'params'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = [f for f in dataclasses.fields(cls) if f.name not in skip]
    names = [f.name for f in fields]
    unknown = sorted(set(data) - set(names), key=str)
    if unknown:
        raise _unknown_key(unknown[0], names, where)
    missing = [n for n in names if n not in data]
    if missing:
        raise ConfigError(f"{_join(where, missing[0])}: missing key")
    return {f.name: _coerce(hints[f.name], data[f.name], _join(where, f.name), f.metadata) for f in fields}


def _unknown_key(key: Any, names: list[str], where: str, also: str = "") -> ConfigError:
    close = difflib.get_close_matches(str(key), names, n=1)
    hint = f"; did you mean {_join(where, close[0])!r}?" if close else f"; known: {', '.join(names)}{also}"
    return ConfigError(f"{_join(where, str(key))}: unknown key{hint}")


def _coerce(tp: Any, value: Any, where: str, rules: typing.Mapping[str, Any] = types.MappingProxyType({})) -> Any:
    """`value` as type `tp`; `rules` (a field's `checked` metadata) bound its numbers and its mapping's keys."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return tp(**_build(tp, value, where))
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, allowed))}")
        return value
    if origin is tuple:
        (item_tp, _ellipsis) = typing.get_args(tp)
        if value is None:
            value = []
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {_describe(value)}")
        return tuple(_coerce(item_tp, v, f"{where}[{i}]", rules) for i, v in enumerate(value))
    if origin is dict:
        return _coerce_mapping(tp, value, where, rules)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        (tp,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return _coerce(tp, value, where, rules)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if tp is str and value is None:
        return ""
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {_describe(value)}")
    if "range" in rules and (refusal := rules["range"].refusal(value)):
        raise ConfigError(f"{where}: {refusal}")
    return value


def _coerce_mapping(tp: Any, value: Any, where: str, rules: typing.Mapping[str, Any]) -> dict:
    key_tp, value_tp = typing.get_args(tp)
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a mapping, got {_describe(value)}")
    keys: Keys | None = rules.get("keys")
    item_rules = {k: v for k, v in rules.items() if k != "keys"}  # a range bounds the values
    out = {}
    for k, v in value.items():
        key = _coerce(key_tp, k, where)
        if keys is not None and not keys.allows(key):
            raise keys.refusal(key, where)
        out[key] = _coerce(value_tp, v, _join(where, str(k)), item_rules)
    return out


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key
