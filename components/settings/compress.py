"""`compress`: the budget per cost, the accuracy floor, the search, the refit rounds, the selection, the fine-tune."""

from __future__ import annotations

import functools
import re
import typing
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator
from pydantic_core import PydanticCustomError

from components.settings.base import Section, known_keys, rule

Cost = Literal["params", "latency"]


@functools.cache
def _budget_keys() -> tuple[str, ...]:
    """The costs compress steers by: the two it names (`compress.cost`) and each computed runtime's own."""
    from components.devices.base import get_backend, known_runtimes

    return (*typing.get_args(Cost), *(r for r in known_runtimes() if not get_backend(r).timed))


BUDGET_KEYS = known_keys(_budget_keys)


def _device_names(value: dict) -> dict:
    """Keys that can be device names (the pool file itself is checked when a stage loads it: devices/pool.chosen)."""
    for key in value:
        if not re.fullmatch(r"[\w.-]+", str(key)):
            raise PydanticCustomError("device_name", "{key!r} cannot be a device name", {"key": key})
    return value


DEVICE_KEYS = AfterValidator(_device_names)


class ThresholdParams(Section):
    start: float = Field(ge=0, le=1, description="keep-probability below which elements are removed, at first")
    step: float = Field(ge=0, le=1, description="raised by this ...")
    every: int = Field(ge=1, description="... every this many search steps ...")
    limit: float = Field(ge=0, le=1, description="... up to this")


class SearchParams(Section):
    lambda_cost: float = Field(ge=0,
        description="weight of the relative cost against the task loss in the compressor's reward")
    critic_decay: float = Field(ge=0, lt=1,
        description="the critic's moving average: baseline = decay * baseline + (1 - decay) * reward")
    threshold: ThresholdParams = Field(description="the keep-probability threshold's schedule")
    max_steps: int = Field(ge=1, description="search steps at most")
    batch_size: int = Field(ge=1, description="windows per search step")
    learning_rate: float = Field(gt=0, description="the task network, trained under the masks")
    compressor_learning_rate: float = Field(gt=0, description="the compressor's learning rate")
    compressor_hidden: int = Field(ge=1, description="units of the compressor's LSTM")
    init_keep: float = Field(gt=0, lt=1, description="keep-probability every element starts near")
    eval_every: int = Field(ge=1, description="steps between validation checks of the kept structure")
    checkpoint_every: int = Field(ge=1,
        description="steps between checkpoints (an interrupted run resumes from the last)")
    distill: float = Field(ge=0, le=1,
        description="weight of distillation from the baseline in the task network's loss while searching")
    remove_layers: bool = Field(description=(
        "the search may also remove whole layers (a convolution inside a per-sensor or merge stack, a recurrent "
        "layer after another), each by a keep-probability charged the layer's whole predicted cost, fixed cost "
        "included, and only where the validation users lose at most 1 point without it; false: widths only"))


class RefitParams(Section):
    rounds: int = Field(ge=0,
        description="latency cost, timed device: profile what the search visited, refit, search on; 0: never")
    structures: int = Field(ge=0,
        description="the search's most recent distinct candidate structures profiled per round")
    neighbours: tuple[Annotated[float, Field(gt=0)], ...] = Field(
        description="and the last kept structure scaled by these factors (its width neighbours)")
    max_items: int = Field(ge=1, description="whole models + their distinct layers timed per round, at most")
    steps: int = Field(ge=0,
        description="search steps after each refit (more pruning if the refitted model says over budget)")


class SelectParams(Section):
    candidates: int = Field(ge=0,
        description=("latency cost, timed device: the cheapest front candidates above the floor timed, with nudges; 0:"
                     " none"))


class FineTuneParams(Section):
    epochs: int = Field(ge=0, description="0: no fine-tuning")
    patience: int = Field(ge=1, description="epochs without a better validation loss before stopping")
    batch_size: int = Field(ge=1, description="windows per batch")
    learning_rate: float = Field(gt=0, description="Adam's learning rate")
    distill: float = Field(ge=0, le=1, description="weight of distillation from the baseline; 0: labels only")
    temperature: float = Field(gt=0, description="distillation temperature (Hinton et al.)")


class CompressParams(Section):
    output_dir: str = Field(description="one folder per device: model/ (the compressed model), checkpoint")
    report_dir: str = Field(
        description="one folder per device: metrics, comparison table, trajectory and Pareto figures")
    cost: Cost = Field(description="DeepIoT's parameter count or the device's predicted latency; mcu: its own")
    budget: Annotated[dict[str, Annotated[float, Field(gt=0, le=1)]], BUDGET_KEYS] = Field(
        description=("per cost (params, latency, computed runtimes: mcu): relative cost to reach (0.07: 7 % of the "
                     "baseline's)"))
    energy_budget_mj: Annotated[dict[str, Annotated[float, Field(gt=0)]], DEVICE_KEYS] = Field(
        description=("per device name: millijoules per inference at most (measured or modelled, as the device's "
                     "energy is known); the search aims at the smaller of this and the latency budget (latency or "
                     "computed cost only); a device not named: none"))
    budget_margin: float = Field(ge=0, lt=1,
        description="a timed device: the search aims this share under the latency budget (timing noise)")
    measured_tolerance: float = Field(ge=0, lt=1,
        description="a measured ratio this share over the budget still meets it (timing repeatability)")
    max_accuracy_drop: float = Field(ge=0, le=1,
        description=("the floor: the baseline's accuracy on the validation users (train's group) minus this, mean over"
                     " users"))
    fallback: float = Field(ge=0, le=10,
        description=("also fine-tune the structure one step back along the search's path, at this times the aim: "
                     "validate deploys it when the model misses only the accuracy gate; 0: none"))
    nudge_radius: int = Field(ge=0,
        description="latency cost: widths may move up by this to a width predicted no slower")
    quantize: bool = Field(
        description=("a timed device whose runtime has an int8 form: the fine-tuned model's int8 form is a candidate, "
                     "timed and scored beside the float one; validate deploys the fastest at the floor"))
    augment: bool = Field(description="augment batches (search and fine-tuning) with train's rotation, scale and noise")
    baselines: tuple[str, ...] = Field(description="compared at the same budget: l1, uniform")
    seed: int = Field(ge=0, description="seeds the search, the fine-tune and the baselines")
    threads: int = Field(ge=1, description="torch threads")
    search: SearchParams = Field(description="DeepIoT's compressor-critic search")
    refit: RefitParams = Field(
        description="latency cost on a timed device: the latency model made right where the search goes")
    select: SelectParams = Field(
        description="latency cost on a timed device: candidates timed on the device before one is chosen")
    fine_tune: FineTuneParams = Field(description="the chosen structure (and the baselines), fine-tuned after slicing")

    @field_validator("fallback")
    @classmethod
    def _fallback_looser(cls, value: float) -> float:
        if 0 < value <= 1:
            raise rule(f"must be 0 (no fallback) or more than 1 (an aim looser than the budget's), got {value!r}")
        return value
