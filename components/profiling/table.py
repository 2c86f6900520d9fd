"""The profile table of one device: an append-only log of parquet parts, and the table built from it.

Rows are appended as small parquet files under `parts/`, each written to a
temporary name and renamed, so an interrupted run leaves only whole parts.
A rerun reads the keys already in the log and profiles only the rest: it
picks up where it stopped and never writes a row twice. `manifest.json` holds
what the rows depend on (the device entry, the timing protocol, the runtime's
version); if that changed, the old rows no longer describe this device and
the log starts afresh, saying so.
"""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from components.artifacts.atomic import write_text_atomic
from components.artifacts.seals import seal

log = logging.getLogger(__name__)

TABLE_FILE, MANIFEST_FILE, PARTS_DIR = "profile.parquet", "manifest.json", "parts"

SCHEMA = pa.schema([
    ("device", pa.string()), ("runtime", pa.string()), ("runtime_version", pa.string()),
    ("method", pa.string()),  # timed | computed
    ("kind", pa.string()), ("sweep", pa.string()), ("config_id", pa.string()), ("config", pa.string()),
    ("in_features", pa.int64()), ("out_features", pa.int64()), ("kernel", pa.int64()), ("stride", pa.int64()),
    ("length", pa.int64()), ("instances", pa.int64()), ("layers", pa.int64()),
    ("macs", pa.int64()), ("flops", pa.int64()), ("params", pa.int64()),
    ("input_bytes", pa.int64()), ("output_bytes", pa.int64()), ("weight_bytes", pa.int64()),
    ("bytes_read", pa.int64()), ("bytes_written", pa.int64()),
    ("status", pa.string()),  # ok | failed
    ("failed_step", pa.string()), ("error", pa.string()),
    ("latency_ms", pa.float64()), ("q1_ms", pa.float64()), ("q3_ms", pa.float64()), ("iqr_ms", pa.float64()),
    ("repeats", pa.int64()), ("inner_loops", pa.int64()), ("timed_s", pa.float64()), ("stable", pa.bool_()),
    ("convert_s", pa.float64()), ("load_s", pa.float64()),
    # timed beside a reference model (devices/timing.py); empty without one
    ("reference_id", pa.string()), ("reference_ms", pa.float64()),
    ("ratio", pa.float64()), ("ratio_q1", pa.float64()), ("ratio_q3", pa.float64()),
    ("flash_bytes", pa.int64()), ("peak_sram_bytes", pa.int64()), ("fits_flash", pa.bool_()),
    ("fits_sram", pa.bool_()),
    ("measured_at", pa.string()),
])

# Columns added after tables were first written: a table without them reads them as empty (None).
OPTIONAL_COLUMNS = ("reference_id", "reference_ms", "ratio", "ratio_q1", "ratio_q3")


def with_optional_columns(table: pa.Table) -> pa.Table:
    """`table` with every missing OPTIONAL_COLUMNS column added, all null."""
    for name in OPTIONAL_COLUMNS:
        if name not in table.column_names:
            table = table.append_column(SCHEMA.field(name), pa.nulls(len(table), SCHEMA.field(name).type))
    return table


class ProfileLog:
    def __init__(self, directory: Path, fingerprint: dict):
        self.directory = directory
        self.parts_dir = directory / PARTS_DIR
        self.fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True))  # as it reads back from JSON

    def open(self) -> set[str]:
        """Prepare the log and return the config ids already in it (all of them: ok and failed)."""
        manifest = self.directory / MANIFEST_FILE
        if manifest.exists() and json.loads(manifest.read_text()) != self.fingerprint:
            old = sum(1 for _ in self.parts_dir.glob("*.parquet"))
            log.warning("%s: the device entry, timing protocol or runtime changed since its %d parts were "
                        "measured; starting a new profile log", self.directory, old)
            shutil.rmtree(self.parts_dir, ignore_errors=True)
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        for tmp in self.parts_dir.glob("*.tmp"):
            tmp.unlink()  # a part whose write was interrupted: its rows are profiled again
        write_text_atomic(manifest, json.dumps(self.fingerprint, indent=2, sort_keys=True))
        return set(self.read().column("config_id").to_pylist())

    def append(self, rows: list[dict]) -> None:
        if not rows:
            return
        table = pa.Table.from_pylist([{name: row.get(name) for name in SCHEMA.names} for row in rows],
                                     schema=SCHEMA)
        index = len(list(self.parts_dir.glob("*.parquet")))
        final = self.parts_dir / f"part-{index:06d}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = final.with_suffix(".tmp")
        pq.write_table(table, tmp)
        tmp.replace(final)

    def read(self) -> pa.Table:
        parts = sorted(self.parts_dir.glob("*.parquet"))
        if not parts:
            return SCHEMA.empty_table()
        return pa.concat_tables(pq.read_table(p, schema=SCHEMA) for p in parts)

    def write_table(self, keys: list[str]) -> Path:
        """profile.parquet: the logged rows of `keys` (this run's configurations), in that order, once each."""
        rows = self.read().to_pylist()
        by_key: dict[str, dict] = {}
        for row in rows:
            by_key.setdefault(row["config_id"], row)
        table = pa.Table.from_pylist([by_key[k] for k in keys if k in by_key], schema=SCHEMA)
        path = self.directory / TABLE_FILE
        tmp = path.with_suffix(".tmp")
        pq.write_table(table, tmp)
        tmp.replace(path)
        seal(self.directory, [TABLE_FILE])
        return path
