"""Tree-structured linear regression (FastDeepIoT, Yao et al., SenSys 2018), written from the paper.

A binary tree whose internal nodes split the configurations and whose leaves
are linear models `t = w . x + b` with `w >= 0` and `b >= 0`:

- two kinds of split, over named variables of the configuration:
  intervals (`x < c`) and integer multiples (`x mod k == 0`), because
  execution time jumps where a width stops being a multiple of the vector
  width or tile size, not only where it crosses a size. Beyond the paper,
  optionally (`remainder_splits`) a remainder split `x mod K < c` for the
  largest multiple K (only that one: more candidates overfit): XNNPACK's
  fully-connected kernel, for one, is ~1.8x slower per FLOP when the last
  32-wide tile is at most half full (widths 65..80 take longer than 81..96),
  a step no multiple or interval can express;
- every leaf is fitted by non-negative least squares on *relative* errors
  (each row weighted by 1 / its latency), so a 20 µs layer counts as much as
  a 2 ms one: the figure that matters is the percentage error;
- the tree grows greedily, at each node taking the split that most reduces
  the squared relative error of the two children's fits, within a depth
  limit and a minimum leaf size, then is pruned bottom-up on held-out rows
  (a subtree is replaced by its node's own leaf unless it predicts those
  rows better); the leaves are finally refitted on every row that reaches
  them.

Non-negative weights keep every prediction positive and every leaf readable
("0.8 ns per FLOP plus 3 µs"), and they make time grow with size inside a
leaf, as it does on real hardware.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import nnls

from components.settings.fit_latency import TreeParams

LT, MOD, REM = "lt", "mod", "rem"
_EXACT = 1e-12  # squared relative error per row below which a fit is exact (no split can help)


def nnls_fit(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Non-negative `w`, `b` minimising sum(((x @ w + b) - y) / y)^2; returns (w, b, that sum)."""
    design = np.column_stack([x, np.ones(len(y))]) / y[:, None]
    scale = np.abs(design).max(axis=0)
    scale[scale == 0] = 1.0
    coef, _ = nnls(design / scale, np.ones(len(y)), maxiter=50 * design.shape[1])
    coef = coef / scale
    residual = design @ coef - 1.0
    return coef[:-1], float(coef[-1]), float(residual @ residual)


def relative_sse(pred: np.ndarray, y: np.ndarray) -> float:
    r = (pred - y) / y
    return float(r @ r)


class LinearTree:
    """A fitted tree; `nodes[0]` is the root.

    A node is either `{"split": [variable, op, value], "yes": i, "no": j}` or
    `{"leaf": {"weights": [...], "intercept": b, "rows": n}}`, weights in the
    order of `leaf_variables`. Plain lists and numbers, so it serialises as JSON.
    """

    def __init__(self, split_variables: list[str], leaf_variables: list[str], nodes: list[dict]):
        self.split_variables = list(split_variables)
        self.leaf_variables = list(leaf_variables)
        self.nodes = nodes
        self._compile()

    # ---- fitting -------------------------------------------------------------------------------

    @classmethod
    def fit(cls, split_x: np.ndarray, leaf_x: np.ndarray, y: np.ndarray, split_variables: list[str],
            leaf_variables: list[str], params: TreeParams, prune_mask: np.ndarray | None = None,
            modular: set[str] | None = None) -> LinearTree:
        """Grow on the rows not in `prune_mask`, prune on those in it, refit the leaves on all rows.

        `modular`: the variables that may get `mod` splits (default: every integer-valued one).
        """
        split_x, leaf_x, y = (np.asarray(a, dtype=np.float64) for a in (split_x, leaf_x, y))
        if len(y) == 0 or np.any(~np.isfinite(y)) or np.any(y <= 0):
            raise ValueError("a tree needs at least one row and positive, finite latencies")
        prune_mask = np.zeros(len(y), bool) if prune_mask is None else np.asarray(prune_mask, bool)
        grower = _Grower(split_x, leaf_x, y, split_variables, params, modular)
        grow_rows = np.flatnonzero(~prune_mask)
        if len(grow_rows) == 0:  # nothing left to grow on: grow on everything, prune nothing
            grow_rows, prune_mask = np.arange(len(y)), np.zeros(len(y), bool)
        nodes: list[dict] = []
        grower.grow(grow_rows, 0, nodes)
        tree = cls(split_variables, leaf_variables, nodes)
        if prune_mask.any():
            tree._prune(0, split_x, leaf_x, y, np.flatnonzero(prune_mask))
            tree = tree._compacted()
        tree._refit(split_x, leaf_x, y)
        return tree

    def _prune(self, index: int, split_x, leaf_x, y, rows: np.ndarray) -> None:
        """Reduced-error pruning: keep a split only if it predicts the held-out rows better."""
        node = self.nodes[index]
        if "leaf" in node:
            return
        yes, no = self._route(node, split_x[rows])
        self._prune(node["yes"], split_x, leaf_x, y, rows[yes])
        self._prune(node["no"], split_x, leaf_x, y, rows[no])
        subtree_error = relative_sse(self._predict_from(index, split_x[rows], leaf_x[rows]), y[rows])
        w, b = node["fallback"]["weights"], node["fallback"]["intercept"]
        leaf_error = relative_sse(leaf_x[rows] @ np.asarray(w) + b, y[rows])
        if len(rows) == 0 or leaf_error <= subtree_error + _EXACT * len(rows):
            self.nodes[index] = {"leaf": node["fallback"]}

    def _compacted(self) -> LinearTree:
        """Drop nodes no longer reachable after pruning and renumber the rest."""
        nodes: list[dict] = []

        def copy(i: int) -> int:
            node = dict(self.nodes[i])
            at = len(nodes)
            nodes.append(node)
            if "split" in node:
                node["yes"], node["no"] = copy(node["yes"]), copy(node["no"])
            return at

        copy(0)
        return LinearTree(self.split_variables, self.leaf_variables, nodes)

    def _refit(self, split_x, leaf_x, y) -> None:
        leaves = self.leaf_index(split_x)
        for i, node in enumerate(self.nodes):
            node.pop("fallback", None)
            if "leaf" not in node:
                continue
            rows = leaves == i
            if rows.sum() >= 2:
                w, b, _ = nnls_fit(leaf_x[rows], y[rows])
                node["leaf"] = {"weights": w.tolist(), "intercept": b, "rows": int(rows.sum())}
            else:  # too few rows to refit: keep the growth-time fit, but say how many rows reach it
                node["leaf"] = {**node["leaf"], "rows": int(rows.sum())}
        self._compile()

    # ---- prediction ----------------------------------------------------------------------------

    def _compile(self) -> None:
        """Arrays for fast traversal: per node its split (variable index, op, value) or its leaf."""
        n = len(self.nodes)
        self._var = np.full(n, -1)
        self._k = np.zeros(n)  # 0: compare x itself; k: compare x mod k
        self._value = np.zeros(n)
        self._yes = np.full(n, -1)
        self._no = np.full(n, -1)
        self._w = np.zeros((n, len(self.leaf_variables)))
        self._b = np.zeros(n)
        for i, node in enumerate(self.nodes):
            if "split" in node:
                variable = node["split"][0]
                self._var[i] = self.split_variables.index(variable)
                self._k[i], self._value[i] = _as_threshold(node["split"])
                self._yes[i], self._no[i] = node["yes"], node["no"]
            else:
                self._w[i] = node["leaf"]["weights"]
                self._b[i] = node["leaf"]["intercept"]
        self._split_list = [(int(v), int(k), float(c), int(a), int(b))
                            for v, k, c, a, b in zip(self._var, self._k, self._value, self._yes, self._no)]
        self._leaf_list = [(list(map(float, w)), float(b)) for w, b in zip(self._w, self._b)]

    def _route(self, node: dict, split_x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = split_x[:, self.split_variables.index(node["split"][0])]
        yes = split_mask(node["split"], x)
        return yes, ~yes

    def leaf_index(self, split_x: np.ndarray) -> np.ndarray:
        """The leaf each row reaches (vectorised: one pass per tree level)."""
        at = np.zeros(len(split_x), dtype=np.int64)
        active = self._var[at] >= 0
        while active.any():
            rows = np.flatnonzero(active)
            node = at[rows]
            x = split_x[rows, self._var[node]]
            k = self._k[node]
            yes = np.where(k > 0, np.mod(x, np.maximum(k, 1)), x) < self._value[node]
            at[rows] = np.where(yes, self._yes[node], self._no[node])
            active = self._var[at] >= 0
        return at

    def predict(self, split_x: np.ndarray, leaf_x: np.ndarray) -> np.ndarray:
        leaves = self.leaf_index(np.asarray(split_x, dtype=np.float64))
        return np.einsum("ij,ij->i", np.asarray(leaf_x, dtype=np.float64), self._w[leaves]) + self._b[leaves]

    def _predict_from(self, index: int, split_x, leaf_x) -> np.ndarray:
        sub = LinearTree(self.split_variables, self.leaf_variables, _subtree(self.nodes, index))
        return sub.predict(split_x, leaf_x) if len(split_x) else np.zeros(0)

    def predict_one(self, split_values: list[float], leaf_values: list[float]) -> float:
        """One configuration, no numpy: the compressor's inner loop calls this thousands of times."""
        i = 0
        splits = self._split_list
        while True:
            var, k, value, yes, no = splits[i]
            if var < 0:
                break
            x = split_values[var]
            i = yes if ((x % k if k else x) < value) else no
        w, b = self._leaf_list[i]
        return sum(wi * xi for wi, xi in zip(w, leaf_values)) + b

    # ---- reading -------------------------------------------------------------------------------

    @property
    def depth(self) -> int:
        def depth(i: int) -> int:
            node = self.nodes[i]
            return 0 if "leaf" in node else 1 + max(depth(node["yes"]), depth(node["no"]))

        return depth(0)

    @property
    def leaves(self) -> int:
        return sum(1 for node in self.nodes if "leaf" in node)

    def rules(self, units: str = "ms") -> list[str]:
        """The tree as indented if/else lines, each leaf as its formula."""
        lines: list[str] = []

        def walk(i: int, indent: str) -> None:
            node = self.nodes[i]
            if "leaf" in node:
                lines.append(f"{indent}{units} = {leaf_formula(node['leaf'], self.leaf_variables)}"
                             f"   [{node['leaf']['rows']} rows]")
                return
            lines.append(f"{indent}if {split_text(node['split'])}:")
            walk(node["yes"], indent + "    ")
            lines.append(f"{indent}else:  # {split_text(node['split'], negate=True)}")
            walk(node["no"], indent + "    ")

        walk(0, "")
        return lines

    def to_dict(self) -> dict:
        return {"split_variables": self.split_variables, "leaf_variables": self.leaf_variables,
                "nodes": [{k: v for k, v in node.items() if k != "fallback"} for node in self.nodes]}

    @classmethod
    def from_dict(cls, d: dict) -> LinearTree:
        nodes = d["nodes"]
        for i, node in enumerate(nodes):
            if "split" in node:
                variable, op, value = node["split"]
                if op not in (LT, MOD, REM) or variable not in d["split_variables"]:
                    raise ValueError(f"unknown split {node['split']!r}")
                if op == REM and not (isinstance(value, list) and len(value) == 2):
                    raise ValueError(f"a remainder split needs [k, c], got {value!r}")
                if not all(i < node[side] < len(nodes) for side in ("yes", "no")):
                    raise ValueError(f"node {i}: children must come after it in the node list")
            elif len(node["leaf"]["weights"]) != len(d["leaf_variables"]):
                raise ValueError("a leaf's weights do not match the leaf variables")
        return cls(d["split_variables"], d["leaf_variables"], nodes)


def _as_threshold(split: list) -> tuple[float, float]:
    """Every split is `f(x) < c`: (k, c) with f(x) = x mod k, or (0, c) with f(x) = x."""
    _, op, value = split
    if op == MOD:
        return float(value), 1.0
    if op == REM:
        return float(value[0]), float(value[1])
    return 0.0, float(value)


def split_mask(split: list, x: np.ndarray) -> np.ndarray:
    k, c = _as_threshold(split)
    return (np.mod(x, k) if k else x) < c


def split_text(split: list, negate: bool = False) -> str:
    variable, op, value = split
    if op == MOD:
        return f"{variable} % {int(value)} {'!=' if negate else '=='} 0"
    if op == REM:
        k, c = value
        return f"{variable} % {int(k)} {'>=' if negate else '<'} {int(c)}"
    shown = f"{value:g}"
    return f"{variable} {'>=' if negate else '<'} {shown}"


def leaf_formula(leaf: dict, variables: list[str]) -> str:
    terms = [f"{w:.4g}*{name}" for w, name in zip(leaf["weights"], variables) if w > 0]
    terms.append(f"{leaf['intercept']:.4g}")
    return " + ".join(terms)


def _subtree(nodes: list[dict], root: int) -> list[dict]:
    out: list[dict] = []

    def copy(i: int) -> int:
        node = dict(nodes[i])
        at = len(out)
        out.append(node)
        if "split" in node:
            node["yes"], node["no"] = copy(node["yes"]), copy(node["no"])
        return at

    copy(root)
    return out


class _Grower:
    """Greedy top-down growth; every node also keeps its own leaf fit (`fallback`) for pruning."""

    def __init__(self, split_x, leaf_x, y, split_variables, params: TreeParams, modular: set[str] | None):
        self.split_x, self.leaf_x, self.y = split_x, leaf_x, y
        self.split_variables = split_variables
        self.params = params
        self.integral = [bool(np.all(split_x[:, j] == np.round(split_x[:, j])))
                         and (modular is None or name in modular) for j, name in enumerate(split_variables)]

    def grow(self, rows: np.ndarray, depth: int, nodes: list[dict]) -> int:
        w, b, error = nnls_fit(self.leaf_x[rows], self.y[rows])
        leaf = {"weights": w.tolist(), "intercept": b, "rows": int(len(rows))}
        at = len(nodes)
        nodes.append({"leaf": leaf})
        if depth >= self.params.max_depth or len(rows) < 2 * self.params.min_leaf or error <= _EXACT * len(rows):
            return at
        best = self.best_split(rows)
        if best is None or best[0] > error * (1 - self.params.min_gain):
            return at
        _, split, yes = best
        node = {"split": split, "fallback": leaf}
        nodes[at] = node
        node["yes"] = self.grow(rows[yes], depth + 1, nodes)
        node["no"] = self.grow(rows[~yes], depth + 1, nodes)
        return at

    def best_split(self, rows: np.ndarray) -> tuple[float, list, np.ndarray] | None:
        best = None
        for j, variable in enumerate(self.split_variables):
            x = self.split_x[rows, j]
            for split, yes in self._candidates(variable, j, x):
                n_yes = int(yes.sum())
                if n_yes < self.params.min_leaf or len(rows) - n_yes < self.params.min_leaf:
                    continue
                error = (nnls_fit(self.leaf_x[rows[yes]], self.y[rows[yes]])[2]
                         + nnls_fit(self.leaf_x[rows[~yes]], self.y[rows[~yes]])[2])
                if best is None or error < best[0] - 1e-12:
                    best = (error, split, yes)
        return best

    def _candidates(self, variable: str, j: int, x: np.ndarray):
        values = np.unique(x)
        if len(values) < 2:
            return
        if self.integral[j]:
            for k in self.params.multiples:
                yes = np.mod(x, k) == 0
                if yes.any() and not yes.all():
                    yield [variable, MOD, int(k)], yes
                if self.params.remainder_splits and k == max(self.params.multiples):
                    remainder = np.mod(x, k)
                    for c in range(2, int(k)):
                        yes = remainder < c
                        if yes.any() and not yes.all():
                            yield [variable, REM, [int(k), c]], yes
        cuts = (values[:-1] + values[1:]) / 2  # midpoints, so a rule reads "out_features < 80.5"
        if len(cuts) > self.params.max_thresholds:
            cuts = cuts[np.unique(np.linspace(0, len(cuts) - 1, self.params.max_thresholds).round().astype(int))]
        for c in cuts:
            yield [variable, LT, float(c)], x < c
