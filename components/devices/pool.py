"""The device pool file (infra/devices.yaml): typed entries, checked before anything runs."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from components.config import ConfigError, build_dataclass


@dataclass(frozen=True)
class McuSpec:
    sram_bytes: int
    flash_bytes: int
    clock_hz: int
    cycles_per_mac: float
    layer_overhead_cycles: int
    weight_bytes: int
    bias_bytes: int
    activation_bytes: int


@dataclass(frozen=True)
class Device:
    name: str
    runtime: str
    threads: int
    queue: str
    pool: str
    reach: str
    cpus: tuple[int, ...] = ()
    mcu: McuSpec | None = None

    def pinned_cpus(self) -> tuple[int, ...]:
        """The cores timing runs on: `cpus`, else the first `threads` cores this process may use."""
        if self.cpus:
            return self.cpus
        available = sorted(os.sched_getaffinity(0))
        return tuple(available[: self.threads])

    def to_dict(self) -> dict:
        return asdict(self)


_OPTIONAL = {"cpus": [], "mcu": None}


def load_pool(path: Path) -> dict[str, Device]:
    """Every device in the pool file, by name, in file order."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: device pool file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    entries = raw.get("devices") if isinstance(raw, dict) else None
    if not isinstance(entries, dict) or not entries:
        raise ConfigError(f"{path}: expected a non-empty mapping `devices: {{name: entry}}`")
    pool = {}
    for name, entry in entries.items():
        if not isinstance(entry, dict):
            raise ConfigError(f"{path}: devices.{name}: expected a mapping")
        pool[str(name)] = _device(str(name), entry, f"{path}: devices.{name}")
    return pool


def device_from_dict(entry: dict, where: str) -> Device:
    """A pool entry as `Device.to_dict` wrote it (a saved latency model keeps the entry it computes for)."""
    if not isinstance(entry, dict) or "name" not in entry:
        raise ConfigError(f"{where}: expected a pool entry with its name")
    return _device(str(entry["name"]), entry, where)


def _device(name: str, entry: dict, where: str) -> Device:
    data = {**_OPTIONAL, **entry, "name": name}
    device = build_dataclass(Device, data, where)
    if device.threads < 1:
        raise ConfigError(f"{where}.threads: must be at least 1")
    if device.cpus and len(device.cpus) != device.threads:
        raise ConfigError(f"{where}.cpus: {len(device.cpus)} cores listed for {device.threads} threads")
    if (device.runtime == "mcu") != (device.mcu is not None):
        raise ConfigError(f"{where}: an `mcu` section is required for runtime mcu and only there")
    return device


def select(pool: dict[str, Device], names: tuple[str, ...] | list[str]) -> list[Device]:
    """The named devices (all when `names` is empty), refusing unknown names."""
    if not names:
        return list(pool.values())
    unknown = [n for n in names if n not in pool]
    if unknown:
        raise ConfigError(f"unknown device {unknown[0]!r}; the pool has: {', '.join(pool)}")
    return [pool[n] for n in names]


def chosen(params, names: list[str] | tuple[str, ...] | None = None) -> list[Device]:
    """The devices a stage works on: `names`, else `profile.devices`, else the whole pool (`profile.devices_file`)."""
    pool = load_pool(params.path(params.profile.devices_file))
    return select(pool, list(names) if names else list(params.profile.devices))
