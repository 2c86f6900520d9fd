"""One way to write a table and an interval as text, and the HTML templates (Jinja2) every report renders with.

Markdown tables escape their cells (`cell`); an interval is always written by
`interval_text`: "0.951 (95 % CI 0.940 to 0.962, 5 users)", or its short
form "0.951 (0.940 to 0.962)" inside tables, or only its bounds. With fewer
than two users there is no interval, and the text says so.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import jinja2


def cell(text: object) -> str:
    """A Markdown table cell: `|` escaped, one line."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    return ["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(map(cell, row)) + " |" for row in rows)]


def interval_text(ci: Mapping, digits: int = 3, scale: float = 1.0, *, short: bool = False, mean: bool = True,
                  fixed: bool = True) -> str:
    """A mean over users with its 95 % interval (from `stats.intervals.mean_ci`).

    '0.951 (95 % CI 0.940 to 0.962, 5 users)'; `short`: '0.951 (0.940 to 0.962)'; without the `mean`:
    '0.940 to 0.962 (5 users)'. `fixed`: digits after the point, else significant digits.
    """
    if ci.get("mean") is None:
        return "n/a" if mean and not short else "-"
    f = f"{{:.{digits}{'f' if fixed else 'g'}}}"
    head = f.format(ci["mean"] * scale)
    if ci.get("users", 0) < 2 or ci.get("low") is None:
        return "-" if not mean else head if short else f"{head} (one user: no interval)"
    low, high = f.format(ci["low"] * scale), f.format(ci["high"] * scale)
    if not mean:
        return f"{low} to {high} ({ci['users']} users)"
    if short:
        return f"{head} ({low} to {high})"
    return f"{head} (95 % CI {low} to {high}, {ci['users']} users)"


@functools.cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.PackageLoader("components.reports", "templates"),
                              autoescape=True, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                              undefined=jinja2.StrictUndefined)


def render(template: str, **context) -> str:
    """An HTML report from `components/reports/templates/<template>` (values escaped)."""
    return _environment().get_template(template).render(**context)
