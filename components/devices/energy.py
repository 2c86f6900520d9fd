"""Energy per inference: measured where the device has a meter, modelled from the pool file's declared figures.

No device here has a meter yet (Linux powercap/RAPL is the next source), so
every figure is modelled and says so: a microcontroller's from its
datasheet's energy per cycle times the cycles its analytic latency implies
(`mcu.energy_per_cycle_nj`); any other device's from its declared active
power times the latency (`power.active_w`). A device that declares neither
gets no energy figure, and the report says what to declare.
"""

from __future__ import annotations


def energy_per_inference(device, latency_ms: float | None) -> dict:
    """{"energy_mj": millijoules per inference or None, "energy_source": "modelled: <basis>" or why there is none}."""
    if latency_ms is None:
        return {"energy_mj": None, "energy_source": "no latency, so no energy"}
    if device.mcu is not None and device.mcu.energy_per_cycle_nj is not None:
        cycles = latency_ms / 1000 * device.mcu.clock_hz
        return {"energy_mj": cycles * device.mcu.energy_per_cycle_nj * 1e-6,
                "energy_source": f"modelled: {device.mcu.energy_per_cycle_nj:g} nJ per cycle (declared) x "
                                 f"{cycles:.0f} cycles"}
    if device.power is not None:
        return {"energy_mj": device.power.active_w * latency_ms,
                "energy_source": f"modelled: {device.power.active_w:g} W active (declared) x the latency"}
    return {"energy_mj": None, "energy_source": f"no energy figure: declare devices.{device.name}.power.active_w "
                                                "(or mcu.energy_per_cycle_nj) in the pool file"}
