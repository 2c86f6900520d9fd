"""Energy per inference: a power meter read around the timing loop, or declared figures; always labelled."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from components.devices.energy import energy_per_inference, energy_ratio
from components.devices.meters import MeterUnavailable, PowercapMeter, open_meter
from components.devices.pool import load_pool
from components.devices.timing import measure_many
from components.settings.profile import TimingParams

POOL = Path(__file__).resolve().parents[2] / "infra" / "devices.yaml"


def _timing(**changes) -> TimingParams:
    base = dict(warmup_runs=0, min_sample_s=0.004, samples_per_round=2, min_rounds=3, max_repeats=12,
                max_time_s=1.0, rel_tolerance=0.05, reference_every=2)
    return TimingParams(**(base | changes))


def _zone(root: Path, name: str, energy_uj: int, range_uj: int = 2**32, label: str = "package-0") -> Path:
    zone = root / name
    zone.mkdir(parents=True)
    (zone / "energy_uj").write_text(f"{energy_uj}\n")
    (zone / "max_energy_range_uj").write_text(f"{range_uj}\n")
    (zone / "name").write_text(label + "\n")
    return zone


def _with_power(device, **power):
    return type(device).model_validate(device.model_dump() | {"power": power})


def test_modelled_energy_comes_from_declared_figures_and_says_so():
    pool = load_pool(POOL)
    m4 = energy_per_inference(pool["cortex-m4"], 10.0)  # 10 ms at 64 MHz: 640,000 cycles at 0.155 nJ
    assert m4["energy_mj"] == pytest.approx(640_000 * 0.155e-6)
    assert m4["energy_source"].startswith("modelled: 0.155 nJ per cycle (declared)")
    host = _with_power(pool["ort-1t"], active_w=4.0)
    assert energy_per_inference(host, 0.5) == {"energy_mj": 2.0, "energy_source":
                                               "modelled: 4 W active (declared) x the latency"}
    bare = type(pool["ort-1t"]).model_validate(pool["ort-1t"].model_dump() | {"power": None})
    none = energy_per_inference(bare, 0.5)
    assert none["energy_mj"] is None and "declare devices.ort-1t.power.active_w" in none["energy_source"]


def test_every_device_of_the_default_pool_has_an_energy_figure():
    for device in load_pool(POOL).values():
        assert energy_per_inference(device, 1.0)["energy_mj"] is not None, device.name


def test_a_meter_reading_wins_over_the_model_and_a_meter_that_was_not_read_says_why():
    host = _with_power(load_pool(POOL)["ort-1t"], active_w=4.0, meter="powercap")
    measured = energy_per_inference(host, 0.5, {"energy_mj": 1.3, "energy_source": "measured: powercap x"})
    assert measured == {"energy_mj": 1.3, "energy_source": "measured: powercap x"}
    unread = energy_per_inference(host, 0.5, {"energy_mj": None, "meter_error": "readable by root only"})
    assert unread["energy_mj"] == 2.0
    assert unread["energy_source"] == ("modelled: 4 W active (declared) x the latency "
                                       "(meter not read: readable by root only)")
    # ratios only between figures of the same kind
    assert energy_ratio({"energy_mj": 1.0, "energy_source": "modelled: a"},
                        {"energy_mj": 4.0, "energy_source": "modelled: b"}) == 0.25
    assert energy_ratio({"energy_mj": 1.0, "energy_source": "measured: a"},
                        {"energy_mj": 4.0, "energy_source": "modelled: b"}) is None


def test_a_pool_entry_must_say_how_its_energy_is_known_if_it_has_a_power_section():
    from components.config import ConfigError
    from components.devices.pool import device_from_dict

    entry = {"name": "x", "runtime": "onnxruntime", "threads": 1, "queue": "q", "pool": "p", "reach": "local",
             "power": {}}
    with pytest.raises(ConfigError, match="declare active_w"):
        device_from_dict(entry, "pool")


def test_powercap_reads_the_package_zone_and_unwraps_its_counter(tmp_path):
    _zone(tmp_path, "intel-rapl:0:0", 5, label="core")  # a subzone: never the default
    _zone(tmp_path, "intel-rapl:1", 7, label="psys")
    zone = _zone(tmp_path, "intel-rapl:0", 1_000_000, range_uj=2_000_000)
    meter = PowercapMeter(tmp_path)
    assert meter.source == "powercap intel-rapl:0 (package-0)"
    assert meter.joules() == 0.0
    (zone / "energy_uj").write_text("1500000\n")
    assert meter.joules() == pytest.approx(0.5)
    (zone / "energy_uj").write_text("100000\n")  # wrapped at 2,000,000: 600,000 more
    assert meter.joules() == pytest.approx(1.1)
    assert PowercapMeter(tmp_path, "intel-rapl:1").source == "powercap intel-rapl:1 (psys)"


def test_powercap_refuses_plainly_where_there_is_nothing_to_read(tmp_path):
    with pytest.raises(MeterUnavailable, match="no powercap interface"):
        PowercapMeter(tmp_path / "absent")
    with pytest.raises(MeterUnavailable, match="no powercap zone"):
        PowercapMeter(tmp_path)
    with pytest.raises(MeterUnavailable, match="no powercap counter"):
        PowercapMeter(tmp_path, "intel-rapl:9")
    with pytest.raises(MeterUnavailable, match="unknown meter"):
        open_meter({"meter": "wattmeter"})
    with pytest.raises(MeterUnavailable, match="cannot load"):
        open_meter({"meter": "no_such_module:Meter"})
    assert open_meter(None) is None and open_meter({"meter": None}) is None


class _Counter:
    """A powercap counter that a machine drawing `watts` would advance, written atomically as the kernel's reads."""

    def __init__(self, zone: Path, watts: float):
        self.zone, self.watts, self.stop = zone, watts, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        start = time.perf_counter()
        while not self.stop.is_set():
            value = int((time.perf_counter() - start) * self.watts * 1e6)
            tmp = self.zone / "energy_uj.tmp"
            tmp.write_text(f"{value}\n")
            os.replace(tmp, self.zone / "energy_uj")
            time.sleep(0.0005)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def test_the_timing_loop_measures_energy_per_inference_with_a_powercap_meter(tmp_path):
    """A package drawing 3 W while a 2 ms inference runs: about 6 mJ per inference, labelled measured."""
    zone = _zone(tmp_path, "intel-rapl:0", 0)
    with _Counter(zone, 3.0):
        meter = open_meter({"meter": "powercap", "meter_root": str(tmp_path), "meter_zone": None})
        (timing,) = measure_many([lambda: time.sleep(0.002)], _timing(), meter=meter)
    assert timing.energy_source == "measured: powercap intel-rapl:0 (package-0)"
    # the counter advances every ~0.5 ms and the samples last 4 ms or more: within a fifth
    assert timing.energy_mj == pytest.approx(3.0 * timing.latency_ms, rel=0.2)
    assert "energy_mj" in timing.to_dict()
    (plain,) = measure_many([lambda: None], _timing())
    assert "energy_mj" not in plain.to_dict()  # profile tables keep their columns


def test_the_worker_times_on_without_energy_when_the_meter_cannot_be_read(tmp_path):
    from components.devices.worker import _meter

    answer: dict = {}
    assert _meter({"meter": {"meter": "powercap", "meter_root": str(tmp_path / "none")}}, answer) is None
    assert answer["meter_error"].startswith("no powercap interface")


def test_the_energy_gate_compares_like_with_like_and_checks_the_devices_budget():
    from types import SimpleNamespace

    from components.decisions.gates import energy_gate

    g = SimpleNamespace(energy_budget=0.4)
    base = {"energy_mj": 10.0, "energy_source": "modelled: 6 W active (declared) x the latency"}
    comp = {"energy_mj": 3.0, "energy_source": "modelled: 6 W active (declared) x the latency"}
    gate = energy_gate(base, comp, g, None)
    assert (gate.passed, gate.value, gate.limit) == (True, 0.3, 0.4)
    assert gate.detail.startswith("3 mJ vs the baseline's 10 mJ per inference (modelled: 6 W")
    assert energy_gate(base, comp, g, 2.5).passed is False  # within the ratio, over the device's 2.5 mJ
    assert energy_gate(base, comp | {"energy_mj": 5.0}, g, None).passed is False
    # a measured figure against a modelled one: not comparable, said, neither passed nor failed
    mixed = energy_gate(base, comp | {"energy_source": "measured: powercap intel-rapl:0 (package-0)"}, g, None)
    assert mixed.passed is None and "measured: powercap" in mixed.detail
    none = energy_gate(base, {"energy_mj": None, "energy_source": "no energy figure: declare it"}, g, None)
    assert none.passed is None and none.detail == "not applicable: no energy figure: declare it"
