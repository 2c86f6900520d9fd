"""`profile`: which devices, how each layer and whole model is timed, and what the sampler draws."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from components.settings.base import LAYER_KINDS_KEYS, Section


class TimingParams(Section):
    warmup_runs: int = Field(ge=0, description="untimed runs before calibration (caches, allocator, lazy init)")
    min_sample_s: float = Field(gt=0,
        description="one sample loops the inference until at least this long (timer resolution)")
    samples_per_round: int = Field(ge=1, description="samples of one configuration per round-robin visit")
    min_rounds: int = Field(ge=1, description="visits before a configuration's median may be called stable")
    max_repeats: int = Field(ge=1, description="cap on samples per configuration")
    max_time_s: float = Field(gt=0, description="cap on timed seconds per configuration")
    rel_tolerance: float = Field(ge=0, lt=1,
        description="stable: the median moved less than this share in the last round")
    reference_every: int = Field(ge=1,
        description="with a reference model: one reference sample per this many configuration samples")


class ConvRanges(Section):
    in_range: tuple[Annotated[int, Field(ge=1)], ...] = Field(description="[min, max] input channels")
    kernels: tuple[Annotated[int, Field(ge=1)], ...] = Field(description="kernel sizes drawn from")
    strides: tuple[Annotated[int, Field(ge=1)], ...] = Field(description="strides drawn from")
    length_range: tuple[Annotated[int, Field(ge=1)], ...] = Field(
        description="[min, max] input positions (frequency bins)")
    instances: tuple[Annotated[int, Field(ge=1)], ...] = Field(
        description="runs per window (DeepSense: one per interval)")


class SequenceRanges(Section):
    in_range: tuple[Annotated[int, Field(ge=1)], ...] = Field(description="[min, max] input features")
    length_range: tuple[Annotated[int, Field(ge=1)], ...] = Field(
        description="[min, max] sequence length (recurrent) ...")
    instances: tuple[Annotated[int, Field(ge=1)], ...] = Field(description="... or runs per window (linear)")


class SweepBase(Section):
    in_features: int = Field(ge=1)
    kernel: int = Field(ge=1)
    stride: int = Field(ge=1)
    length: int = Field(ge=1)
    instances: int = Field(ge=1)


class SamplerParams(Section):
    seed: int = Field(ge=0, description="seeds the random draws")
    configs_per_kind: int = Field(ge=1,
        description="per layer kind: about half a width sweep around multiples, half random draws")
    models: int = Field(ge=0, description="whole DeepSense models (end-to-end rows)")
    scaled_share: float = Field(ge=0, le=1,
        description="of those, this share is the baseline shrunk as compression shrinks it; the rest random")
    scaled_keep_range: tuple[Annotated[float, Field(gt=0, le=1)], ...] = Field(
        description="[min, max] keep fraction of a scaled baseline's widths (log-uniform)")
    scaled_jitter: float = Field(ge=0,
        description="each layer's width of a scaled baseline also times exp(U(-jitter, jitter))")
    removed_share: float = Field(ge=0, le=1, description=(
        "of the scaled baselines, this share is also shallower: each layer the compressor may remove whole is "
        "removed with probability 1/2 (at least one)"))
    kinds: tuple[str, ...] = Field(description="layer kinds to profile")
    width_range: tuple[Annotated[int, Field(ge=1)], ...] = Field(description="[min, max] output filters / units")
    multiples: tuple[Annotated[int, Field(ge=1)], ...] = Field(
        description="sweeps run through widths k*m-2 .. k*m+2 for the largest of these")
    model_input_shape: tuple[Annotated[int, Field(ge=1)], ...] = Field(
        description="one window (T, sensors, axes, 2, F) for the whole models; empty: ingest's")
    conv1d: ConvRanges = Field(description="the ranges convolution configurations are drawn from")
    recurrent: SequenceRanges = Field(description="the ranges recurrent configurations are drawn from")
    linear: SequenceRanges = Field(description="the ranges linear configurations are drawn from")
    sweep: Annotated[dict[str, SweepBase], LAYER_KINDS_KEYS] = Field(
        description="per kind: the layer whose width is swept (the baseline's own)")


class ProfileParams(Section):
    devices_file: str = Field(description="the device pool (infra/devices.yaml)")
    devices: tuple[str, ...] = Field(description="profile these; empty: every device in the pool")
    output_dir: str = Field(description="one folder per device: profile.parquet, parts/, manifest.json")
    report_dir: str = Field(description="one folder per device: metrics.json, plots")
    max_failed_share: float = Field(ge=0, le=1,
        description="a device failing more than this share of its configurations fails its task")
    item_timeout_s: float = Field(gt=0,
        description="a conversion or timing taking longer is killed and recorded as failed")
    batch_size: int = Field(ge=1,
        description="configurations timed together, round-robin (spreads each one's samples over time)")
    flush_rows: int = Field(ge=1, description="rows per appended parquet part (an interruption loses at most these)")
    timing: TimingParams = Field(
        description="how each configuration is timed (round-robin samples until the median is stable)")
    sampler: SamplerParams = Field(description="what is profiled: layer configurations by kind, and whole models")
