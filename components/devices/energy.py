"""Energy per inference: measured where the device has a meter that can be read, modelled from declared figures.

Measured: the device's power meter (`power.meter`, devices/meters.py) read
around the timing loop; the figure is the joules the timed samples used over
the inferences they ran. Modelled otherwise, and said so: a
microcontroller's from its datasheet's energy per cycle times the cycles its
analytic latency implies (`mcu.energy_per_cycle_nj`); any other device's
from its declared active power times the latency (`power.active_w`). A
device that declares neither gets no energy figure, and the report says what
to declare. Every figure carries its `energy_source`: "measured: ..." or
"modelled: ...".
"""

from __future__ import annotations


def energy_per_inference(device, latency_ms: float | None, metered: dict | None = None) -> dict:
    """{"energy_mj": millijoules per inference or None, "energy_source": "measured: ..."/"modelled: ..." or why
    there is none}. `metered`: what the timing loop's meter read ({"energy_mj", "energy_source", "meter_error"})."""
    metered = metered or {}
    if metered.get("energy_mj") is not None:
        return {"energy_mj": metered["energy_mj"], "energy_source": metered["energy_source"]}
    unread = f" (meter not read: {metered['meter_error']})" if metered.get("meter_error") else ""
    if latency_ms is None:
        return {"energy_mj": None, "energy_source": "no latency, so no energy"}
    if device.mcu is not None and device.mcu.energy_per_cycle_nj is not None:
        cycles = latency_ms / 1000 * device.mcu.clock_hz
        return {"energy_mj": cycles * device.mcu.energy_per_cycle_nj * 1e-6,
                "energy_source": f"modelled: {device.mcu.energy_per_cycle_nj:g} nJ per cycle (declared) x "
                                 f"{cycles:.0f} cycles"}
    if device.power is not None and device.power.active_w is not None:
        return {"energy_mj": device.power.active_w * latency_ms,
                "energy_source": f"modelled: {device.power.active_w:g} W active (declared) x the latency{unread}"}
    return {"energy_mj": None,
            "energy_source": f"no energy figure: declare devices.{device.name}.power.active_w (or "
                             f"mcu.energy_per_cycle_nj, or a power meter) in the pool file{unread}"}


def metered(answer: dict) -> dict:
    """What the timing loop's meter read for one worker answer ({"timing": ..., "meter_error": ...}): the
    `metered` argument of `energy_per_inference`."""
    timing = answer.get("timing") or {}
    return {"energy_mj": timing.get("energy_mj"), "energy_source": timing.get("energy_source"),
            "meter_error": answer.get("meter_error")}


def energy_ratio(compressed: dict, baseline: dict) -> float | None:
    """The compressed model's energy over the baseline's, where both have one from the same kind of source."""
    ce, be = compressed.get("energy_mj"), baseline.get("energy_mj")
    same = (compressed.get("energy_source") or "").split(":")[0] == (baseline.get("energy_source") or "").split(":")[0]
    return ce / be if ce is not None and be and same else None
