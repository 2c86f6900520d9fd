"""A device's latency model: one tree per layer kind plus a whole-model correction, as JSON.

`predict(layer)` is what the compressor calls for every candidate width
(pure Python, a few microseconds); `predict_layers(layers)` does a list at
once with numpy; `predict_model(spec)` sums a model's layers per kind and applies the
fitted whole-model correction

    t_model = sum over kinds k of scale_k * sum(t_layer of kind k) + offset

`scale_k` is how much slower (or faster) layers of kind k run inside a model
than alone (colder caches, fused or extra glue operators), `offset` the fixed
cost of one inference (negative when each layer timed alone paid a call
overhead that the model pays once). Where the whole models timed have
different depths (the profile's shallower scaled baselines, structures the
compressor left with layers removed), a fixed cost per layer that runs is
fitted too (`+ per_layer * layers`): what removing a layer saves beyond its
own time alone, or less than it (its call overhead alone, not paid inside a
model). Where whole models of the same
architecture were timed, a local correction follows (`Residuals`): what the
formula got wrong on the timed models near the one asked about, in widths,
multiplies the prediction; far from every timed model it fades to nothing.
That is what makes the model right where compression ends once the
structures the search visited have been timed (compress's refit rounds). A device whose backend computes
its figures instead of timing them (the microcontroller) has an analytic model (`AnalyticLatencyModel`):
it asks the backend, and saves the pool entry it asks about.

Saved as JSON (never pickled) with a format version; `load` refuses a file
it does not understand.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from components.devices.base import get_backend
from components.devices.pool import Device, device_from_dict
from components.latency.features import layer_values, matrix
from components.latency.tree import LinearTree
from components.models.spec import BYPASS, LayerSpec, ModelSpec
from components.profiling.items import Item

MODEL_FILE, RULES_FILE = "latency_model.json", "rules.txt"  # a saved latency model, and its rules to read
REFITTED_DIR = "latency"  # beside a compressed model's folder: the latency model compress refitted and steered by

FORMAT = "iot-compress/latency-model/1"
MIN_SHARE_OF_SUM = 0.1  # a whole model is never predicted below this share of its layers' plain sum


@dataclass(frozen=True)
class Overhead:
    """The whole-model correction (see the module docstring); `form` says which terms were fitted."""

    form: str  # per_kind: a scale per layer kind + offset | scale: one scale | none: no whole-model rows, the sum
    scale: float = 1.0  # for kinds without their own scale
    kind_scales: dict[str, float] = field(default_factory=dict)
    offset: float = 0.0
    models: int = 0  # whole-model rows it was fitted on
    per_layer: float = 0.0  # ms per layer that runs, beyond its own time alone (fitted where depths differ)

    def apply(self, sums_by_kind: dict[str, float], layers: int = 0) -> float:
        corrected = (sum(self.kind_scales.get(k, self.scale) * v for k, v in sums_by_kind.items()) + self.offset
                     + self.per_layer * layers)
        # the (negative) offset is fitted on the sampled models; far below them it must not reach zero: never
        # less than a tenth of the plain sum
        return max(corrected, MIN_SHARE_OF_SUM * sum(sums_by_kind.values()))

    def formula(self) -> str:
        if self.form == "none":
            return "sum of the layers (not fitted: no whole-model rows)"
        if self.form == "scale":
            return f"{self.scale:.4g} * sum(layers)   [{self.models} whole models]"
        terms = " + ".join(f"{v:.4g} * sum({k} layers)" for k, v in sorted(self.kind_scales.items()))
        if self.per_layer:
            terms += f" {'+' if self.per_layer >= 0 else '-'} {abs(self.per_layer):.4g} * layers"
        return (f"{terms} + {self.scale:.4g} * sum(other layers) {'+' if self.offset >= 0 else '-'} "
                f"{abs(self.offset):.4g}   [{self.models} whole models]")


@dataclass(frozen=True)
class Residuals:
    """A local multiplicative correction from timed whole models (Nadaraya-Watson on log widths, shrunk to 1).

    For a model with the layer names of the timed ones, each timed model i
    weighs k_i = exp(-d_i^2 / (2 h^2)), d_i the root mean square difference
    of their log widths; the prediction is multiplied by
    exp(sum k_i r_i / (sum k_i + shrink)), r_i = log(measured_i / formula_i).
    With no timed model near (all k_i ~ 0) the factor is 1. `bandwidth` (h)
    and `shrink` are chosen by leave-one-out on the timed models.
    """

    names: tuple[str, ...] = ()  # the layer names (architecture) the timed models share
    points: tuple[tuple[float, ...], ...] = ()  # their log widths, layer by layer
    values: tuple[float, ...] = ()  # log(measured / formula) of each
    bandwidth: float = 0.3
    shrink: float = 1.0

    def factor(self, spec: ModelSpec) -> float:
        if not self.points or tuple(layer.name for layer in spec.computing) != self.names:
            return 1.0
        return float(np.exp(correction(np.array(self.points), np.array(self.values), log_widths(spec),
                                       self.bandwidth, self.shrink)))

    def to_dict(self) -> dict:
        return {"names": list(self.names), "points": [list(p) for p in self.points], "values": list(self.values),
                "bandwidth": self.bandwidth, "shrink": self.shrink}

    @classmethod
    def from_dict(cls, d: dict) -> Residuals:
        return cls(tuple(d["names"]), tuple(tuple(p) for p in d["points"]), tuple(d["values"]),
                   float(d["bandwidth"]), float(d["shrink"]))


def log_widths(spec: ModelSpec) -> np.ndarray:
    return np.log([max(1, layer.out_features) for layer in spec.computing])


def correction(points: np.ndarray, values: np.ndarray, x: np.ndarray, bandwidth: float, shrink: float) -> float:
    """The log correction at `x` (see `Residuals`)."""
    d2 = ((points - x) ** 2).mean(axis=1)
    k = np.exp(-d2 / (2 * bandwidth * bandwidth))
    return float(k @ values / (k.sum() + shrink))


@dataclass
class KindModel:
    tree: LinearTree
    fallback: str = ""  # why the kind was not fitted (then `tree` is the conservative model); empty: fitted

    def to_dict(self) -> dict:
        return {"tree": self.tree.to_dict(), "fallback": self.fallback}


class LatencyModel:
    method = "tree"

    def __init__(self, device: str, runtime: str, kinds: dict[str, KindModel], overhead: Overhead,
                 info: dict | None = None, residuals: Residuals | None = None):
        self.device, self.runtime = device, runtime
        self.kinds = kinds
        self.overhead = overhead
        self.info = info or {}
        self.residuals = residuals or Residuals()

    # ---- prediction ----------------------------------------------------------------------------

    def _kind(self, layer: LayerSpec) -> KindModel:
        try:
            return self.kinds[layer.kind]
        except KeyError:
            raise ValueError(f"device {self.device}: no latency model for layer kind {layer.kind!r} "
                             f"(has {', '.join(sorted(self.kinds))})") from None

    def predict(self, layer: LayerSpec) -> float:
        """Milliseconds for one window through `layer` (none through a removed one)."""
        if layer.kind == BYPASS:
            return 0.0
        tree = self._kind(layer).tree
        values = layer_values(layer)
        return tree.predict_one([values[n] for n in tree.split_variables], [values[n] for n in tree.leaf_variables])

    def predict_layers(self, layers: list[LayerSpec] | tuple[LayerSpec, ...]) -> np.ndarray:
        """Milliseconds per layer, vectorised per kind."""
        out = np.zeros(len(layers))
        rows = [layer_values(layer) for layer in layers]
        for kind in {layer.kind for layer in layers} - {BYPASS}:
            index = [i for i, layer in enumerate(layers) if layer.kind == kind]
            tree = self._kind(layers[index[0]]).tree
            picked = [rows[i] for i in index]
            out[index] = tree.predict(matrix(picked, tree.split_variables), matrix(picked, tree.leaf_variables))
        return out

    def predict_model(self, spec: ModelSpec) -> float:
        """Milliseconds for one window through the whole model."""
        return self.formula(spec) * self.residuals.factor(spec)

    def formula(self, spec: ModelSpec) -> float:
        """The whole-model formula alone (layers, per-kind scales, offset), before the local correction."""
        sums: dict[str, float] = {}
        for layer in spec.computing:  # a removed layer (BYPASS) costs nothing of its own
            sums[layer.kind] = sums.get(layer.kind, 0.0) + self.predict(layer)
        return self.overhead.apply(sums, len(spec.computing))

    @property
    def fallback_kinds(self) -> list[str]:
        return sorted(k for k, m in self.kinds.items() if m.fallback)

    # ---- reading and saving --------------------------------------------------------------------

    def rules(self) -> str:
        lines = [f"# latency model of device {self.device} ({self.runtime}): milliseconds per window",
                 "# tree-structured linear regression (FastDeepIoT); leaves t = w.x + b with w, b >= 0", ""]
        for kind in sorted(self.kinds):
            model = self.kinds[kind]
            title = f"## {kind}"
            if model.fallback:
                title += f"  (FALLBACK, not fitted: {model.fallback})"
            lines += [title, *model.tree.rules(), ""]
        lines += ["## whole model", f"ms = {self.overhead.formula()}", ""]
        if self.residuals.points:
            lines += [f"then x exp(local correction) from {len(self.residuals.points)} timed whole models "
                      f"(bandwidth {self.residuals.bandwidth:g} in log width, shrink {self.residuals.shrink:g})", ""]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"format": FORMAT, "method": self.method, "device": self.device, "runtime": self.runtime,
                "kinds": {k: m.to_dict() for k, m in sorted(self.kinds.items())},
                "overhead": asdict(self.overhead), "residuals": self.residuals.to_dict(), "info": self.info}

    def save(self, path: Path) -> None:
        from components.artifacts.atomic import write_text_atomic

        write_text_atomic(Path(path), json.dumps(self.to_dict(), indent=1))


class AnalyticLatencyModel:
    """A computed device's model, behind the same interface: its backend's `compute` figures, nothing fitted."""

    method = "analytic"

    def __init__(self, device: Device):
        self.pool_entry = device
        self.device, self.runtime = device.name, device.runtime
        self.backend = get_backend(device.runtime)
        if self.backend.timed:
            raise ValueError(f"device {device.name}: runtime {device.runtime} is timed; fit its latency model")
        self.kinds: dict[str, KindModel] = {}
        self.fallback_kinds: list[str] = []

    def predict(self, layer: LayerSpec) -> float:
        return float(self.backend.compute(Item(layer=layer), self.pool_entry)["latency_ms"])

    def predict_layers(self, layers) -> np.ndarray:
        return np.array([self.predict(layer) for layer in layers])

    def predict_model(self, spec: ModelSpec) -> float:
        return float(self.resources(spec)["latency_ms"])

    def resources(self, spec: ModelSpec) -> dict:
        """The backend's figures for a whole model (for the microcontroller: flash, peak SRAM, MACs, latency)."""
        return self.backend.compute(Item(model=spec), self.pool_entry)

    def rules(self) -> str:
        title = f"# latency model of device {self.device} ({self.runtime}): analytic, computed from the graph, never timed"
        return "\n".join([title, self.backend.formula(self.pool_entry), ""])

    def to_dict(self) -> dict:
        return {"format": FORMAT, "method": self.method, "device": self.device, "runtime": self.runtime,
                "pool_entry": self.pool_entry.to_dict()}

    def save(self, path: Path) -> None:
        from components.artifacts.atomic import write_text_atomic

        write_text_atomic(Path(path), json.dumps(self.to_dict(), indent=1))


def from_dict(d: dict) -> LatencyModel | AnalyticLatencyModel:
    if d.get("format") != FORMAT:
        raise ValueError(f"not a latency model of format {FORMAT!r} (found {d.get('format')!r})")
    if d["method"] == "analytic":
        return AnalyticLatencyModel(device_from_dict(d["pool_entry"], "the saved pool entry"))
    kinds = {k: KindModel(LinearTree.from_dict(m["tree"]), m.get("fallback", "")) for k, m in d["kinds"].items()}
    residuals = Residuals.from_dict(d["residuals"]) if d.get("residuals") else None
    return LatencyModel(d["device"], d["runtime"], kinds, Overhead(**d["overhead"]), d.get("info", {}), residuals)


def save_in(folder: Path, model) -> None:
    """`latency_model.json` and its readable `rules.txt` into `folder` (fit_latency's output, compress's refit)."""
    model.save(Path(folder) / MODEL_FILE)
    (Path(folder) / RULES_FILE).write_text(model.rules())


def load_in(folder: Path) -> LatencyModel | AnalyticLatencyModel | None:
    """The latency model saved (and sealed) in `folder`, or None where none was written there."""
    from components.artifacts.seals import verify_sealed

    path = Path(folder) / MODEL_FILE
    if not path.exists():
        return None
    verify_sealed(folder, [MODEL_FILE], "run fit_latency for its device again (or compress, for the model it "
                                       "refitted beside its compressed model)")
    return load(path)


def load(path: Path) -> LatencyModel | AnalyticLatencyModel:
    """A saved latency model (JSON; nothing executable is read); DamagedArtifact names a file it cannot read."""
    from components.artifacts.seals import DamagedArtifact

    remedy = "run fit_latency for its device again (or delete the file where compress refitted it)"
    try:
        d = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DamagedArtifact(path, f"not JSON ({exc})", remedy) from None
    if not isinstance(d, dict):
        raise DamagedArtifact(path, "not a latency model (expected a JSON object)", remedy)
    try:
        return from_dict(d)
    except (KeyError, TypeError, IndexError) as exc:
        raise DamagedArtifact(path, f"malformed latency model ({type(exc).__name__}: {exc})", remedy) from None
    except ValueError as exc:  # another format tag, a pool entry that no longer checks (ConfigError)
        raise DamagedArtifact(path, str(exc), remedy) from None
