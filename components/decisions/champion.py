"""The registry's champion rule: whether a newly registered version takes `@champion` from the current one."""

from __future__ import annotations

import json

NOT_PROMOTED = "does not beat the champion"  # how the decision reads when the version stays a candidate


def beats(candidate: dict[str, str], champion: dict[str, str], tolerance: float) -> tuple[bool, str]:
    """Whether a version's tags beat the champion's: more accurate, or as accurate (within tolerance) and faster.

    Where both were scored on the same held-out users (their per-user accuracies are in the tags), the
    comparison is paired, user by user: "more accurate" needs the mean gain above `tolerance` *and* its 95 %
    interval above zero; a gain the interval cannot tell from noise counts as "as accurate". Otherwise the
    means over each one's own held-out users are compared, and the decision says their intervals.
    """
    from components.reports.tables import interval_text
    from components.stats.intervals import paired_ci

    acc_c, acc_h = float(candidate["accuracy"]), float(champion["accuracy"])
    lat_c, lat_h = float(candidate["latency_ms"]), float(champion["latency_ms"])
    faster = f"faster ({lat_c:.4g} vs {lat_h:.4g} ms)"
    per_c, per_h = (json.loads(t.get("per_user_accuracy") or "{}") for t in (candidate, champion))
    if len(set(per_c) & set(per_h)) >= 2:
        diff = paired_ci(per_c, per_h)
        said = f"accuracy gain per user {interval_text(diff, 4)}"
        if diff["mean"] > tolerance and diff["low"] > 0:
            return True, f"more accurate than the champion on the same held-out users: {said}"
        if diff["mean"] >= -tolerance and lat_c < lat_h:
            return True, f"as accurate as the champion ({said}) and {faster}"
        return False, f"{NOT_PROMOTED} ({said}; latency {lat_c:.4g} vs {lat_h:.4g} ms)"
    said = f"accuracy {acc_c:.4f}{_ci_text(candidate)} vs {acc_h:.4f}{_ci_text(champion)}, not on the same users"
    if acc_c > acc_h + tolerance:
        return True, f"more accurate than the champion ({said})"
    if acc_c >= acc_h - tolerance and lat_c < lat_h:
        return True, f"as accurate as the champion ({said}) and {faster}"
    return False, f"{NOT_PROMOTED} ({said}; latency {lat_c:.4g} vs {lat_h:.4g} ms)"


def _ci_text(tags: dict[str, str]) -> str:
    if not tags.get("accuracy_ci95"):
        return ""
    low, high = tags["accuracy_ci95"].split(",")
    return f" (95 % CI {float(low):.4f} to {float(high):.4f})"
