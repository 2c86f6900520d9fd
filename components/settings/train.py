"""`train`: the baseline model, its training and augmentation, and the reference forest."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from components.settings.base import Section


class DeepSenseParams(Section):
    sensor_filters: int = Field(ge=0, description="per-sensor convolution filters (DeepSense: 64)")
    sensor_kernels: tuple[Annotated[int, Field(ge=1)], ...] = Field(
        description="kernel sizes along frequency, first to last")
    first_stride: int = Field(ge=1, description="stride of the first per-sensor convolution, in frequency bins")
    merge_filters: int = Field(ge=0)
    merge_kernels: tuple[Annotated[int, Field(ge=1)], ...]
    rnn: Literal["gru", "lstm"]
    rnn_units: int = Field(ge=0, description="DeepSense: 120")
    rnn_layers: int = Field(ge=1, description="DeepSense: 2")
    dropout: float = Field(ge=0, lt=1)


class CnnParams(Section):
    filters: tuple[Annotated[int, Field(ge=0)], ...]
    kernel: int = Field(ge=1)
    dropout: float = Field(ge=0, lt=1)


class MlpParams(Section):
    units: tuple[Annotated[int, Field(ge=0)], ...]
    dropout: float = Field(ge=0, lt=1)


class ClassicalParams(Section):
    n_estimators: int = Field(ge=1, description="random forest on per-axis statistics")
    max_depth: int | None = Field(ge=1)


class TrainParams(Section):
    output_dir: str
    report_dir: str
    arch: Literal["deepsense", "cnn", "mlp"]
    evaluation: Literal["split", "kfold"] = Field(
        description="split: ingest's held-out users; kfold: every fold of users held out once")
    test_users: tuple[str, ...] = Field(description="override ingest's held-out users; empty: keep them")
    bootstrap: int = Field(ge=0, description="resamples of the held-out users for the 95 % intervals; 0: none")
    seed: int = Field(ge=0)
    threads: int = Field(ge=1)
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    learning_rate: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    patience: int = Field(ge=1, description="epochs without a better validation loss before stopping")
    validation: Literal["users", "windows"] = Field(
        description=("early stopping on: users (a group of whole training users, never trained on; compress decides on"
                     " the same users) or windows (a share of every training user's windows, which the model also "
                     "trains on: flattering)"))
    validation_share: float = Field(gt=0, lt=1, description="validation: users: this share of the training users")
    refit_below_users: int = Field(ge=0,
        description=("validation: users: with fewer users than this left to fit on, train again on every training user"
                     " (the validation group too) for the epochs early stopping chose; the baseline has then seen the "
                     "validation users"))
    val_fraction: float = Field(ge=0, lt=1,
        description=("validation: windows (and sets without user ids): this share of the training windows; 0: no "
                     "validation set"))
    class_weights: bool
    input_norm: Literal["feature", "sensor"] = Field(
        description="standardise each input value, or each sensor as a whole")
    noise_std: float = Field(ge=0,
        description="Gaussian noise added while training, in feature standard deviations; 0: off")
    rotation_deg: float = Field(ge=0, le=180,
        description="random rotation of each sensor's axes while training, up to this angle; 0: off")
    scale_std: float = Field(ge=0, description="random amplitude scaling while training, 1 + N(0, scale_std); 0: off")
    axis_scale_std: float = Field(ge=0, description="random gain per sensor axis, 1 + N(0, axis_scale_std); 0: off")
    offset_std: float = Field(ge=0,
        description="random shift of each axis' interval means, in feature standard deviations; 0: off")
    deepsense: DeepSenseParams
    cnn: CnnParams
    mlp: MlpParams
    classical: ClassicalParams
