"""Figures of a fitted latency model: the trees, held-out predictions, and the width sweeps."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from components.latency.tree import LinearTree, leaf_formula, split_text
from components.profiling.plots import _save
from components.reports.figures import _pyplot

_COLORS = {"tree": "tab:blue", "linear_flops": "tab:gray", "boosted": "tab:orange", "forest": "tab:green"}


def tree_png(model, path: Path) -> Path:
    """Each kind's tree drawn as boxes: splits on the way down, leaf formulas at the bottom."""
    plt = _pyplot()
    kinds = sorted(model.kinds)
    heights = [max(model.kinds[k].tree.depth, 1) + 1 for k in kinds]
    widths = [max(model.kinds[k].tree.leaves, 1) for k in kinds]
    fig, axes = plt.subplots(len(kinds), 1, figsize=(max(8, 3.3 * max(widths)), 1.5 * sum(heights) + 0.6),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    for ax, kind in zip(axes[:, 0], kinds):
        _draw_tree(ax, model.kinds[kind].tree)
        note = f"  (FALLBACK: {model.kinds[kind].fallback})" if model.kinds[kind].fallback else ""
        ax.set_title(f"{kind}{note}", fontsize=9, loc="left")
    fig.suptitle(f"{model.device} ({model.runtime}): latency trees, ms per window (w, b >= 0)", fontsize=10)
    return _save(plt, fig, path)


def _draw_tree(ax, tree: LinearTree) -> None:
    positions: dict[int, tuple[float, float]] = {}
    next_leaf = [0]

    def place(i: int, depth: int) -> float:
        node = tree.nodes[i]
        if "leaf" in node:
            x = float(next_leaf[0])
            next_leaf[0] += 1
        else:
            x = (place(node["yes"], depth + 1) + place(node["no"], depth + 1)) / 2
        positions[i] = (x, -depth)
        return x

    place(0, 0)
    for i, node in enumerate(tree.nodes):
        x, y = positions[i]
        if "leaf" in node:
            text = _wrap(leaf_formula(node["leaf"], tree.leaf_variables)) + f"\n[{node['leaf']['rows']} rows]"
            ax.text(x, y, text, ha="center", va="top", fontsize=6,
                    bbox={"boxstyle": "round", "fc": "#e8f1fb", "ec": "tab:blue"})
            continue
        ax.text(x, y, split_text(node["split"]), ha="center", va="center", fontsize=7,
                bbox={"boxstyle": "round", "fc": "#fdf0e0", "ec": "tab:orange"})
        for child, label in ((node["yes"], "yes"), (node["no"], "no")):
            cx, cy = positions[child]
            ax.plot([x, cx], [y - 0.12, cy + 0.12], color="0.6", lw=0.8, zorder=0)
            ax.text((x + cx) / 2, (y + cy) / 2, label, fontsize=6, color="0.4", ha="center")
    xs = [p[0] for p in positions.values()]
    ys = [p[1] for p in positions.values()]
    ax.set_xlim(min(xs) - 0.6, max(xs) + 0.6)
    ax.set_ylim(min(ys) - 1.0, max(ys) + 0.4)
    ax.axis("off")


def _wrap(formula: str, per_line: int = 2) -> str:
    terms = formula.split(" + ")
    return "\n+ ".join(" + ".join(terms[i:i + per_line]) for i in range(0, len(terms), per_line))


def predicted_png(points: list[dict], title: str, within: float, path: Path) -> Path:
    """Held-out predictions against measurements, per kind and for whole models, with the +-band."""
    plt = _pyplot()
    from matplotlib.ticker import NullFormatter

    groups = sorted({p["kind"] for p in points}, key=lambda k: (k == "model", k))
    fig, axes = plt.subplots(1, max(len(groups), 1), figsize=(3.6 * max(len(groups), 1), 3.7), squeeze=False)
    for ax, kind in zip(axes[0], groups):
        sel = [p for p in points if p["kind"] == kind]
        for predictor in ("linear_flops", "forest", "boosted", "tree"):
            ps = [p for p in sel if p["predictor"] == predictor]
            if ps:
                ax.scatter([p["measured_ms"] for p in ps], [p["predicted_ms"] for p in ps], s=9,
                           alpha=0.8 if predictor == "tree" else 0.45, color=_COLORS[predictor], label=predictor)
        lo = min(min(p["measured_ms"], p["predicted_ms"]) for p in sel)
        hi = max(max(p["measured_ms"], p["predicted_ms"]) for p in sel)
        line = np.geomspace(max(lo, 1e-6), hi, 50)
        ax.plot(line, line, color="k", lw=0.8)
        ax.fill_between(line, line * (1 - within), line * (1 + within), color="0.85", zorder=0,
                        label=f"+-{within:.0%}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_minor_formatter(NullFormatter())  # minor labels on a short log axis overlap
        ax.set_title("whole models (held out)" if kind == "model" else f"{kind} (held-out configurations)",
                     fontsize=8)
        ax.set_xlabel("measured ms")
        ax.set_ylabel("predicted ms")
        ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=9)
    return _save(plt, fig, path)


def sweeps_png(model, rows_by_kind: dict[str, list[dict]], path: Path) -> Path:
    """The width sweeps as measured, and the model's prediction at every width in between."""
    from components.models.spec import LayerSpec

    plt = _pyplot()
    kinds = [k for k in sorted(rows_by_kind) if any(r["sweep"] == "width" for r in rows_by_kind[k])]
    fig, axes = plt.subplots(1, max(len(kinds), 1), figsize=(4.2 * max(len(kinds), 1), 3.6), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        sweep = sorted((r for r in rows_by_kind[kind] if r["sweep"] == "width"), key=lambda r: r["out_features"])
        first = sweep[0]
        widths = np.arange(min(r["out_features"] for r in sweep), max(r["out_features"] for r in sweep) + 1)
        layers = [LayerSpec("sweep", kind, first["in_features"], int(w), first["kernel"], first["stride"],
                            first["length"], first["instances"]) for w in widths]
        ax.plot(widths, model.predict_layers(layers), color="tab:blue", lw=1, label="model")
        # what the model was fitted on (fit_latency.target: ratio-normalised or raw milliseconds)
        ax.scatter([r["out_features"] for r in sweep], [r.get("fit_ms", r["latency_ms"]) for r in sweep], s=10,
                   color="k", label="measured", zorder=3)
        ax.set_title(f"{kind} (in={first['in_features']}, len={first['length']})", fontsize=8)
        ax.set_xlabel("width (filters / units)")
        ax.set_ylabel("ms per window")
        ax.legend(fontsize=6)
    fig.suptitle(f"{model.device}: width sweeps and the fitted model (all rows)", fontsize=9)
    return _save(plt, fig, path)
