"""The user split and the data card written next to the windows."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from components.config import SplitParams
from components.data.errors import DataError


def split_by_user(meta: pd.DataFrame, params: SplitParams) -> tuple[np.ndarray, dict[str, Any]]:
    """Leave-users-out: every window of a held-out user goes to `test`, never a random window.

    Held-out users are `params.test_users` if given, else a seeded draw of
    round(test_fraction * users) (at least one when there are two or more).
    A set that records no users (UEA BasicMotions) keeps its published split.
    """
    users = sorted(meta["user"].unique())
    if users == ["unknown"] and "published_split" in meta:
        info = {"strategy": "published", "reason": "the data set records no user ids",
                "train_users": [], "test_users": []}
        return meta["published_split"].to_numpy().astype(str), _with_counts(info, meta["published_split"])
    if params.test_users:
        unknown = sorted(set(params.test_users) - set(users))
        if unknown:
            raise DataError("params.yaml", f"ingest.split.test_users names users not in the data: {unknown}; "
                            f"the data has {users}", "ingest.split.test_users")
        test = sorted(params.test_users)
    elif len(users) < 2:
        test = []
    else:
        n_test = min(len(users) - 1, max(1, round(params.test_fraction * len(users))))
        rng = np.random.default_rng(params.seed)
        test = sorted(str(u) for u in rng.choice(users, size=n_test, replace=False))
    split = np.where(meta["user"].isin(test), "test", "train")
    info = {"strategy": "leave-users-out", "train_users": [u for u in users if u not in test], "test_users": test,
            "seed": params.seed}
    if not test:
        info["warning"] = f"only {len(users)} user(s): no user can be held out, the test split is empty"
    return split, _with_counts(info, pd.Series(split, index=meta.index))


def _with_counts(info: dict[str, Any], split: pd.Series) -> dict[str, Any]:
    counts = split.value_counts()
    return info | {"windows": {k: int(counts.get(k, 0)) for k in ("train", "test")}}


def build_card(*, dataset: str, meta: pd.DataFrame, label_names, sensors, units, sources, notes, stats,
               split_info, data_hash, sample_rate_hz, layouts, intervals) -> dict[str, Any]:
    def counts(column: str) -> dict[str, int]:
        return {str(k): int(v) for k, v in meta[column].value_counts().sort_index().items()}

    return {
        "dataset": dataset,
        "windows": int(len(meta)),
        "labels": list(label_names),
        "sensors": {s: u for s, u in zip(sensors, units)},
        "intervals_per_window": intervals,
        "layout": {k: list(v) for k, v in layouts.items()},
        "counts": {"user": counts("user"), "device": counts("device"), "label": counts("label_name"),
                   "split": counts("split"),
                   "user_label": {f"{u}/{lab}": int(n) for (u, lab), n in
                                  meta.groupby(["user", "label_name"]).size().items()}},
        "sampling_rate_hz": stats.get("sampling_rate_hz") or {"nominal": sample_rate_hz},
        "rows_per_file": stats.get("rows_per_file", {}),
        "resampling": stats.get("resampling", {}),
        "split": split_info,
        "sources": sources,
        "data_hash": data_hash,
        "notes": list(notes),
    }


def card_markdown(card: dict[str, Any]) -> str:
    lines = [f"# Data card: {card['dataset']}", "", f"{card['windows']} windows; data hash `{card['data_hash'][:16]}`.", ""]
    for kind in ("split", "user", "device", "label"):
        lines += [f"## Windows per {kind}", "", f"| {kind} | windows |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in card["counts"][kind].items()] + [""]
    lines += ["## Sampling rates (Hz)", "", "```", str(card["sampling_rate_hz"]), "```", ""]
    lines += ["## Held-out users", "", f"strategy: {card['split']['strategy']}; test users: "
              f"{', '.join(card['split']['test_users']) or 'none'}", ""]
    if card["rows_per_file"]:
        lines += ["## Rows read", "", "| file | rows |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in card["rows_per_file"].items()] + [""]
    lines += ["## Sources (sha256)", ""] + [f"- `{k}`: `{v}`" for k, v in card["sources"].items()] + [""]
    lines += ["## Notes", ""] + [f"- {n}" for n in card["notes"]]
    return "\n".join(lines) + "\n"
