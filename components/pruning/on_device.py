"""Compression that measures what it steers by: structures timed on the device, against the baseline, same rounds.

A latency model fitted on a generic sample is least sure where compression
ends: small, unevenly pruned models. Two things here close that gap, both on
the device the model is compressed for:

- Refit (`DeviceBench.profile`, then `refit`): the structures the search
  visited (its recent candidates and their width neighbours), whole and
  layer by layer, are profiled once each (a key already in the profile table
  or in this stage's own log is never timed again) and appended to the
  stage's profile log, in the profile table's format; the latency model is
  refitted on the profile table plus those rows. Before refitting, the old
  model's predictions for the new whole models are scored against what was
  measured (`prediction_errors`): out of sample, on exactly the kind of model
  compression produces.
- Measurement (`DeviceBench.time`): the structures the stage might pick are
  timed together with the baseline and the fixed reference model in the
  same rounds; each one's ratio to the reference divided by the baseline's
  is its measured relative latency, and a slow phase of the machine slows
  every side of it.

Everything is timed by the profile stage's machinery (`TimedProfiler`, its
worker processes, its protocol), so a row from here reads like any other.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from components.models.spec import ModelSpec
from components.profiling.items import Item

log = logging.getLogger(__name__)
LOG_DIR = "profile"  # under the stage's output folder: this stage's own profile log (parts/ + manifest)


@dataclass
class DeviceBench:
    """The device's timing setup for one compress run: backend, reference, the stage's own profile log."""

    params: object
    device: object
    reference: Item  # the baseline's shape: every timing is also a ratio to it
    directory: Path  # the stage's profile log
    profile_table: Path | None = None  # the profile stage's table (its keys count as profiled)
    known: set[str] = field(init=False)  # keys profiled on this device: the table's and the log's

    def __post_init__(self):
        from components.devices.base import get_backend
        from components.profiling.runner import fingerprint
        from components.profiling.table import ProfileLog

        self.backend = get_backend(self.device.runtime)
        self.version = self.backend.version()
        self.log = ProfileLog(self.directory, fingerprint(self.params, self.device, self.version, self.reference))
        self.known = set(self.log.open()) | {r["config_id"] for r in self.table_rows()}

    def table_rows(self) -> list[dict]:
        """The profile stage's rows for this device (none if it has no table), read once per run."""
        if not hasattr(self, "_table_rows"):
            self._table_rows: list[dict] = []
            if self.profile_table is not None and self.profile_table.exists():
                import pyarrow.parquet as pq

                from components.artifacts.seals import verify_sealed

                verify_sealed(self.profile_table.parent, [self.profile_table.name],
                              f"run `python -m components profile --device {self.device.name}` again")
                self._table_rows = pq.read_table(self.profile_table).to_pylist()
        return self._table_rows

    def own_rows(self) -> list[dict]:
        return self.log.read().to_pylist()

    def _timed(self, items: list[Item], work: str) -> list[dict]:
        from components.profiling.runner import TimedProfiler

        profiler = TimedProfiler(self.device, self.backend, self.params.profile, self.directory / work, self.version,
                                 reference=self.reference)
        return list(profiler.rows(items))

    def profile(self, items: list[Item]) -> list[dict]:
        """Time the items never profiled on this device before; their rows go to the log. Returns the new rows."""
        todo, seen = [], set()
        for item in items:
            if item.key not in self.known and item.key not in seen:
                todo.append(item)
                seen.add(item.key)
        if not todo:
            return []
        rows = self._timed(todo, "work")
        self.log.append(rows)
        self.known |= {r["config_id"] for r in rows}
        return rows

    def time(self, specs: dict[str, ModelSpec], baseline: ModelSpec) -> dict[str, dict]:
        """Every spec timed now, together with `baseline` and the reference, in the same rounds.

        name -> {"ratio": its time / the baseline's (both as ratios to the
        reference measured alongside, so the phase of the machine cancels),
        "latency_ms", "reference_ms"}. Rows of structures never profiled
        before are kept in the log.
        """
        items = {name: Item(model=spec) for name, spec in specs.items()}
        base = Item(model=baseline)
        unique = list({item.key: item for item in [base, *items.values()]}.values())
        rows = {r["config_id"]: r for r in self._timed(unique, "select")}
        self.log.append([r for key, r in rows.items() if key not in self.known])
        self.known |= set(rows)
        failed = {name: rows[item.key] for name, item in [("baseline", base), *items.items()]
                  if rows[item.key]["status"] != "ok" or not rows[item.key].get("ratio")}
        if failed:
            name, row = next(iter(failed.items()))
            raise RuntimeError(f"{self.device.name}: timing {name} failed at {row.get('failed_step')}: "
                               f"{row.get('error')}")
        base_ratio = rows[base.key]["ratio"]
        return {name: {"ratio": rows[item.key]["ratio"] / base_ratio, "latency_ms": rows[item.key]["latency_ms"],
                       "reference_ms": rows[item.key]["reference_ms"], "config_id": item.key}
                for name, item in items.items()}


# ---- the candidate refit loop -----------------------------------------------------------------------------


def neighbours(spec: ModelSpec, widths: dict[str, int], factors: tuple[float, ...]) -> list[dict[str, int]]:
    """`widths` scaled by each factor (every group, at least one element, at most the baseline's width)."""
    from components.pruning.groups import groups

    limits = {g.layer: g.size for g in groups(spec)}
    out = []
    for f in factors:
        scaled = {name: 0 if w == 0 else int(np.clip(round(w * f), 1, limits[name]))  # removed layers stay removed
                  for name, w in widths.items()}
        if scaled != widths:
            out.append(scaled)
    return out


def visited_items(spec: ModelSpec, structures: list[dict[str, int]], max_items: int) -> list[Item]:
    """Whole models first (what the refit corrects most), then their distinct layers, at most `max_items`."""
    from components.pruning.costs import resized_spec

    specs = [resized_spec(spec, w) for w in structures]
    models = list({Item(model=s).key: Item(model=s) for s in specs}.values())
    layers: dict[str, Item] = {}
    for s in specs:
        for layer in s.computing:
            item = Item(layer=replace(layer, name=f"{layer.kind}.visited"))
            layers.setdefault(item.key, item)
    return (models + list(layers.values()))[:max_items]


def prediction_errors(model, reference: ModelSpec, rows: list[dict]) -> list[dict]:
    """Each whole-model row's measured ratio to the reference against the model's predicted ratio to it."""
    base = model.predict_model(reference)
    out = []
    for r in rows:
        if r["status"] != "ok" or r["kind"] != "model" or not r.get("ratio"):
            continue
        predicted = model.predict_model(Item.from_json(r["config"]).model) / base
        out.append({"config_id": r["config_id"], "measured_ratio": r["ratio"], "predicted_ratio": predicted,
                    "error": (predicted - r["ratio"]) / r["ratio"]})
    return out


def within_shares(errors: list[dict]) -> dict:
    """Share of predictions within +-5 % and +-10 % of the measurement, and the mean absolute error."""
    if not errors:
        return {"candidates": 0}
    e = np.abs([x["error"] for x in errors])
    return {"candidates": len(e), "within_5_pct": float(100 * np.mean(e <= 0.05 + 1e-12)),
            "within_10_pct": float(100 * np.mean(e <= 0.10 + 1e-12)), "mape_pct": float(100 * e.mean())}


def refit(bench: DeviceBench, params, device) -> object:
    """The device's latency model fitted on the profile table plus this stage's rows."""
    from components.latency import fit as fitting

    rows = bench.table_rows() + bench.own_rows()
    usable = fitting.usable_rows(rows, device.name, f"{bench.profile_table} + {bench.directory}",
                                 params.profile.max_failed_share, params.fit_latency.target)
    info = {"refit_rows": len(bench.own_rows()), "source": "compress"}
    return fitting.fit(usable, params.fit_latency, device.name, device.runtime, info)
