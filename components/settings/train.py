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
    merge_filters: int = Field(ge=0, description="filters of the merge convolutions")
    merge_kernels: tuple[Annotated[int, Field(ge=1)], ...] = Field(
        description="kernel sizes of the merge convolutions, first to last")
    rnn: Literal["gru", "lstm"] = Field(description="the recurrent layer's kind")
    rnn_units: int = Field(ge=0, description="DeepSense: 120")
    rnn_layers: int = Field(ge=1, description="DeepSense: 2")
    dropout: float = Field(ge=0, lt=1, description="dropout between the stacks")


class CnnParams(Section):
    filters: tuple[Annotated[int, Field(ge=0)], ...] = Field(description="filters per convolution, first to last")
    kernel: int = Field(ge=1, description="kernel size of every convolution")
    dropout: float = Field(ge=0, lt=1, description="dropout before the classifier")


class MlpParams(Section):
    units: tuple[Annotated[int, Field(ge=0)], ...] = Field(description="units per hidden layer, first to last")
    dropout: float = Field(ge=0, lt=1, description="dropout after each hidden layer")


class ClassicalParams(Section):
    n_estimators: int = Field(ge=1, description="random forest on per-axis statistics")
    max_depth: int | None = Field(ge=1, description="the trees' depth at most; empty: unbounded")


class TrainParams(Section):
    output_dir: str = Field(description="train's data folder: the model, its metrics and history")
    report_dir: str = Field(description="train's reports: metrics, per-user table, confusion matrix, learning curve")
    arch: Literal["deepsense", "cnn", "mlp"] = Field(description="the baseline's architecture")
    evaluation: Literal["split", "kfold"] = Field(
        description="split: ingest's held-out users; kfold: every fold of users held out once")
    test_users: tuple[str, ...] = Field(description="override ingest's held-out users; empty: keep them")
    bootstrap: int = Field(ge=0, description="resamples of the held-out users for the 95 % intervals; 0: none")
    seed: int = Field(ge=0, description="seeds the model's initialisation, the batch order and the augmentation")
    threads: int = Field(ge=1, description="torch threads")
    epochs: int = Field(ge=1, description="epochs at most (early stopping usually ends sooner)")
    batch_size: int = Field(ge=1, description="windows per training batch")
    learning_rate: float = Field(gt=0, description="Adam's learning rate")
    weight_decay: float = Field(ge=0, description="Adam's weight decay")
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
    class_weights: bool = Field(description="weigh the loss by inverse class frequency")
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
    deepsense: DeepSenseParams = Field(
        description="DeepSense (Yao et al. 2017): per-sensor convolutions, a merge stack, a recurrent layer")
    cnn: CnnParams = Field(description="the plain CNN (train.arch: cnn)")
    mlp: MlpParams = Field(description="the MLP (train.arch: mlp)")
    classical: ClassicalParams = Field(
        description="the reference every baseline is compared with: per-axis statistics and a random forest")
