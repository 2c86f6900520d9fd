"""The model input a data set gives, known from params alone (before anything is ingested)."""

from __future__ import annotations

from components.config import Params
from components.data import custom, uci_hapt


def input_shape(params: Params) -> tuple[int, ...]:
    """One window's DeepSense input (T, sensors, axes, 2, F) for the configured data set, without reading it.

    What `profile` sizes its whole-model configurations by, so that they are the baseline's shape
    whichever data set a run ingests.
    """
    cfg = params.ingest
    if cfg.dataset == "hhar_raw":
        r = cfg.hhar_raw
        return (r.intervals, 2, 3, 2, r.points_per_interval)
    if cfg.dataset == "uci_hapt":
        h = cfg.uci_hapt
        return (h.intervals, 2, 3, 2, uci_hapt.points_per_interval(h.interval_s))
    if cfg.dataset == "custom":
        c = cfg.custom
        axes = len(next(iter(c.sensors.values())).columns) if c.sensors else 3
        return (c.intervals, len(c.sensors), axes, 2, custom.points_per_interval(c))
    if cfg.dataset == "basic_motions":
        return (cfg.basic_motions.intervals, 2, 3, 2, 100 // cfg.basic_motions.intervals)
    sensors = len(cfg.uci_har.sensors) if cfg.dataset == "uci_har" else 1
    intervals = {"hhar_sa": cfg.hhar_sa, "uci_har": cfg.uci_har, "wisdm": cfg.wisdm}[cfg.dataset].intervals
    return (intervals, sensors, 3, 2, 128 // intervals)
