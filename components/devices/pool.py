"""The device pool file (infra/devices.yaml): typed entries, checked before anything runs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from components.config import ConfigError, read_yaml, validated
from components.settings.base import Section


class McuSpec(Section):
    sram_bytes: int = Field(gt=0)
    flash_bytes: int = Field(gt=0)
    clock_hz: int = Field(gt=0)
    cycles_per_mac: float = Field(gt=0)
    layer_overhead_cycles: int = Field(ge=0, description="0: no fixed cost per layer")
    weight_bytes: int = Field(gt=0)
    bias_bytes: int = Field(gt=0)
    activation_bytes: int = Field(gt=0)
    energy_per_cycle_nj: float | None = Field(default=None, gt=0, description=(
        "the part's energy per clock cycle while it runs, from its datasheet (run current x supply voltage / "
        "clock); absent: no energy figure"))


class Power(Section):
    """What a device draws while it runs an inference, as declared (modelled energy until a meter measures it)."""

    active_w: float = Field(gt=0, description="watts drawn while one inference runs on the device's threads")


class Toleration(Section):
    """A Kubernetes toleration (core/v1 Toleration) of a device's tasks."""

    key: str
    operator: Literal["Equal", "Exists"]
    value: str  # "" with operator Exists
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute", ""]  # "": every effect


class Placement(Section):
    """Where a device's tasks run on a Kubernetes cluster (Kubeflow): the node labels they need and the taints
    they tolerate. Empty: any node (a device reached over the network, or the cluster's own CPUs)."""

    node_selector: dict[str, str] = {}
    tolerations: tuple[Toleration, ...] = ()

    def __hash__(self) -> int:  # a Device stays hashable
        return hash((tuple(sorted(self.node_selector.items())), self.tolerations))

    def to_kubernetes(self) -> tuple[dict[str, str], list[dict[str, str]]]:
        """(nodeSelector, tolerations) as a pod spec spells them."""
        return dict(self.node_selector), [{k: v for k, v in t.model_dump().items() if v} for t in self.tolerations]


class Device(Section):
    name: str
    runtime: str
    threads: int = Field(ge=1)
    queue: str
    pool: str
    reach: str
    cpus: tuple[Annotated[int, Field(ge=0)], ...] = ()
    mcu: McuSpec | None = None
    power: Power | None = None
    kubernetes: Placement = Placement()

    def pinned_cpus(self) -> tuple[int, ...]:
        """The cores timing runs on: `cpus`, else the first `threads` cores this process may use."""
        if self.cpus:
            return self.cpus
        available = sorted(os.sched_getaffinity(0))
        return tuple(available[: self.threads])

    def to_dict(self) -> dict:
        return self.model_dump()


_OPTIONAL = {"cpus": [], "mcu": None}
_TOLERATION_OPTIONAL = {"key": "", "operator": "Equal", "value": "", "effect": ""}  # no key + Exists: every taint


def load_pool(path: Path) -> dict[str, Device]:
    """Every device in the pool file, by name, in file order."""
    raw = read_yaml(path, "device pool file")  # a device named twice is refused, not the last one kept
    entries = raw.get("devices") if isinstance(raw, dict) else None
    if not isinstance(entries, dict) or not entries:
        raise ConfigError(f"{path}: expected a non-empty mapping `devices: {{name: entry}}`")
    other = sorted(set(raw) - {"devices"}, key=str)
    if other:
        raise ConfigError(f"{path}: {other[0]}: unknown key (the pool file holds `devices` only)")
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
    placement = _placement(entry.get("kubernetes"), f"{where}.kubernetes")
    data = {**_OPTIONAL, **entry, "name": name, "kubernetes": placement}
    device = validated(Device, data, where)
    if device.cpus and len(device.cpus) != device.threads:
        raise ConfigError(f"{where}.cpus: {len(device.cpus)} cores listed for {device.threads} threads")
    if (device.runtime == "mcu") != (device.mcu is not None):
        raise ConfigError(f"{where}: an `mcu` section is required for runtime mcu and only there")
    return device


def _placement(raw, where: str) -> dict:
    """The `kubernetes` section with its optional keys filled in (absent: any node)."""
    if raw is None:
        return {"node_selector": {}, "tolerations": []}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping with node_selector and/or tolerations")
    tolerations = raw.get("tolerations") or []  # a tuple in an entry `Device.to_dict` wrote
    if not isinstance(tolerations, (list, tuple)) or not all(isinstance(t, dict) for t in tolerations):
        raise ConfigError(f"{where}.tolerations: expected a list of mappings (key, operator, value, effect)")
    filled = [{**_TOLERATION_OPTIONAL, **t} for t in tolerations]
    for i, t in enumerate(filled):  # what Kubernetes itself would refuse when the pod is created, mid-run
        if t["operator"] == "Exists" and t["value"]:
            raise ConfigError(f"{where}.tolerations[{i}]: operator Exists takes no value (got {t['value']!r})")
        if t["operator"] == "Equal" and not t["key"]:
            raise ConfigError(f"{where}.tolerations[{i}]: operator Equal needs a key")
    return {"node_selector": {}, **raw, "tolerations": filled}


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
