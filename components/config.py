"""Typed configuration: params.yaml loaded into frozen pydantic models, one per section (components/settings/).

Loading refuses unknown keys (at every depth, with a did-you-mean hint),
missing keys, wrong types, numbers out of their range and duplicate keys,
with one line that names the key, so a typo in params.yaml fails before any
work starts, not halfway through a nightly run. What each setting means, its
type and its range are declared once, in its section's model
(`Field(ge=..., description=...)`); docs/params.md is generated from them
(`python -m components.settings.reference`). YAML is read as YAML 1.2
(ruamel.yaml): `1e-3` is a float, `yes` a string. `params.to_dict()` is what
goes to MLflow.
"""

from __future__ import annotations

import os
import typing
import warnings
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError
from ruamel.yaml.nodes import MappingNode, ScalarNode, SequenceNode

from components.settings.base import ConfigError, unknown_key
from components.settings.compress import CompressParams
from components.settings.fit_latency import FitLatencyParams
from components.settings.ingest import IngestParams
from components.settings.pipeline import PipelineParams
from components.settings.profile import ProfileParams
from components.settings.register import RegisterParams
from components.settings.train import TrainParams
from components.settings.validate import ValidateParams

DATA_ROOT_ENV = "IOT_COMPRESS_DATA_ROOT"
PARAMS_ENV = "IOT_COMPRESS_PARAMS"
_MERGE = "tag:yaml.org,2002:merge"
Model = TypeVar("Model", bound=BaseModel)
__all__ = ["ConfigError", "DATA_ROOT_ENV", "PARAMS_ENV", "Params", "default_params_path", "load_params", "read_yaml",
           "validated"]


# Two sections are named like (deprecated) BaseModel methods: on an instance the field wins, which is all the
# pipeline uses, so pydantic's warning about it is left out.
warnings.filterwarnings("ignore", message=r'Field name "(validate|register)" in "Params" shadows', category=UserWarning)


class Params(BaseModel):
    """Every section of params.yaml, and the folder the file lies in (paths in it are relative to that)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, arbitrary_types_allowed=True)

    pipeline: PipelineParams
    ingest: IngestParams
    train: TrainParams
    profile: ProfileParams
    fit_latency: FitLatencyParams
    compress: CompressParams
    validate: ValidateParams
    register: RegisterParams
    root: Path = Field(default=Path("."), exclude=True)  # params.yaml's folder

    def path(self, relative: str) -> Path:
        """Resolve a path from params.yaml against the project root."""
        p = Path(relative).expanduser()
        return p if p.is_absolute() else (self.root / p)

    def data_root(self) -> Path:
        """The data root: $IOT_COMPRESS_DATA_ROOT if set, else ingest.data_root."""
        env = os.environ.get(DATA_ROOT_ENV)
        return Path(env).expanduser() if env else self.path(self.ingest.data_root)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def default_params_path() -> Path:
    env = os.environ.get(PARAMS_ENV)
    return Path(env) if env else Path("params.yaml")


def load_params(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Params:
    """Load params.yaml, apply `section.key=value` overrides, and check it all."""
    path = Path(path) if path is not None else default_params_path()
    raw = read_yaml(path, "params file")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    for item in overrides:
        _apply_override(raw, item)
    if "root" in raw:  # the file's folder, not a setting
        raise ConfigError(unknown_key("root", [n for n in Params.model_fields if n != "root"], ""))
    return validated(Params, raw).model_copy(update={"root": path.resolve().parent})


def validated(model: type[Model], data: Any, where: str = "") -> Model:
    """`model` from YAML data, every list read as a tuple; an error is one `ConfigError` line naming the key."""
    try:
        return model.model_validate(_tuples(data))
    except ValidationError as exc:
        raise ConfigError.from_validation(exc, model, where) from None


def _tuples(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _tuples(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return tuple(_tuples(v) for v in data)
    return data


def _apply_override(raw: dict, item: str) -> None:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r}: expected section.key=value")
    *parents, leaf = key.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {part} is not a section")
    try:
        node[leaf] = _parse(value, f"override {item!r}", key)
    except YAMLError as exc:
        raise ConfigError(f"override {item!r}: the value is not valid YAML: {exc}") from None


# ---- reading YAML ------------------------------------------------------------------------------------------


def read_yaml(path: str | Path, what: str) -> Any:
    """The YAML file at `path` (`what` it is, for the messages); a missing, unreadable or ambiguous file
    (a key twice in one mapping) is a ConfigError naming the file."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found") from None
    try:
        return _parse(text, str(path))
    except YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None


def _parse(text: str, name: str, where: str = "") -> Any:
    yaml = YAML(typ="safe", pure=True)
    node = yaml.compose(text)
    if node is None:
        return None
    _refuse_duplicate_keys(node, name, where, set())
    return yaml.load(text)


def _refuse_duplicate_keys(node, name: str, where: str, seen: set[int]) -> None:
    """A key twice in one mapping is refused with both its lines (ruamel.yaml's own error gives only the second)."""
    if id(node) in seen:  # an alias: its anchor was checked
        return
    seen.add(id(node))
    if isinstance(node, MappingNode):
        lines: dict[tuple[str, str], int] = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, ScalarNode) and str(key_node.tag) != _MERGE:
                key, line = (str(key_node.tag), key_node.value), key_node.start_mark.line + 1
                if key in lines:
                    raise ConfigError(f"{name}: {_join(where, key_node.value)}: duplicate key "
                                      f"(lines {lines[key]} and {line})")
                lines[key] = line
            label = key_node.value if isinstance(key_node, ScalarNode) else "?"
            _refuse_duplicate_keys(value_node, name, _join(where, label), seen)
    elif isinstance(node, SequenceNode):
        for i, item in enumerate(node.value):
            _refuse_duplicate_keys(item, name, f"{where}[{i}]", seen)


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key
