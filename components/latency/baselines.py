"""The predictors the tree must beat, fitted on the same rows.

- `linear_flops`: latency = a * FLOPs + b by ordinary least squares, the
  "time is proportional to size" assumption that FastDeepIoT argues against;
- `boosted`: gradient-boosted regression trees, and `forest`: a random forest
  (nn-Meter's kernel predictor), both on every variable the tree may use,
  fitted to log latency so that, like the tree, they chase relative error.

Each takes rows as dicts of the variables in `features.VARIABLES`.
"""

from __future__ import annotations

import numpy as np

from components.latency.features import VARIABLES, matrix
from components.settings.fit_latency import BoostedParams, ForestParams


class LinearFlops:
    name = "linear_flops"

    def fit(self, rows: list[dict], y: np.ndarray) -> LinearFlops:
        x = matrix(rows, ["flops"])[:, 0]
        design = np.column_stack([x, np.ones(len(x))])
        (self.per_flop, self.offset), *_ = np.linalg.lstsq(design, y, rcond=None)
        return self

    def predict(self, rows: list[dict]) -> np.ndarray:
        return self.per_flop * matrix(rows, ["flops"])[:, 0] + self.offset


class Boosted:
    name = "boosted"

    def __init__(self, params: BoostedParams, seed: int):
        self.params, self.seed = params, seed

    def fit(self, rows: list[dict], y: np.ndarray) -> Boosted:
        from sklearn.ensemble import GradientBoostingRegressor

        p = self.params
        self.model = GradientBoostingRegressor(n_estimators=p.n_estimators, max_depth=p.max_depth,
                                               learning_rate=p.learning_rate, random_state=self.seed)
        self.model.fit(matrix(rows, VARIABLES), np.log(y))
        return self

    def predict(self, rows: list[dict]) -> np.ndarray:
        return np.exp(self.model.predict(matrix(rows, VARIABLES)))


class Forest:
    name = "forest"

    def __init__(self, params: ForestParams, seed: int):
        self.params, self.seed = params, seed

    def fit(self, rows: list[dict], y: np.ndarray) -> Forest:
        from sklearn.ensemble import RandomForestRegressor

        self.model = RandomForestRegressor(n_estimators=self.params.n_estimators,
                                           min_samples_leaf=self.params.min_samples_leaf, random_state=self.seed,
                                           n_jobs=1)
        self.model.fit(matrix(rows, VARIABLES), np.log(y))
        return self

    def predict(self, rows: list[dict]) -> np.ndarray:
        return np.exp(self.model.predict(matrix(rows, VARIABLES)))
