"""What compression minimises: parameters (DeepIoT), a device's predicted latency (FastDeepIoT), computed figures.

A cost reads a model description with some widths changed and returns one
number in its own unit; the compressor works with it relative to the
baseline's (`relative`), so a budget of 0.07 means "7 % of the baseline's
parameters" or "7 % of its predicted milliseconds". A device whose backend
computes its figures (the microcontroller, after Liberis & Lane) is steered
by the computed milliseconds and also has the backend's hard limits: a
description whose flash or peak SRAM does not fit the part never meets the
budget, whatever its latency.
"""

from __future__ import annotations

from dataclasses import replace

from components.models.spec import BYPASS, ModelConfigError, ModelSpec
from components.profiling.items import Item
from components.pruning.groups import check_supported, input_sources, removable


def resized_spec(spec: ModelSpec, widths: dict[str, int]) -> ModelSpec:
    """`spec` with the named layers' output widths changed and every reader's input width following.

    A width of 0 removes a layer whole (`groups.removable` says which may go): it becomes a `BYPASS`.
    """
    check_supported(spec)
    allowed = None
    layers = list(spec.layers)
    for index, layer in enumerate(layers):
        if widths.get(layer.name) != 0 or layer.kind == BYPASS:
            continue
        allowed = removable(spec) if allowed is None else allowed
        if layer.name not in allowed:
            raise ModelConfigError(f"{spec.arch} layer {layer.name}: cannot be removed whole (only "
                                   f"{', '.join(allowed) or 'no layer'} can); keep at least one of its elements")
        layers[index] = replace(layer, kind=BYPASS, kernel=layer.kernel if layer.kind == "conv1d" else 1)
    spec = spec.with_layers(layers)
    out: dict[str, int] = {}
    resized = []
    for index, layer in enumerate(spec.layers):
        sources = input_sources(spec, index)
        in_features = layer.in_features if sources is None else sum(out[p] * n for p, n in sources)
        out[layer.name] = in_features if layer.kind == BYPASS else widths.get(layer.name, layer.out_features)
        resized.append(replace(layer, in_features=in_features, out_features=out[layer.name]))
    return spec.with_layers(resized)


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


class ComputedCost(Cost):
    """A computed (never timed) device's milliseconds, as its backend computes them, within its hard limits.

    Named after the runtime (`mcu`), so its budget is `compress.budget.<runtime>`.
    """

    unit = "ms"

    def __init__(self, baseline: ModelSpec, backend, device):
        self.name = backend.runtime
        self.backend, self.device = backend, device
        self.limits = backend.limits(device)
        super().__init__(baseline)

    def figures(self, spec: ModelSpec) -> dict:
        return self.backend.compute(Item(model=spec), self.device)

    def value(self, spec: ModelSpec) -> float:
        return float(self.figures(spec)["latency_ms"])

    def fits(self, spec: ModelSpec) -> bool:
        figures = self.figures(spec)
        return all(figures[key] <= limit for key, limit in self.limits.items())

    def describe(self, spec: ModelSpec) -> dict[str, float]:
        figures = self.figures(spec)
        return {key: figures[key] for key in ("macs", *self.limits, "latency_ms") if key in figures}
