"""docs/params.md, generated from the settings models: `python -m components.settings.reference` rewrites it.

Each section of params.yaml is a table of its keys (nested sections by their
full name): the type, the range a number must lie in, and what the key means,
all read from the models, so nothing is written twice. tests/static fails when
the committed file is not what this writes.
"""

from __future__ import annotations

import argparse
import sys
import typing
from pathlib import Path

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel

from components.settings.base import unwrap

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "params.md"
HEADER = """\
# params.yaml reference

Generated from `components/settings/` by `python -m components.settings.reference`: edit the models there, not
this file. Every key is required (params.yaml holds them all); an override is `-p section.key=value`.
"""
_WORDS = ((Ge, "ge", ">="), (Gt, "gt", ">"), (Le, "le", "<="), (Lt, "lt", "<"))


def render() -> str:
    from components.config import Params

    parts = [HEADER]
    for name, field in Params.model_fields.items():
        if name == "root":
            continue
        rows: list[tuple[str, str, str, str]] = []
        _rows(field.annotation, name, rows)
        parts += [f"\n## `{name}`\n", "| key | type | range | meaning |", "|---|---|---|---|"]
        parts += [f"| `{key}` | {tp} | {rng} | {doc} |" for key, tp, rng, doc in rows]
    return "\n".join(parts) + "\n"


def _rows(model: type[BaseModel], where: str, rows: list) -> None:
    for name, field in model.model_fields.items():
        key = f"{where}.{name}"
        annotation, metadata = unwrap(field.annotation, list(field.metadata))
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows.append((key, "section", "", _cell(field.description)))
            _rows(annotation, key, rows)
            continue
        inner = _inner_bounds(annotation)
        rows.append((key, _type_name(annotation), _range(metadata + inner), _cell(field.description)))


def _inner_bounds(annotation) -> list:
    """The bounds on the items of a list or the values of a mapping."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (tuple, dict) and args:
        return unwrap(args[-1] if typing.get_origin(annotation) is dict else args[0], [])[1]
    return []


def _type_name(annotation) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin is tuple:
        return f"list of {_type_name(unwrap(args[0], [])[0])}"
    if origin is dict:
        return f"mapping to {_type_name(unwrap(args[1], [])[0])}"
    return getattr(annotation, "__name__", str(annotation))


def _range(metadata: list) -> str:
    return ", ".join(f"{sign} {getattr(m, attr)}" for cls, attr, sign in _WORDS for m in metadata if isinstance(m, cls))


def _cell(text: str | None) -> str:
    return (text or "").replace("|", "\\|")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 if docs/params.md is not what would be written")
    args = p.parse_args(argv)
    text = render()
    if args.check:
        same = DOC.exists() and DOC.read_text() == text
        print("docs/params.md is up to date" if same else "docs/params.md is stale: run "
              "`python -m components.settings.reference`")
        return 0 if same else 1
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(text)
    print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
