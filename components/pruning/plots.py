"""Figures of a compression run: the search's trajectory and the accuracy-cost Pareto front."""

from __future__ import annotations

from pathlib import Path

from components.plots import _pyplot
from components.profiling.plots import _save

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


def pareto_png(metrics: dict, path: Path) -> Path:
    """Test accuracy against relative cost for every method; the non-dominated ones joined."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    points = [(r["relative_cost"], r["test_accuracy"], name) for name, r in metrics["methods"].items()]
    for cost, acc, name in points:
        ax.scatter([cost], [acc], s=40, color=_COLORS.get(name, "tab:gray"), label=name, zorder=3)
    front = sorted((p for p in points if not any(q[0] <= p[0] and q[1] >= p[1] and q != p for q in points)))
    ax.plot([p[0] for p in front], [p[1] for p in front], color="0.6", lw=1, zorder=1, label="Pareto front")
    ax.axvline(metrics["budget"], color="0.8", ls="--", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel(f"{metrics['cost']} relative to the baseline (log)")
    ax.set_ylabel("test accuracy (held-out users)")
    ax.legend(fontsize=7)
    ax.set_title(f"{metrics['device']}: accuracy against {metrics['cost']}", fontsize=9)
    return _save(plt, fig, path)
