"""An analytic microcontroller target: flash, peak SRAM, MACs and a latency estimate, computed not timed.

The figures are those of an integer deployment in the style of TensorFlow
Lite Micro with CMSIS-NN kernels (Liberis & Lane's resource model), bytes per
weight, bias and activation from the pool file (the default part runs the
16x8 file: int8 weights, int16 activations): weights and
biases live in flash (batch-norm folded into the convolution), activations
live in SRAM, and the SRAM peak is the largest set of tensors alive at once
while the layers run in order. Latency is MACs x cycles per MAC plus a fixed
overhead per layer, over the clock. Nothing here runs on a device; every
row and report says `method: computed`.
"""

from __future__ import annotations

import re

from components.devices.base import Backend
from components.devices.pool import McuSpec
from components.models.spec import BYPASS, LayerSpec, ModelSpec
from components.profiling.items import Item, layer_input_shape, layer_output_elements

METHOD = "computed"
_SENSOR = re.compile(r"^sensor(\d+)\.")


def flash_bytes(layer: LayerSpec, mcu: McuSpec) -> int:
    """Weights and biases of one layer (batch-norm folded into the conv's weights and bias)."""
    i, o = layer.in_features, layer.out_features
    if layer.kind == "conv1d":
        return o * i * layer.kernel * mcu.weight_bytes + o * mcu.bias_bytes
    if layer.kind in ("gru", "lstm"):
        gates = 3 if layer.kind == "gru" else 4
        return gates * (o * i + o * o) * mcu.weight_bytes + 2 * gates * o * mcu.bias_bytes
    return o * i * mcu.weight_bytes + o * mcu.bias_bytes


def _elements(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def scratch_bytes(layer: LayerSpec, mcu: McuSpec) -> int:
    """Working memory a kernel needs beside its input and output."""
    if layer.kind == "conv1d":
        return 2 * layer.in_features * layer.kernel * 2  # CMSIS-NN's int16 im2col buffer, two columns
    if layer.kind in ("gru", "lstm"):
        gates = 3 if layer.kind == "gru" else 4
        state = layer.out_features * (2 if layer.kind == "lstm" else 1) * mcu.activation_bytes
        return gates * layer.out_features * 4 + state  # int32 gate accumulators + the recurrent state
    return 0


def layer_sram(layer: LayerSpec, mcu: McuSpec) -> int:
    io = _elements(layer_input_shape(layer)) + layer_output_elements(layer)
    return io * mcu.activation_bytes + scratch_bytes(layer, mcu)


def _held_bytes(spec: ModelSpec, index: int, mcu: McuSpec) -> int:
    """Tensors kept alive across layer `index` for later layers (DeepSense's per-sensor branches)."""
    match = _SENSOR.match(spec.layers[index].name)
    if not match:
        return 0
    sensor = int(match.group(1))
    held = 0
    last_of_sensor: dict[int, LayerSpec] = {}
    for layer in spec.layers:
        m = _SENSOR.match(layer.name)
        if m:
            last_of_sensor[int(m.group(1))] = layer
    for s, layer in last_of_sensor.items():
        if s < sensor:
            held += layer_output_elements(layer) * mcu.activation_bytes
    if sensor < max(last_of_sensor):
        held += _elements(spec.input_shape) * mcu.activation_bytes  # the window, until the last sensor reads it
    return held


def latency_ms(macs: int, layers: int, mcu: McuSpec) -> float:
    cycles = macs * mcu.cycles_per_mac + layers * mcu.layer_overhead_cycles
    return cycles / mcu.clock_hz * 1000.0


def model_resources(spec: ModelSpec, mcu: McuSpec) -> dict:
    """Flash, peak SRAM (largest live set over the layer order), MACs and latency of a whole model."""
    peaks = [layer_sram(layer, mcu) + _held_bytes(spec, i, mcu) for i, layer in enumerate(spec.layers)
             if layer.kind != BYPASS]
    flash = sum(flash_bytes(layer, mcu) for layer in spec.computing)
    return _figures(flash, max(peaks), spec.macs, len(spec.computing), mcu)


def _figures(flash: int, sram: int, macs: int, layers: int, mcu: McuSpec) -> dict:
    return {
        "method": METHOD,
        "macs": macs,
        "flash_bytes": flash,
        "peak_sram_bytes": sram,
        "latency_ms": latency_ms(macs, layers, mcu),
        "fits_flash": flash <= mcu.flash_bytes,
        "fits_sram": sram <= mcu.sram_bytes,
    }


class McuBackend(Backend):
    runtime = "mcu"
    timed = False

    def compute(self, item: Item, device) -> dict:
        mcu = device.mcu
        if item.model is not None:
            return model_resources(item.model, mcu)
        layer = item.layer
        return _figures(flash_bytes(layer, mcu), layer_sram(layer, mcu), layer.macs, 1, mcu)

    def limits(self, device) -> dict[str, int]:
        return {"flash_bytes": device.mcu.flash_bytes, "peak_sram_bytes": device.mcu.sram_bytes}

    def formula(self, device) -> str:
        m = device.mcu
        return "\n".join([
            f"layer ms = (MACs * {m.cycles_per_mac:g} + {m.layer_overhead_cycles:g}) / {m.clock_hz:g} Hz * 1000",
            "model ms = sum of its layers"])

    def check_device(self, device) -> None:
        if device.mcu is None:
            from components.config import ConfigError

            raise ConfigError(f"device {device.name}: runtime {device.runtime} is computed and needs an `mcu` section")

    def host_runtime(self, device) -> tuple[str, int]:
        """Its integer file runs in LiteRT on this host, for accuracy; its latency is computed."""
        return "tflite", 1

    def version(self) -> str:
        return "analytic integer model (computed, not timed)"
