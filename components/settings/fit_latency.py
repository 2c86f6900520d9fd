"""`fit_latency`: the tree-structured latency model per device, its evaluation and the baselines it is compared with."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from components.settings.base import LAYER_KINDS_KEYS, Section


class TreeParams(Section):
    max_depth: int = Field(ge=0, description="splits from the root to a leaf, at most (0: one leaf)")
    min_leaf: int = Field(ge=1, description="rows on each side of a split, at least")
    min_gain: float = Field(ge=0, lt=1,
        description="a split must cut its node's squared relative error by at least this share")
    multiples: tuple[Annotated[int, Field(ge=2)], ...] = Field(description="k of the `x mod k == 0` splits")
    remainder_splits: bool = Field(
        description="also `x mod K < c` for the largest multiple K (a tile boundary inside the period)")
    max_thresholds: int = Field(ge=1, description="interval candidates per variable and node (quantiles of its values)")


class BoostedParams(Section):
    n_estimators: int = Field(ge=1, description="boosting rounds")
    max_depth: int = Field(ge=1, description="depth of each tree")
    learning_rate: float = Field(gt=0, description="shrinkage per round")


class ForestParams(Section):
    n_estimators: int = Field(ge=1, description="trees in the forest")
    min_samples_leaf: int = Field(ge=1, description="rows per leaf at least")


class FitLatencyParams(Section):
    output_dir: str = Field(description="one folder per device: latency_model.json, rules.txt")
    report_dir: str = Field(description="one folder per device: metrics.json, the evaluation table, figures")
    target: Literal["ratio", "ms"] = Field(
        description="fit each row's ratio to the reference model (times its median ms) or its ms")
    seed: int = Field(ge=0, description="seeds the evaluation folds and the baselines")
    folds: int = Field(ge=2,
        description="evaluation: each kind's configurations in this many parts, each held out once")
    prune_share: float = Field(ge=0, lt=1, description="share of the fitting rows kept aside to prune each tree")
    min_rows: int = Field(ge=2,
        description="a layer kind with fewer usable rows gets the conservative fallback (flagged)")
    full_overhead_models: int = Field(ge=0,
        description="whole-model rows needed to fit a scale per layer kind + offset (fewer: one scale)")
    within: float = Field(gt=0, description="the band of the \"within\" metric (0.1: predictions within +-10 %)")
    split_variables: tuple[str, ...] = Field(description="what the trees may split on (intervals)")
    modular_variables: tuple[str, ...] = Field(description="of those, which may also get `mod` splits (widths)")
    leaf_variables: Annotated[dict[str, tuple[str, ...]], LAYER_KINDS_KEYS] = Field(
        description="per layer kind: the leaves' regressors")
    tree: TreeParams = Field(description="the tree-structured linear regression (FastDeepIoT)")
    boosted: BoostedParams = Field(description="the nn-Meter-style baselines, on the same rows and variables")
    forest: ForestParams = Field(description="random forest on log latency (nn-Meter's own predictor)")
