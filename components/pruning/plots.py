"""Figures of a compression run: the search's trajectory and the accuracy-cost Pareto front."""

from __future__ import annotations

from pathlib import Path

from components.profiling.plots import _save
from components.reports.figures import _pyplot

_COLORS = {"baseline": "k", "deepiot": "tab:blue", "l1": "tab:orange", "uniform": "tab:green"}


def trajectory_png(history, metrics: dict, path: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [r.step for r in history]
    ax.plot(steps, [r.kept_cost for r in history], color="tab:blue", label=f"kept {metrics['cost']} (relative)")
    ax.axhline(metrics["budget"], color="tab:blue", ls="--", lw=0.8, label="budget")
    ax.set_xlabel("search step")
    ax.set_ylabel("relative cost")
    evaluated = [r for r in history if r.accuracy is not None]
    twin = ax.twinx()
    twin.plot([r.step for r in evaluated], [r.accuracy for r in evaluated], "o-", ms=3, color="tab:red",
              label="validation accuracy (kept)")
    twin.set_ylabel("validation accuracy")
    lines = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(lines, [line.get_label() for line in lines], fontsize=7, loc="center right")
    ax.set_title(f"{metrics['device']}: compressor-critic search "
                 f"({'budget met' if metrics['budget_met'] else 'BUDGET NOT MET'})", fontsize=9)
    return _save(plt, fig, path)


def pareto_png(metrics: dict, path: Path, history=()) -> Path:
    """Test accuracy against size (parameters) and, where known, predicted latency and energy per inference.

    Every method is a point, the non-dominated ones joined. The structures
    the search passed through (validation accuracy of the kept structure
    before fine-tuning, every `eval_every` steps) are drawn faintly behind on
    the panel of the cost that steered it, with their own front.
    """
    plt = _pyplot()
    methods = metrics["methods"]
    base = methods["baseline"]
    axes_spec = [("params", "parameters", lambda r: r["params"] / base["params"])]
    if all("predicted_latency_ms" in r for r in methods.values()):
        axes_spec.append(("latency", "predicted latency",
                          lambda r: r["predicted_latency_ms"] / base["predicted_latency_ms"]))
    if all(r.get("energy_mj") for r in methods.values()):
        how = base["energy_source"].split(":")[0]
        axes_spec.append(("energy", f"energy per inference ({how})", lambda r: r["energy_mj"] / base["energy_mj"]))
    fig, axes = plt.subplots(1, len(axes_spec), figsize=(5.5 * len(axes_spec), 4.2), squeeze=False)
    for ax, (key, label, relative) in zip(axes[0], axes_spec):
        if key == metrics["cost"]:
            visited = [(r.kept_cost, r.accuracy) for r in history if r.accuracy is not None]
            if visited:
                ax.scatter(*zip(*visited), s=10, color="tab:blue", alpha=0.25, zorder=2,
                           label="search steps (validation, before fine-tuning)")
                inner = _front(visited)
                ax.plot([p[0] for p in inner], [p[1] for p in inner], color="tab:blue", alpha=0.4, lw=0.8)
            ax.axvline(metrics["budget"], color="0.8", ls="--", lw=0.8, label="budget")
        if key == "energy" and (metrics.get("energy") or {}).get("aim") is not None:
            ax.axvline(metrics["energy"]["aim"], color="0.8", ls=":", lw=0.8, label="energy budget")
        points = [(relative(r), r["test_accuracy"], name) for name, r in methods.items()]
        for cost, acc, name in points:
            ax.scatter([cost], [acc], s=40, color=_COLORS.get(name, "tab:gray"), label=name, zorder=3)
        front = _front(points)
        ax.plot([p[0] for p in front], [p[1] for p in front], color="0.6", lw=1, zorder=1, label="Pareto front")
        ax.set_xscale("log")
        ax.set_xlabel(f"{label} relative to the baseline (log)")
        ax.set_ylabel("accuracy (methods: test, held-out users)")
        ax.legend(fontsize=7)
        ax.set_title(f"{metrics['device']}: accuracy against {label}", fontsize=9)
    fig.tight_layout()
    return _save(plt, fig, path)


def _front(points: list[tuple]) -> list[tuple]:
    """The points no other point beats on both cost (lower) and accuracy (higher), by cost."""
    return sorted(p for p in points if not any(q[0] <= p[0] and q[1] >= p[1] and q[:2] != p[:2] for q in points))
