"""`validate`: the formats run on each runtime, and the gates a compressed model must pass."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from components.settings.base import RUNTIME_KEYS, Section


class GateParams(Section):
    max_accuracy_drop: float = Field(ge=0, le=1,
        description=("on-device test accuracy, baseline minus compressed (same device and format), paired per held-out"
                     " user: the mean drop at most this ..."))
    max_accuracy_drop_upper: float = Field(ge=0, le=1,
        description=("... and the upper end of its 95 % interval at most this (the evidence says \"no loss\"); 1: not "
                     "checked"))
    min_agreement: float = Field(ge=0, le=1,
        description="share of test windows where the device predicts what the torch model predicts")
    latency_budget: float = Field(gt=0,
        description="measured latency of the compressed model / the baseline's, same device")
    energy_budget: float = Field(gt=0,
        description=("energy per inference of the compressed model / the baseline's, same device, same kind of "
                     "figure (measured or modelled); and at most compress.energy_budget_mj where it names the device"))
    size_budget: float = Field(gt=0,
        description="exported file size of the compressed model / the baseline's (mcu: and fit flash, SRAM)")
    max_latency_error: float = Field(ge=0,
        description="|measured - predicted| / measured ratio of the compressed model to the baseline")


class ValidateParams(Section):
    output_dir: str = Field(
        description="<output_dir>/<device>/{baseline,compressed}/: the exported files and manifest.json")
    report_dir: str = Field(description="<report_dir>/<device>/: report.json, report.md, report.html")
    formats: Annotated[dict[str, tuple[str, ...]], RUNTIME_KEYS] = Field(
        description=("per runtime, the formats validated; the first is deployed and gated, unless compress chose a "
                     "form (its deploy.json: float or int8), which then goes first"))
    calibration_windows: int = Field(ge=1, description="training windows that calibrate int8 quantization")
    max_test_windows: int = Field(ge=0, description="held-out windows run on the device (0: all)")
    convert_timeout_s: float = Field(gt=0, description="one conversion; longer is killed and the format fails")
    run_timeout_s: float = Field(gt=0, description="one format's run on the device (load, predict, time)")
    seed: int = Field(ge=0, description="seeds the test and calibration windows drawn")
    gates: GateParams = Field(
        description="what the compressed model, in the device's deployed format, must show against the baseline")
