"""One figure per device: latency against width for each layer kind, and latency against FLOPs."""

from __future__ import annotations

from pathlib import Path

from components.profiling.items import LAYER_KINDS
from components.reports.figures import _pyplot


def _title(device, what: str, method: str) -> str:
    how = "computed from the graph, not timed" if method == "computed" else f"timed, {device.threads} thread(s)"
    return f"{device.name} ({device.runtime}; {how}): {what}"


def plot_device(rows: list[dict], device, report_dir: Path) -> list[Path]:
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        return []
    method = ok[0]["method"]
    return [_width_plot(ok, device, method, report_dir / "latency_vs_width.png"),
            _flops_plot(ok, device, method, report_dir / "latency_vs_flops.png")]


def _width_plot(rows: list[dict], device, method: str, path: Path) -> Path:
    plt = _pyplot()
    kinds = [k for k in LAYER_KINDS if any(r["kind"] == k for r in rows)]
    fig, axes = plt.subplots(1, max(len(kinds), 1), figsize=(4.2 * max(len(kinds), 1), 3.8), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        sweep = sorted((r for r in rows if r["kind"] == kind and r["sweep"] == "width"),
                       key=lambda r: r["out_features"])
        others = [r for r in rows if r["kind"] == kind and r["sweep"] != "width"]
        if sweep:
            x = [r["out_features"] for r in sweep]
            y = [r["latency_ms"] for r in sweep]
            err = _iqr_bars(sweep)
            ax.errorbar(x, y, yerr=err, fmt="o-", ms=3, lw=1, capsize=2,
                        label=f"sweep (in={sweep[0]['in_features']}, len={sweep[0]['length']})")
            for r in sweep:
                if r["out_features"] % 16 == 0:
                    ax.axvline(r["out_features"], color="0.85", lw=0.8, zorder=0)
        if others:
            ax.scatter([r["out_features"] for r in others], [r["latency_ms"] for r in others], s=10,
                       alpha=0.5, color="tab:orange", label="random configurations")
        ax.set_title(kind)
        ax.set_xlabel("width (filters / units)")
        ax.set_ylabel("latency per window (ms)")
        ax.legend(fontsize=7)
    fig.suptitle(_title(device, "latency against width", method), fontsize=10)
    return _save(plt, fig, path)


def _iqr_bars(rows: list[dict]):
    if rows[0].get("q1_ms") is None:
        return None
    return [[r["latency_ms"] - r["q1_ms"] for r in rows], [r["q3_ms"] - r["latency_ms"] for r in rows]]


def _flops_plot(rows: list[dict], device, method: str, path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for kind in [*LAYER_KINDS, "model"]:
        sel = [r for r in rows if r["kind"] == kind]
        if sel:
            ax.scatter([r["flops"] for r in sel], [r["latency_ms"] for r in sel], s=12, alpha=0.7, label=kind)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("FLOPs per window")
    ax.set_ylabel("latency per window (ms)")
    ax.legend(fontsize=8)
    ax.set_title(_title(device, "latency against FLOPs", method), fontsize=9)
    return _save(plt, fig, path)


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
