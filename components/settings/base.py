"""What every section of params.yaml (and the device pool file) shares, and its errors as one line.

A section is a pydantic model: strict (a number where a number belongs; an int
is a float too), frozen, unknown keys refused. An empty value (`key:` with
nothing after it) reads as an empty string or list. A mapping whose keys are
names the pipeline knows (runtimes, layer kinds, costs) says so with
`known_keys`. `ConfigError.from_validation` turns pydantic's first error into
the one line the pipeline prints: the key's full name, what it must be, and
what it got ("train.epochs: must be at least 1, got 0").
"""

from __future__ import annotations

import difflib
import functools
import types
import typing
from collections.abc import Callable, Iterable
from typing import Annotated, Any

from annotated_types import Ge, Gt, Le, Lt
from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError, model_validator
from pydantic_core import PydanticCustomError


class ConfigError(ValueError):
    """params.yaml, an override or the device pool file does not match its schema."""

    @classmethod
    def from_validation(cls, exc: ValidationError, model: type[BaseModel], where: str = "") -> ConfigError:
        """The first error, unknown keys first: a misspelt key also leaves the right one missing."""
        errors = sorted(exc.errors(), key=lambda e: e["type"] not in ("extra_forbidden", "unknown_key"))
        return cls(error_text(errors[0], model, where))


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    @model_validator(mode="before")
    @classmethod
    def _empty_values(cls, data: Any) -> Any:
        """`key:` with nothing after it: an empty string or list where the field is one, else the field's default
        where it has one and cannot be None (an absent `kubernetes:` section)."""
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for name, field in cls.model_fields.items():
            if name not in data or data[name] is not None:
                continue
            empty = _empty_of(field.annotation)
            if empty is not None:
                out[name] = empty
            elif not field.is_required() and field.default is not None:
                del out[name]
        return out


def _empty_of(annotation: Any) -> Any:
    if annotation is str:
        return ""
    return () if typing.get_origin(annotation) is tuple else None


def rule(message: str) -> PydanticCustomError:
    """A refusal a validator raises in its own words (the key's name is put in front)."""
    return PydanticCustomError("config_rule", message)


def known_keys(names: Callable[[], Iterable[str]], plugins: bool = False) -> AfterValidator:
    """A mapping field's keys must be among `names()` (called at load time: the names live in modules this one
    does not import up front), or with `plugins` any `package.module:Class` (a plug-in runtime)."""

    def check(value: dict) -> dict:
        for key in value:
            if key not in names() and not (plugins and ":" in key):
                raise PydanticCustomError("unknown_key", "unknown key", {
                    "key": key, "names": list(names()),
                    "also": " (or a plug-in runtime package.module:Class)" if plugins else ""})
        return value

    return AfterValidator(check)


@functools.cache
def _layer_kinds() -> tuple[str, ...]:
    from components.profiling.items import LAYER_KINDS

    return LAYER_KINDS


@functools.cache
def _runtimes() -> tuple[str, ...]:
    from components.devices.base import known_runtimes

    return known_runtimes()


LAYER_KINDS_KEYS = known_keys(_layer_kinds)
RUNTIME_KEYS = known_keys(_runtimes, plugins=True)


# ---- pydantic's error as the pipeline's one line ------------------------------------------------------------

_BOUNDS = ((Ge, "ge", "at least"), (Gt, "gt", "more than"), (Le, "le", "at most"), (Lt, "lt", "less than"))
_TYPE_NAMES = {"int_type": "int", "float_type": "float", "string_type": "str", "bool_type": "bool"}


def error_text(error: dict, model: type[BaseModel], where: str = "") -> str:
    loc, kind, value = error["loc"], error["type"], error.get("input")
    name = _join(where, _path(loc))
    if kind == "extra_forbidden":
        parent = _at(model, loc[:-1])[0]
        return unknown_key(loc[-1], list(parent.model_fields), _join(where, _path(loc[:-1])))
    if kind == "unknown_key":
        ctx = error["ctx"]
        return unknown_key(ctx["key"], ctx["names"], name, ctx["also"])
    if kind == "missing":
        return f"{name}: missing key"
    if kind == "config_rule":
        return f"{name}: {error['msg']}"
    annotation, metadata = _at(model, loc)
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        said = " and ".join(f"{word} {getattr(m, attr)}" for cls, attr, word in _BOUNDS for m in metadata
                            if isinstance(m, cls))
        shown = float(value) if _base(annotation) is float else value
        return f"{name}: must be {said}, got {shown!r}"
    if kind == "literal_error":
        return f"{name}: {value!r} is not one of {', '.join(map(repr, typing.get_args(_base(annotation))))}"
    if kind in _TYPE_NAMES:
        return f"{name}: expected {_TYPE_NAMES[kind]}, got {describe(value)}"
    if kind in ("tuple_type", "list_type"):
        return f"{name}: expected a list, got {describe(value)}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"{name}: expected a mapping, got {describe(value)}"
    return f"{name}: {error['msg']}"


def unknown_key(key: Any, names: list[str], where: str, also: str = "") -> str:
    close = difflib.get_close_matches(str(key), names, n=1)
    hint = f"; did you mean {_join(where, close[0])!r}?" if close else f"; known: {', '.join(names)}{also}"
    return f"{_join(where, str(key))}: unknown key{hint}"


def describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def _path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where and key else where or key


def _at(model: type[BaseModel], loc: tuple) -> tuple[Any, list]:
    """The annotation and the constraints (annotated-types metadata) at `loc` inside `model`."""
    annotation, metadata = model, []
    for part in loc:
        annotation, metadata = unwrap(annotation, [])
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(part) if isinstance(part, str) else None
            if field is None:
                return annotation, []
            annotation, metadata = field.annotation, list(field.metadata)
            continue
        args = typing.get_args(annotation)
        origin = typing.get_origin(annotation)
        if origin is tuple and args:
            annotation, metadata = args[0], []
        elif origin is dict and len(args) == 2:
            annotation, metadata = args[1], []
    return unwrap(annotation, metadata)


def unwrap(annotation: Any, metadata: list) -> tuple[Any, list]:
    """`Annotated[X, ...]` -> X with its constraints; `X | None` -> X."""
    while True:
        if typing.get_origin(annotation) is Annotated:
            base, *extra = typing.get_args(annotation)
            for item in extra:
                metadata = metadata + list(getattr(item, "metadata", [item]))
            annotation = base
        elif typing.get_origin(annotation) in (typing.Union, types.UnionType):
            annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
        else:
            return annotation, metadata


def _base(annotation: Any) -> Any:
    return unwrap(annotation, [])[0]


