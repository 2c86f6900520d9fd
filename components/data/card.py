"""The user split and the data card written next to the windows."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from components.data.errors import DataError
from components.settings.ingest import SplitParams


def user_folds(users: list[str], folds: int, seed: int) -> dict[str, int]:
    """Deal the users into `folds` folds (seeded shuffle, round robin): each user is in exactly one."""
    order = [str(u) for u in np.random.default_rng(seed).permutation(sorted(users))]
    k = max(1, min(folds, len(order)))
    return {user: i % k for i, user in enumerate(order)}


def min_held_out(users: int) -> int:
    """Held-out users the nightly decisions need: at least 4, or 20 % of the users, whichever is more."""
    return max(4, int(np.ceil(0.2 * users)))


def split_by_user(meta: pd.DataFrame, params: SplitParams) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Leave-users-out: (split, fold) per window; every window of a held-out user is `test`, never a random one.

    Users are dealt into `params.folds` folds; the nightly run holds out fold
    `test_fold` (or `test_users` if given). A set that records no users (UEA
    BasicMotions) keeps its published split and has no folds.
    """
    users = sorted(meta["user"].unique())
    if users == ["unknown"] and "published_split" in meta:
        info = {"strategy": "published", "reason": "the data set records no user ids",
                "train_users": [], "test_users": [], "folds": {}}
        split = meta["published_split"].to_numpy().astype(str)
        return split, np.full(len(meta), -1, dtype=np.int16), _with_counts(info, meta["published_split"])
    if params.folds < 2:
        raise DataError("params.yaml", f"ingest.split.folds is {params.folds}: at least 2 folds are needed to hold "
                        "users out", "ingest.split.folds")
    fold_of = user_folds(users, params.folds, params.seed)
    k = max(fold_of.values()) + 1 if fold_of else 0
    if params.test_users:
        unknown = sorted(set(params.test_users) - set(users))
        if unknown:
            raise DataError("params.yaml", f"ingest.split.test_users names users not in the data: {unknown}; "
                            f"the data has {users}", "ingest.split.test_users")
        test = sorted(params.test_users)
    elif len(users) < 2:
        test = []
    else:
        if not 0 <= params.test_fold < k:
            raise DataError("params.yaml", f"ingest.split.test_fold {params.test_fold} is not one of the {k} folds "
                            f"(0..{k - 1})", "ingest.split.test_fold")
        test = sorted(u for u, f in fold_of.items() if f == params.test_fold)
    reserved = _reserved(users, test, params)
    split = np.where(meta["user"].isin(test), "test", np.where(meta["user"].isin(reserved), "reserved", "train"))
    fold = meta["user"].map(fold_of).to_numpy().astype(np.int16)
    info = {"strategy": "leave-users-out", "train_users": [u for u in users if u not in test and u not in reserved],
            "test_users": test, "reserved_users": reserved,
            "seed": params.seed, "folds": {str(i): sorted(u for u, f in fold_of.items() if f == i) for i in range(k)},
            "test_fold": None if params.test_users else params.test_fold}
    if not test:
        info["warning"] = f"only {len(users)} user(s): no user can be held out, the test split is empty"
    elif len(test) < min_held_out(len(users)):
        info["warning"] = (f"{len(test)} held-out user(s) of {len(users)}: fewer than the {min_held_out(len(users))} "
                           "(at least 4, or 20 %) that a one-point difference needs; decisions on them are noisy")
    return split, fold, _with_counts(info, pd.Series(split, index=meta.index))


def _reserved(users: list[str], test: list[str], params: SplitParams) -> list[str]:
    """The users kept out of every stage (`reserve_users`): known users, none of them held out tonight."""
    reserved = sorted(params.reserve_users)
    unknown = sorted(set(reserved) - set(users))
    if unknown:
        raise DataError("params.yaml", f"ingest.split.reserve_users names users not in the data: {unknown}; the data "
                        f"has {users}", "ingest.split.reserve_users")
    both = sorted(set(reserved) & set(test))
    if both:
        raise DataError("params.yaml", f"user(s) {both} are both held out tonight and reserved; a reserved user is "
                        "kept out of every stage, the held-out users decide the gates", "ingest.split.reserve_users")
    return reserved


def _with_counts(info: dict[str, Any], split: pd.Series) -> dict[str, Any]:
    counts = split.value_counts()
    kinds = ("train", "test", "reserved") if info.get("reserved_users") else ("train", "test")
    return info | {"windows": {k: int(counts.get(k, 0)) for k in kinds}}


def build_card(*, dataset: str, meta: pd.DataFrame, label_names, sensors, units, sources, notes, stats,
               split_info, data_hash, sample_rate_hz, layouts, intervals) -> dict[str, Any]:
    def counts(column: str) -> dict[str, int]:
        return {str(k): int(v) for k, v in meta[column].value_counts().sort_index().items()}

    per_user = meta.groupby(["user", "label_name"]).size().unstack(fill_value=0).reindex(columns=list(label_names),
                                                                                         fill_value=0)
    missing = {str(u): [lab for lab in label_names if row[lab] == 0] for u, row in per_user.iterrows()}
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
        "users_missing_classes": {u: labs for u, labs in missing.items() if labs},
        "sampling_rate_hz": stats.get("sampling_rate_hz") or {"nominal": sample_rate_hz},
        "rows_per_file": stats.get("rows_per_file", {}),
        "resampling": stats.get("resampling", {}),
        "time_order": stats.get("time_order", {}),  # file -> rows that stepped back in time and were re-sorted
        "split": split_info,
        "sources": sources,
        "data_hash": data_hash,
        "notes": list(notes),
    }


def card_markdown(card: dict[str, Any]) -> str:
    lines = [f"# Data card: {card['dataset']}", "", f"{card['windows']} windows of {len(card['counts']['user'])} "
             f"users; data hash `{card['data_hash'][:16]}`.", ""]
    lines += ["## Sensors and units", "", "| sensor | unit |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in card["sensors"].items()] + [""]
    if any(v == "standardised" for v in card["sensors"].values()):
        lines += ["Standardised values are not physical units: the physical-range expectations can only check "
                  "that they are finite.", ""]
    for kind in ("split", "user", "device", "label"):
        lines += [f"## Windows per {kind}", "", f"| {kind} | windows |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in card["counts"][kind].items()] + [""]
    lines += ["## Sampling rates (Hz)", "", "```", str(card["sampling_rate_hz"]), "```", ""]
    split = card["split"]
    lines += ["## Held-out users", "", f"strategy: {split['strategy']}; test users: "
              f"{', '.join(split['test_users']) or 'none'}", ""]
    if split.get("reserved_users"):
        lines += [f"Reserved (kept out of every stage): {', '.join(split['reserved_users'])}", ""]
    if split.get("folds"):
        lines += ["| fold | users |", "|---|---|"]
        lines += [f"| {k}{' (held out tonight)' if str(split.get('test_fold')) == k else ''} | {', '.join(v)} |"
                  for k, v in split["folds"].items()] + [""]
    if split.get("warning"):
        lines += [f"**Warning:** {split['warning']}", ""]
    if card.get("users_missing_classes"):
        lines += ["## Users lacking classes", "", "Their per-user macro-F1 averages only the classes they have or are "
                  "predicted.", "", "| user | no windows of |", "|---|---|"]
        lines += [f"| {u} | {', '.join(labs)} |" for u, labs in card["users_missing_classes"].items()] + [""]
    if card["rows_per_file"]:
        lines += ["## Rows read", "", "| file | rows |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in card["rows_per_file"].items()] + [""]
    if card.get("time_order"):
        lines += ["## Rows re-sorted by time", "", "Rows that step back in time from the previous row of their device "
                  "were put back in time order before resampling.", "",
                  "| file | rows | blocks | largest backstep (ms) | beyond tolerance |", "|---|---|---|---|---|"]
        lines += [f"| {k} | {v['rows_re_sorted']} | {v['blocks']} of {v['blocks_read']} | {v['largest_backstep_ms']} | "
                  f"{v['rows_beyond_tolerance']} |" for k, v in card["time_order"].items()] + [""]
    lines += ["## Sources (sha256)", ""] + [f"- `{k}`: `{v}`" for k, v in card["sources"].items()] + [""]
    lines += ["## Notes", ""] + [f"- {n}" for n in card["notes"]]
    return "\n".join(lines) + "\n"
