"""The night's figures (matplotlib, headless): every device's Pareto view, and each device's trend over nights."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path

from components.reports.figures import _pyplot
from components.reports.night import Night, pareto_points

# compress's methods are drawn hollow: torch test accuracy and predicted ratios, not the device's measurement
MARKERS = {"baseline": "s", "compressed": "o", "deepiot": "D", "l1": "^", "uniform": "v"}
BUDGET_SHOWN = 1.5  # a gate's budget above this ratio bounds nothing a compressed model reaches: not drawn
LABELS = {"baseline": "baseline (on device)", "compressed": "compressed (on device)",
          "deepiot": "DeepIoT (compress: torch, predicted)", "l1": "l1 at the same budget (compress)",
          "uniform": "uniform at the same budget (compress)"}


def pareto_png(night: Night, path: Path) -> Path:
    """Accuracy against the latency, size and energy ratios, every device in its colour, with the gates' budgets
    dashed; error bars are the 95 % intervals over held-out users."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(18, 5.2), sharey=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    seen_methods = set()
    for i, d in enumerate(night.devices):
        colour = colours[i % len(colours)]
        points = pareto_points(d)
        for ax, key in zip(axes, ("latency_ratio", "size_ratio", "energy_ratio")):
            for p in points:
                if p[key] is None or p["accuracy"] is None:
                    continue
                err = None
                if p["low"] is not None and p["high"] is not None:
                    err = [[max(p["accuracy"] - p["low"], 0)], [max(p["high"] - p["accuracy"], 0)]]
                ax.errorbar([p[key]], [p["accuracy"]], yerr=err, fmt=MARKERS.get(p["method"], "x"), ms=8,
                            color=colour, mfc=colour if p["on_device"] else "none", capsize=3, lw=0.8)
                seen_methods.add(p["method"])
        for ax, gate in zip(axes, ("latency", "size", "energy")):
            limit = next((g["limit"] for g in (d.report or {}).get("gates", ()) if g["name"] == gate), None)
            if limit is not None and limit <= BUDGET_SHOWN:
                ax.axvline(limit, color=colour, ls="--", lw=0.8)
    for ax, what in zip(axes, ("latency", "file size", "energy per inference (measured or modelled)")):
        ax.set_xlabel(f"{what} / the baseline's (dashed: the gate's budget)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (mean over held-out users, 95 % CI)")
    handles = [plt.Line2D([], [], color=colours[i % len(colours)], lw=4, label=d.device)
               for i, d in enumerate(night.devices)]
    handles += [plt.Line2D([], [], color="grey", ls="", marker=MARKERS[m], mfc="grey" if m in ("baseline",
                           "compressed") else "none", label=LABELS[m]) for m in MARKERS if m in seen_methods]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 4), fontsize=8, frameon=False)
    fig.suptitle(f"Accuracy against cost, every device ({night.key})")
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def trend_png(trend: Mapping[str, list[dict]], path: Path, nights: int) -> Path:
    """Per device over the last nights: the night's compressed accuracy (points; filled = passed; squares: read
    back from the registry, for nights before the summary), the registry's champion after that night (line), and
    the measured latency ratio."""
    plt = _pyplot()
    fig, (acc_ax, lat_ax) = plt.subplots(1, 2, figsize=(13, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    times = []
    for i, (device, rows) in enumerate(trend.items()):
        colour = colours[i % len(colours)]
        pairs = [(datetime.fromtimestamp(r["time_ms"] / 1000, timezone.utc), r) for r in rows]
        times += [t for t, _ in pairs]
        champion = [(t, r["champion_accuracy"]) for t, r in pairs if r["champion_accuracy"] is not None]
        if champion:
            acc_ax.step(*zip(*champion), where="post", color=colour, lw=1.5, marker="_", ms=16,
                        label=f"{device} champion")
        for t, r in pairs:
            marker = "s" if r.get("from_registry") else "o"
            if r["accuracy"] is not None:
                acc_ax.plot([t], [r["accuracy"]], marker, color=colour, mfc=colour if r["passed"] else "none")
            if r["latency_ratio"] is not None:
                lat_ax.plot([t], [r["latency_ratio"]], marker, color=colour, mfc=colour if r["passed"] else "none")
        measured = [(t, r["latency_ratio"]) for t, r in pairs if r["latency_ratio"] is not None]
        if measured:
            lat_ax.plot(*zip(*measured), color=colour, lw=0.8, label=device)
    acc_ax.set_ylabel("accuracy (compressed, on device)")
    lat_ax.set_ylabel("latency / the baseline's (measured)")
    for ax in (acc_ax, lat_ax):
        _night_axis(ax, times)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    if not times:
        acc_ax.text(0.5, 0.5, "no night recorded yet", ha="center", va="center", transform=acc_ax.transAxes)
    fig.suptitle(f"The last {nights} nights per device (points: that night's model, filled if it passed, squares "
                 "read from the registry; line: the registry's champion)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _night_axis(ax, times: list[datetime]) -> None:
    """Dates on the x axis, spanning the nights with a margin (at least a day either side of a single night, so
    its ticks name that day rather than matplotlib's default span of years)."""
    ax.set_xlabel("night (UTC)")
    if not times:
        ax.set_xticks([])
        return
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    first, last = min(times), max(times)
    margin = max((last - first) * 0.05, timedelta(hours=12))
    ax.set_xlim(first - margin, last + margin)
    ticks = AutoDateLocator(minticks=3, maxticks=8, tz=timezone.utc)
    ax.xaxis.set_major_locator(ticks)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(ticks, tz=timezone.utc))
