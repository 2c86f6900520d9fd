"""Power meters: a cumulative energy counter read around the timing loop, so energy per inference is measured.

A meter answers one question: how many joules has the part used since some
fixed moment (`joules`). The timing loop reads it before and after every
sample of a configuration; what the samples used, divided by the inferences
they ran, is that configuration's energy per inference, labelled with the
meter's `source`.

Built in: Linux powercap (`powercap`), the kernel's interface to Intel RAPL
and AMD's equivalent: `<root>/<zone>/energy_uj` counts microjoules and wraps
at `max_energy_range_uj`. It measures the whole zone (a package: every core
on it and its uncore) while the loop runs, so other load on the package
counts too; time a device on a quiet machine. Many kernels let only root
read `energy_uj`; the meter then refuses with the reason and the energy
stays modelled. A device backend can bring its own meter (a USB power
monitor, a board's current sense) as `package.module:Class`, built with
no arguments.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Protocol

POWERCAP_ROOT = "/sys/class/powercap"  # the kernel's standard place; a pool entry may name another (tests)


class MeterUnavailable(RuntimeError):
    """The meter cannot be read here (absent, unreadable); the message says why."""


class Meter(Protocol):
    source: str  # what it measures, in words: "powercap intel-rapl:0 (package-0)"

    def joules(self) -> float:
        """Energy used since a fixed moment, in joules; never decreases."""


class PowercapMeter:
    """A powercap zone's energy counter, unwrapped (it may wrap more than once between reads only if they are
    minutes apart at full power; the timing loop reads it every fraction of a second)."""

    def __init__(self, root: str | Path = POWERCAP_ROOT, zone: str | None = None):
        root = Path(root)
        self.zone_dir = root / zone if zone else _package_zone(root)
        counter = self.zone_dir / "energy_uj"
        try:
            self._last = int(counter.read_text())
        except FileNotFoundError:
            raise MeterUnavailable(f"no powercap counter at {counter}") from None
        except PermissionError:
            raise MeterUnavailable(f"{counter} is readable by root only on this kernel") from None
        except (OSError, ValueError) as exc:
            raise MeterUnavailable(f"cannot read {counter}: {exc}") from None
        try:
            self._range = int((self.zone_dir / "max_energy_range_uj").read_text())
        except (OSError, ValueError):
            self._range = 0  # wraps are then not corrected: a decreasing reading is refused instead
        self._counter, self._total_uj = counter, 0
        name = (self.zone_dir / "name").read_text().strip() if (self.zone_dir / "name").exists() else "?"
        self.source = f"powercap {self.zone_dir.name} ({name})"

    def joules(self) -> float:
        now = int(self._counter.read_text())
        step = now - self._last
        if step < 0:
            if self._range <= 0:
                raise MeterUnavailable(f"{self._counter} went backwards and its range is unknown")
            step += self._range
        self._last = now
        self._total_uj += step
        return self._total_uj * 1e-6


def _package_zone(root: Path) -> Path:
    """The first top-level zone whose name is a package (`package-0`): the socket the device's cores are on."""
    if not root.is_dir():
        raise MeterUnavailable(f"no powercap interface at {root} (no RAPL driver, or not Linux)")
    zones = sorted(p for p in root.iterdir() if p.name.count(":") == 1 and (p / "energy_uj").exists())
    for zone in zones:
        name = (zone / "name").read_text().strip() if (zone / "name").exists() else ""
        if name.startswith("package"):
            return zone
    if zones:
        return zones[0]
    raise MeterUnavailable(f"no powercap zone with an energy counter under {root}")


def open_meter(spec: dict | None) -> Meter | None:
    """The meter a pool entry's `power` section names ({"meter", "meter_root", "meter_zone"}), or None."""
    if not spec or not spec.get("meter"):
        return None
    kind = spec["meter"]
    if kind == "powercap":
        return PowercapMeter(spec.get("meter_root") or POWERCAP_ROOT, spec.get("meter_zone"))
    module_name, sep, class_name = kind.partition(":")
    if not sep:
        raise MeterUnavailable(f"unknown meter {kind!r}: `powercap`, or a plug-in as package.module:Class")
    try:
        meter = getattr(importlib.import_module(module_name), class_name)()
    except (ImportError, AttributeError) as exc:
        raise MeterUnavailable(f"meter {kind!r}: cannot load it: {exc}") from exc
    if not hasattr(meter, "joules") or not hasattr(meter, "source"):
        raise MeterUnavailable(f"meter {kind!r} has no joules() or source")
    return meter
