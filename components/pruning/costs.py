"""What compression minimises: parameters (DeepIoT), a device's predicted latency (FastDeepIoT), MCU resources.

A cost reads a model description with some widths changed and returns one
number in its own unit; the compressor works with it relative to the
baseline's (`relative`), so a budget of 0.07 means "7 % of the baseline's
parameters" or "7 % of its predicted milliseconds". The microcontroller cost
(Liberis & Lane) also has hard limits: a description whose flash or peak
SRAM does not fit the part never meets the budget, whatever its MACs.
"""

from __future__ import annotations

from dataclasses import replace

from components.devices import mcu as mcu_model
from components.devices.pool import McuSpec
from components.models.spec import ModelConfigError, ModelSpec
from components.pruning.groups import check_supported, input_sources


def resized_spec(spec: ModelSpec, widths: dict[str, int]) -> ModelSpec:
    """`spec` with the named layers' output widths changed and every reader's input width following."""
    check_supported(spec)
    out = {layer.name: widths.get(layer.name, layer.out_features) for layer in spec.layers}
    layers = []
    for index, layer in enumerate(spec.layers):
        sources = input_sources(spec, index)
        in_features = layer.in_features if sources is None else sum(out[p] * n for p, n in sources)
        layers.append(replace(layer, in_features=in_features, out_features=out[layer.name]))
    return spec.with_layers(layers)


class Cost:
    name = ""
    unit = ""

    def __init__(self, baseline: ModelSpec):
        self.baseline_value = self.value(baseline)
        if self.baseline_value <= 0:
            raise ModelConfigError(f"{self.name} cost of the baseline is {self.baseline_value}: cannot compress")

    def value(self, spec: ModelSpec) -> float:
        raise NotImplementedError

    def relative(self, spec: ModelSpec) -> float:
        return self.value(spec) / self.baseline_value

    def fits(self, spec: ModelSpec) -> bool:
        """Hard limits (none but the microcontroller's)."""
        return True

    def describe(self, spec: ModelSpec) -> dict[str, float]:
        return {f"{self.name}_{self.unit}": self.value(spec)}


class ParamsCost(Cost):
    name, unit = "params", "count"

    def value(self, spec: ModelSpec) -> float:
        return float(spec.params)


class LatencyCost(Cost):
    """Predicted milliseconds per window on one device (its fitted latency model)."""

    name, unit = "latency", "ms"

    def __init__(self, baseline: ModelSpec, latency_model, device: str):
        if latency_model.device != device:
            raise ModelConfigError(f"the latency model is for device {latency_model.device!r}, not {device!r}: "
                                   f"use that device's fit_latency output")
        self.model = latency_model
        super().__init__(baseline)

    def value(self, spec: ModelSpec) -> float:
        return float(self.model.predict_model(spec))


class McuCost(Cost):
    """MACs relative to the baseline's, with flash and peak SRAM as hard limits of the part."""

    name, unit = "mcu", "macs"

    def __init__(self, baseline: ModelSpec, mcu: McuSpec):
        self.mcu = mcu
        super().__init__(baseline)

    def value(self, spec: ModelSpec) -> float:
        return float(spec.macs)

    def fits(self, spec: ModelSpec) -> bool:
        figures = mcu_model.model_resources(spec, self.mcu)
        return figures["fits_flash"] and figures["fits_sram"]

    def describe(self, spec: ModelSpec) -> dict[str, float]:
        figures = mcu_model.model_resources(spec, self.mcu)
        return {"macs": figures["macs"], "flash_bytes": figures["flash_bytes"],
                "peak_sram_bytes": figures["peak_sram_bytes"], "latency_ms": figures["latency_ms"]}
