"""Typed configuration: params.yaml loaded into frozen dataclasses.

One dataclass per params.yaml section (one section per stage). Loading refuses
unknown keys, missing keys and wrong types with a message that names the key,
so a typo in params.yaml fails before any work starts, not halfway through a
nightly run. `dataclasses.asdict(params)` is what goes to MLflow.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

DATA_ROOT_ENV = "IOT_COMPRESS_DATA_ROOT"
PARAMS_ENV = "IOT_COMPRESS_PARAMS"


class ConfigError(ValueError):
    """params.yaml (or an override) does not match the schema."""


@dataclass(frozen=True)
class PipelineParams:
    experiment: str  # MLflow experiment every stage logs to
    state_dir: str  # ignored folder for tool homes, the default MLflow store, downloads
    runs_dir: str  # run-keyed outputs when the Airflow DAG runs the stages


@dataclass(frozen=True)
class HharRawParams:
    accelerometer_files: tuple[str, ...]  # relative to the data root (or the extracted archive)
    gyroscope_files: tuple[str, ...]  # paired with accelerometer files by user/device
    interval_s: float  # tau: length of one interval
    intervals: int  # T: intervals per sample
    points_per_interval: int  # each interval is resampled to this many points before the FFT
    min_rows_per_interval: int  # an interval with fewer raw rows of a sensor is dropped
    window_stride_intervals: int  # hop between consecutive samples, in intervals
    null_label: Literal["keep", "drop"]  # HHAR's `null` rows: a no-activity class, or dropped
    chunk_rows: int  # rows per streamed chunk; bounds memory


@dataclass(frozen=True)
class WindowSetParams:
    dir: str  # relative to the data root
    intervals: int  # T: each window is cut into T intervals, each FFT'd


@dataclass(frozen=True)
class UciHarParams:
    dir: str  # relative to the data root
    intervals: int
    sensors: tuple[str, ...]  # which of body_acc, body_gyro, total_acc the model sees, each as a DeepSense sensor


@dataclass(frozen=True)
class UciHaptParams:
    dir: str  # UCI's RawData/ folder, relative to the data root
    users: tuple[str, ...]  # e.g. [user01, user02]; empty: every user with files
    activities: Literal["basic", "all"]  # basic: the six activities; all: also the six postural transitions
    interval_s: float  # tau: one interval (a whole number of samples at 50 Hz)
    intervals: int  # T: intervals per sample
    window_stride_intervals: int  # hop between consecutive samples of a run, in intervals


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
    sample_rate_hz: float  # rows are evenly spaced at this rate
    columns: CustomColumns
    time_unit_s: float  # seconds per unit of the time column (1: s, 0.001: ms, 1e-9: ns)
    sensors: dict[str, CustomSensor]  # sensor name -> its axis columns and unit
    labels: tuple[str, ...]  # the classes, in order; rows of other labels are not used; empty: every label found
    interval_s: float
    intervals: int
    window_stride_intervals: int
    chunk_rows: int  # rows per streamed block: bounds memory


@dataclass(frozen=True)
class BasicMotionsParams:
    package: str  # the PyPI package whose data files hold the UEA BasicMotions set
    intervals: int


@dataclass(frozen=True)
class SplitParams:
    folds: int  # users dealt into this many folds (seeded); each user is held out in exactly one
    test_fold: int  # the fold the nightly run holds out (its users decide validate's gates and the champion)
    test_users: tuple[str, ...]  # explicit held-out users instead of test_fold's
    seed: int


@dataclass(frozen=True)
class ExpectationParams:
    accel_abs_max: float  # m/s^2; phones and watches clip well below this
    gyro_abs_max: float  # rad/s
    max_time_backstep_ms: float  # tolerated out-of-order step between consecutive rows of a device
    time_monotonic_mostly: float  # share of rows whose step must be within that tolerance
    min_rows_per_class: int
    min_windows_per_class: int
    example_rows: int  # failing rows quoted per expectation in the report


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


@dataclass(frozen=True)
class DeepSenseParams:
    sensor_filters: int  # per-sensor convolution filters (DeepSense: 64)
    sensor_kernels: tuple[int, ...]  # kernel sizes along frequency, first to last
    first_stride: int  # stride of the first per-sensor convolution, in frequency bins
    merge_filters: int
    merge_kernels: tuple[int, ...]
    rnn: Literal["gru", "lstm"]
    rnn_units: int  # DeepSense: 120
    rnn_layers: int  # DeepSense: 2
    dropout: float


@dataclass(frozen=True)
class CnnParams:
    filters: tuple[int, ...]
    kernel: int
    dropout: float


@dataclass(frozen=True)
class MlpParams:
    units: tuple[int, ...]
    dropout: float


@dataclass(frozen=True)
class ClassicalParams:
    n_estimators: int  # random forest on per-axis statistics
    max_depth: int | None


@dataclass(frozen=True)
class TrainParams:
    output_dir: str
    report_dir: str
    arch: Literal["deepsense", "cnn", "mlp"]
    evaluation: Literal["split", "kfold"]  # split: ingest's held-out users; kfold: every fold of users held out once
    test_users: tuple[str, ...]  # override ingest's held-out users; empty: keep them
    bootstrap: int  # resamples of the held-out users for the 95 % intervals
    seed: int
    threads: int
    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    patience: int  # epochs without a better validation loss before stopping
    validation: Literal["windows", "user"]  # early-stopping set: a share of windows, or one training user
    val_fraction: float  # validation: windows: this share of the training users' windows, stratified by label
    class_weights: bool
    input_norm: Literal["feature", "sensor"]  # standardise each input value, or each sensor as a whole
    noise_std: float  # Gaussian noise added while training, in feature standard deviations; 0: off
    rotation_deg: float  # random rotation of each sensor's axes while training, up to this angle; 0: off
    scale_std: float  # random amplitude scaling while training, 1 + N(0, scale_std); 0: off
    axis_scale_std: float  # random gain per sensor axis, 1 + N(0, axis_scale_std); 0: off
    offset_std: float  # random shift of each axis' interval means, in feature standard deviations; 0: off
    deepsense: DeepSenseParams
    cnn: CnnParams
    mlp: MlpParams
    classical: ClassicalParams


@dataclass(frozen=True)
class TimingParams:
    warmup_runs: int  # untimed runs before calibration (caches, allocator, lazy init)
    min_sample_s: float  # one sample loops the inference until at least this long (timer resolution)
    samples_per_round: int  # samples of one configuration per round-robin visit
    min_rounds: int  # visits before a configuration's median may be called stable
    max_repeats: int  # cap on samples per configuration
    max_time_s: float  # cap on timed seconds per configuration
    rel_tolerance: float  # stable: the median moved less than this share in the last round
    reference_every: int  # with a reference model: one reference sample per this many configuration samples


@dataclass(frozen=True)
class ConvRanges:
    in_range: tuple[int, ...]  # [min, max] input channels
    kernels: tuple[int, ...]
    strides: tuple[int, ...]
    length_range: tuple[int, ...]  # [min, max] input positions (frequency bins)
    instances: tuple[int, ...]  # runs per window (DeepSense: one per interval)


@dataclass(frozen=True)
class SequenceRanges:
    in_range: tuple[int, ...]  # [min, max] input features
    length_range: tuple[int, ...]  # [min, max] sequence length (recurrent) ...
    instances: tuple[int, ...]  # ... or runs per window (linear)


@dataclass(frozen=True)
class SweepBase:
    in_features: int
    kernel: int
    stride: int
    length: int
    instances: int


@dataclass(frozen=True)
class SamplerParams:
    seed: int
    configs_per_kind: int  # per layer kind: about half a width sweep around multiples, half random draws
    models: int  # whole DeepSense models (end-to-end rows)
    scaled_share: float  # of those, this share is the baseline shrunk as compression shrinks it; the rest random
    scaled_keep_range: tuple[float, ...]  # [min, max] keep fraction of a scaled baseline's widths (log-uniform)
    scaled_jitter: float  # each layer's width of a scaled baseline also times exp(U(-jitter, jitter))
    kinds: tuple[str, ...]  # layer kinds to profile
    width_range: tuple[int, ...]  # [min, max] output filters / units
    multiples: tuple[int, ...]  # sweeps run through widths k*m-2 .. k*m+2 for the largest of these
    model_input_shape: tuple[int, ...]  # one window (T, sensors, axes, 2, F) for the whole models; empty: ingest's
    conv1d: ConvRanges
    recurrent: SequenceRanges
    linear: SequenceRanges
    sweep: dict[str, SweepBase]  # per kind: the layer whose width is swept (the baseline's own)


@dataclass(frozen=True)
class ProfileParams:
    devices_file: str  # the device pool (infra/devices.yaml)
    devices: tuple[str, ...]  # profile these; empty: every device in the pool
    output_dir: str  # one folder per device: profile.parquet, parts/, manifest.json
    report_dir: str  # one folder per device: metrics.json, plots
    max_failed_share: float  # a device failing more than this share of its configurations fails its task
    item_timeout_s: float  # a conversion or timing taking longer is killed and recorded as failed
    batch_size: int  # configurations timed together, round-robin (spreads each one's samples over time)
    flush_rows: int  # rows per appended parquet part (an interruption loses at most these)
    timing: TimingParams
    sampler: SamplerParams


@dataclass(frozen=True)
class TreeParams:
    max_depth: int  # splits from the root to a leaf, at most
    min_leaf: int  # rows on each side of a split, at least
    min_gain: float  # a split must cut its node's squared relative error by at least this share
    multiples: tuple[int, ...]  # k of the `x mod k == 0` splits
    remainder_splits: bool  # also `x mod K < c` for the largest multiple K (a tile boundary inside the period)
    max_thresholds: int  # interval candidates per variable and node (quantiles of its values)


@dataclass(frozen=True)
class BoostedParams:
    n_estimators: int
    max_depth: int
    learning_rate: float


@dataclass(frozen=True)
class ForestParams:
    n_estimators: int
    min_samples_leaf: int


@dataclass(frozen=True)
class FitLatencyParams:
    output_dir: str  # one folder per device: latency_model.json, rules.txt
    report_dir: str  # one folder per device: metrics.json, the evaluation table, figures
    target: Literal["ratio", "ms"]  # fit each row's ratio to the reference model (times its median ms) or its ms
    seed: int
    folds: int  # evaluation: each kind's configurations in this many parts, each held out once
    prune_share: float  # share of the fitting rows kept aside to prune each tree
    min_rows: int  # a layer kind with fewer usable rows gets the conservative fallback (flagged)
    full_overhead_models: int  # whole-model rows needed to fit a scale per layer kind + offset (fewer: one scale)
    within: float  # the band of the "within" metric (0.1: predictions within +-10 %)
    split_variables: tuple[str, ...]  # what the trees may split on (intervals)
    modular_variables: tuple[str, ...]  # of those, which may also get `mod` splits (widths)
    leaf_variables: dict[str, tuple[str, ...]]  # per layer kind: the leaves' regressors
    tree: TreeParams
    boosted: BoostedParams  # the nn-Meter-style baselines, on the same rows and variables
    forest: ForestParams


@dataclass(frozen=True)
class ThresholdParams:
    start: float  # keep-probability below which elements are removed, at first
    step: float  # raised by this ...
    every: int  # ... every this many search steps ...
    limit: float  # ... up to this


@dataclass(frozen=True)
class SearchParams:
    lambda_cost: float  # weight of the relative cost against the task loss in the compressor's reward
    critic_decay: float  # the critic's moving average: baseline = decay * baseline + (1 - decay) * reward
    threshold: ThresholdParams
    max_steps: int
    batch_size: int
    learning_rate: float  # the task network, trained under the masks
    compressor_learning_rate: float
    compressor_hidden: int
    init_keep: float  # keep-probability every element starts near
    eval_every: int  # steps between validation checks of the kept structure
    checkpoint_every: int  # steps between checkpoints (an interrupted run resumes from the last)
    distill: float  # weight of distillation from the baseline in the task network's loss while searching


@dataclass(frozen=True)
class RefitParams:
    rounds: int  # latency cost, timed device: profile what the search visited, refit, search on; 0: never
    structures: int  # the search's most recent distinct candidate structures profiled per round
    neighbours: tuple[float, ...]  # and the last kept structure scaled by these factors (its width neighbours)
    max_items: int  # whole models + their distinct layers timed per round, at most
    steps: int  # search steps after each refit (more pruning if the refitted model says over budget)


@dataclass(frozen=True)
class SelectParams:
    candidates: int  # latency cost, timed device: the cheapest front candidates above the floor timed, with nudges


@dataclass(frozen=True)
class FineTuneParams:
    epochs: int
    patience: int
    batch_size: int
    learning_rate: float
    distill: float  # weight of distillation from the baseline; 0: labels only
    temperature: float


@dataclass(frozen=True)
class CompressParams:
    output_dir: str  # one folder per device: model/ (the compressed model), checkpoint
    report_dir: str  # one folder per device: metrics, comparison table, trajectory and Pareto figures
    cost: Literal["params", "latency"]  # DeepIoT's parameter count or the device's predicted latency; mcu: its own
    budget: dict[str, float]  # per cost (params, latency, mcu): relative cost to reach (0.07: 7 % of the baseline's)
    budget_margin: float  # a timed device: the search aims this share under the latency budget (timing noise)
    measured_tolerance: float  # a measured ratio this share over the budget still meets it (timing repeatability)
    max_accuracy_drop: float  # the floor: baseline validation accuracy minus this
    val_fraction: float  # training windows held out to check accuracy while compressing
    nudge_radius: int  # latency cost: widths may move up by this to a width predicted no slower
    augment: bool  # augment batches (search and fine-tuning) with train's rotation, scale and noise
    baselines: tuple[str, ...]  # compared at the same budget: l1, uniform
    seed: int
    threads: int
    search: SearchParams
    refit: RefitParams
    select: SelectParams
    fine_tune: FineTuneParams


@dataclass(frozen=True)
class GateParams:
    max_accuracy_drop: float  # on-device test accuracy: baseline minus compressed, same device and format
    accuracy_drop_bound: Literal["mean", "upper"]  # judge the mean drop over held-out users, or its 95 % upper end
    min_agreement: float  # share of test windows where the device predicts what the torch model predicts
    latency_budget: float  # measured latency of the compressed model / the baseline's, same device
    size_budget: float  # exported file size of the compressed model / the baseline's (mcu: and fit flash, SRAM)
    max_latency_error: float  # |measured - predicted| / measured ratio of the compressed model to the baseline


@dataclass(frozen=True)
class ValidateParams:
    output_dir: str  # <output_dir>/<device>/{baseline,compressed}/: the exported files and manifest.json
    report_dir: str  # <report_dir>/<device>/: report.json, report.md, report.html
    formats: dict[str, tuple[str, ...]]  # per runtime, the formats validated; the first is deployed and gated
    calibration_windows: int  # training windows that calibrate int8 quantization
    max_test_windows: int  # held-out windows run on the device (0: all)
    convert_timeout_s: float  # one conversion; longer is killed and the format fails
    run_timeout_s: float  # one format's run on the device (load, predict, time)
    seed: int
    gates: GateParams


@dataclass(frozen=True)
class RegisterParams:
    name_prefix: str  # registered model "<prefix>-<dataset>-<device>"
    champion_tolerance: float  # accuracies this close are a tie, broken by measured latency


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


def default_params_path() -> Path:
    env = os.environ.get(PARAMS_ENV)
    return Path(env) if env else Path("params.yaml")


def load_params(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Params:
    """Load params.yaml, apply `section.key=value` overrides, and type-check it all."""
    path = Path(path) if path is not None else default_params_path()
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: params file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
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
    node[leaf] = yaml.safe_load(value)


def build_dataclass(cls: type, data: Any, where: str):
    """`cls` from a mapping, with the same strict checks as params.yaml (for other config files)."""
    return cls(**_build(cls, data, where))


def _build(cls: type, data: Any, where: str, skip: frozenset | set = frozenset()) -> dict:
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'params'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name not in skip]
    unknown = sorted(set(data) - set(names))
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, names, n=1)
        hint = f"; did you mean {_join(where, close[0])!r}?" if close else ""
        raise ConfigError(f"{_join(where, key)}: unknown key{hint}")
    missing = [n for n in names if n not in data]
    if missing:
        raise ConfigError(f"{_join(where, missing[0])}: missing key")
    return {n: _coerce(hints[n], data[n], _join(where, n)) for n in names}


def _coerce(tp: Any, value: Any, where: str) -> Any:
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
        return tuple(_coerce(item_tp, v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        key_tp, value_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {_describe(value)}")
        return {_coerce(key_tp, k, where): _coerce(value_tp, v, _join(where, str(k))) for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        (tp,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return _coerce(tp, value, where)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is str and value is None:
        return ""
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {_describe(value)}")
    return value


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key
