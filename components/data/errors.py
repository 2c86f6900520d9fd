"""The one error type a loader raises for bad input."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Input data that cannot be ingested; says which file, where, and what is wrong.

    `where` is a row ("row 1234"), an archive member or a key; empty when the
    problem concerns the whole file.
    """

    def __init__(self, path: str | Path, problem: str, where: str = ""):
        self.path = str(path)
        self.where = where
        self.problem = problem
        location = f"{self.path}, {where}" if where else self.path
        super().__init__(f"{location}: {problem}")
