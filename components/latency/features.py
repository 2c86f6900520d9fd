"""The variables a latency model reads from a layer: its raw configuration and FastDeepIoT's explanatory ones.

The profile table carries every one of these as a column, so fitting reads
them from the table and prediction computes them from a `LayerSpec` with the
same function the profiler used (`profiling.items.explanatory`): the two can
never disagree.
"""

from __future__ import annotations

import numpy as np

from components.models.spec import LayerSpec
from components.profiling.items import explanatory

RAW = ("in_features", "out_features", "kernel", "stride", "length", "instances")
EXPLANATORY = ("macs", "flops", "params", "input_bytes", "output_bytes", "weight_bytes", "bytes_read",
               "bytes_written")
VARIABLES = RAW + EXPLANATORY


def layer_values(layer: LayerSpec) -> dict[str, float]:
    values = {name: getattr(layer, name) for name in RAW}
    values.update(explanatory(layer))
    return values


def matrix(rows: list[dict], names: list[str] | tuple[str, ...]) -> np.ndarray:
    """Rows (dicts, e.g. profile-table rows or `layer_values`) as a float matrix of the named columns."""
    return np.array([[float(row[name]) for name in names] for row in rows], dtype=np.float64).reshape(len(rows),
                                                                                                     len(names))


def check_names(names: list[str] | tuple[str, ...], where: str) -> None:
    unknown = [n for n in names if n not in VARIABLES]
    if unknown:
        raise ValueError(f"{where}: unknown variable(s) {unknown}; known: {', '.join(VARIABLES)}")
