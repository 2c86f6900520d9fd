"""`ingest`: which data set, where it lies, how it is cut into windows, how users are split, what is checked."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from components.settings.base import Section


class HharRawParams(Section):
    accelerometer_files: tuple[str, ...] = Field(description="relative to the data root (or the extracted archive)")
    gyroscope_files: tuple[str, ...] = Field(description="paired with accelerometer files by user/device")
    interval_s: float = Field(gt=0, description="tau: length of one interval")
    intervals: int = Field(ge=1, description="T: intervals per sample")
    points_per_interval: int = Field(ge=1, description="each interval is resampled to this many points before the FFT")
    min_rows_per_interval: int = Field(ge=1, description="an interval with fewer raw rows of a sensor is dropped")
    window_stride_intervals: int = Field(ge=1, description="hop between consecutive samples, in intervals")
    null_label: Literal["keep", "drop"] = Field(description="HHAR's `null` rows: a no-activity class, or dropped")
    chunk_rows: int = Field(ge=1, description="rows per streamed chunk; bounds memory")


class WindowSetParams(Section):
    dir: str = Field(description="relative to the data root")
    intervals: int = Field(ge=1, description="T: each window is cut into T intervals, each FFT'd")


class UciHarParams(Section):
    dir: str = Field(description="relative to the data root")
    intervals: int = Field(ge=1, description="T: each 128-sample window is cut into this many intervals")
    sensors: tuple[str, ...] = Field(
        description="which of body_acc, body_gyro, total_acc the model sees, each as a DeepSense sensor")


class UciHaptParams(Section):
    dir: str = Field(description="UCI's RawData/ folder, relative to the data root")
    users: tuple[str, ...] = Field(description="e.g. [user01, user02]; empty: every user with files")
    activities: Literal["basic", "all"] = Field(
        description="basic: the six activities; all: also the six postural transitions")
    interval_s: float = Field(gt=0, description="tau: one interval (a whole number of samples at 50 Hz)")
    intervals: int = Field(ge=1, description="T: intervals per sample")
    window_stride_intervals: int = Field(ge=1, description="hop between consecutive samples of a run, in intervals")


class CustomColumns(Section):
    user: str = Field(description="who was recorded (required)")
    label: str = Field(description="the activity; empty cells: rows outside any activity (required)")
    session: str = Field(description="optional: a recording's id (samples never cross two)")
    time: str = Field(
        description="optional: timestamps in time_unit_s units (a gap ends a run; going back is an error)")
    device: str = Field(description="optional: the recording device")


class CustomSensor(Section):
    columns: tuple[str, ...] = Field(description="one column per axis, e.g. [acc_x, acc_y, acc_z]")
    unit: Literal["m/s^2", "g", "rad/s", "deg/s", "standardised", "unknown"]


class CustomParams(Section):
    path: str = Field(
        description="a CSV or Parquet file of raw rows, relative to the data root or absolute; empty: not configured")
    format: Literal["auto", "csv", "parquet"] = Field(description="auto: by the file's suffix")
    sample_rate_hz: float = Field(gt=0, description="rows are evenly spaced at this rate")
    columns: CustomColumns = Field(description="which column holds what")
    time_unit_s: float = Field(gt=0, description="seconds per unit of the time column (1: s, 0.001: ms, 1e-9: ns)")
    sensors: dict[str, CustomSensor] = Field(
        description="sensor name -> its axis columns and unit (the names are the user's own)")
    labels: tuple[str, ...] = Field(
        description="the classes, in order; rows of other labels are not used; empty: every label found")
    interval_s: float = Field(gt=0, description="tau: length of one interval")
    intervals: int = Field(ge=1, description="T: intervals per sample")
    window_stride_intervals: int = Field(ge=1, description="hop between consecutive samples, in intervals")
    chunk_rows: int = Field(ge=1, description="rows per streamed block: bounds memory")


class BasicMotionsParams(Section):
    package: str = Field(description="the PyPI package whose data files hold the UEA BasicMotions set")
    intervals: int = Field(ge=1, description="T: each window is cut into this many intervals")


class SplitParams(Section):
    folds: int = Field(ge=2,
        description="users dealt into this many folds (seeded); each user is held out in exactly one")
    test_fold: int = Field(ge=0,
        description=("the fold the nightly run holds out (its users decide validate's gates and the champion); < folds"
                     " (ingest checks)"))
    test_users: tuple[str, ...] = Field(description="explicit held-out users instead of test_fold's")
    reserve_users: tuple[str, ...] = Field(
        description=("users kept out of every stage (no training, validation or decision), to score registered models "
                     "on later"))
    seed: int = Field(ge=0, description="the seed that deals users into folds")


class ExpectationParams(Section):
    accel_abs_max: float = Field(gt=0, description="m/s^2; phones and watches clip well below this")
    gyro_abs_max: float = Field(gt=0, description="rad/s")
    max_time_backstep_ms: float = Field(ge=0,
        description="tolerated out-of-order step between consecutive rows of a device")
    time_monotonic_mostly: float = Field(ge=0, le=1,
        description="share of rows whose step must be within that tolerance")
    min_rows_per_class: int = Field(ge=0, description="raw rows each class needs at least")
    min_windows_per_class: int = Field(ge=0, description="windows each class needs at least")
    example_rows: int = Field(ge=0, description="failing rows quoted per expectation in the report")


class IngestParams(Section):
    data_root: str = Field(
        description="where the data sets lie, relative to params.yaml ($IOT_COMPRESS_DATA_ROOT overrides)")
    dataset: Literal["hhar_raw", "hhar_sa", "uci_har", "uci_hapt", "wisdm", "custom", "basic_motions"] = Field(
        description="which data set the pipeline runs on (uci_hapt: UCI HAPT raw sessions, 24 users, the default)")
    output_dir: str = Field(description="ingest's data folder: the windows, the users' split, the data card")
    report_dir: str = Field(description="ingest's reports: the data card, the Great Expectations report")
    download_url: str = Field(description="empty: use the files under data_root")
    download_sha256: str = Field(description="the archive's expected sha256 (checked before it is used)")
    download_dir: str = Field(description="where a downloaded archive is kept and extracted")
    hhar_raw: HharRawParams = Field(description="the UCI HHAR CSVs, cut into DeepSense samples")
    hhar_sa: WindowSetParams = Field(description="HHAR_SA windows (AdaTime's files, 5 users)")
    uci_har: UciHarParams = Field(description="UCI HAR windows (AdaTime's files, 24 subjects)")
    uci_hapt: UciHaptParams = Field(
        description="UCI HAPT raw 50 Hz accelerometer and gyroscope sessions (the default set)")
    wisdm: WindowSetParams = Field(description="WISDM v1.1 windows (AdaTime's files, 30 users)")
    custom: CustomParams = Field(description="your own recordings: one CSV or Parquet file of raw rows")
    basic_motions: BasicMotionsParams = Field(description="the UEA BasicMotions smartwatch set (no user ids)")
    split: SplitParams = Field(description="leave users out: whole users are held out, never random windows")
    expectations: ExpectationParams = Field(
        description="what the Great Expectations suites check of the raw rows and the windows")
