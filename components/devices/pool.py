"""The device pool file (infra/devices.yaml): typed entries, checked before anything runs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from components.config import ConfigError, read_yaml, validated
from components.settings.base import Section, rule


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
    """How a device's energy per inference is known: a meter that measures it, or declared watts that model it.

    With both, the meter is used where it can be read and the declared
    figure otherwise (the report says which, and why the meter was not).
    """

    active_w: float | None = Field(default=None, gt=0, description=(
        "watts drawn while one inference runs on the device's threads (a declared figure: energy is modelled "
        "as this times the latency)"))
    meter: str | None = Field(default=None, description=(
        "a power meter read around the timing loop (energy measured): `powercap` (Linux RAPL), or a plug-in "
        "as package.module:Class"))
    meter_root: str | None = Field(default=None, description="powercap: the sysfs folder (default the kernel's)")
    meter_zone: str | None = Field(default=None, description="powercap: the zone, e.g. intel-rapl:0 (default the "
                                                              "first package)")

    @model_validator(mode="after")
    def _says_something(self) -> Power:
        if self.active_w is None and self.meter is None:
            raise rule("declare active_w (modelled energy), a meter (measured), or both")
        return self

    def meter_spec(self) -> dict | None:
        """What the timing worker opens (devices/meters.open_meter), or None without a meter."""
        return self.model_dump(include={"meter", "meter_root", "meter_zone"}) if self.meter else None


class Toleration(Section):
    """A Kubernetes toleration (core/v1 Toleration) of a device's tasks."""

    key: str = ""  # no key with operator Exists: every taint
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str = ""  # "" with operator Exists
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute", ""] = ""  # "": every effect

    @model_validator(mode="after")
    def _kubernetes_accepts_it(self) -> Toleration:
        """What Kubernetes itself would refuse when the pod is created, mid-run."""
        if self.operator == "Exists" and self.value:
            raise rule(f"operator Exists takes no value (got {self.value!r})")
        if self.operator == "Equal" and not self.key:
            raise rule("operator Equal needs a key")
        return self


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

    @field_validator("cpus")
    @classmethod
    def _one_core_per_thread(cls, cpus: tuple[int, ...], info: ValidationInfo) -> tuple[int, ...]:
        threads = info.data.get("threads")
        if cpus and threads is not None and len(cpus) != threads:
            raise rule(f"{len(cpus)} cores listed for {threads} threads")
        return cpus

    @model_validator(mode="after")
    def _mcu_section_where_runtime_mcu(self) -> Device:
        if (self.runtime == "mcu") != (self.mcu is not None):
            raise rule("an `mcu` section is required for runtime mcu and only there")
        return self

    def pinned_cpus(self) -> tuple[int, ...]:
        """The cores timing runs on: `cpus`, else the first `threads` cores this process may use."""
        if self.cpus:
            return self.cpus
        available = sorted(os.sched_getaffinity(0))
        return tuple(available[: self.threads])

    def to_dict(self) -> dict:
        return self.model_dump()


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
    return validated(Device, {**entry, "name": name}, where)


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
    unknown = [n for n in params.compress.energy_budget_mj if n not in pool]
    if unknown:  # a budget for a device that is not there would silently apply to nothing
        raise ConfigError(f"compress.energy_budget_mj names {unknown[0]!r}, which the pool does not have "
                          f"(it has: {', '.join(pool)})")
    return select(pool, list(names) if names else list(params.profile.devices))
