"""Great Expectations suites for raw rows and windows, and the report they feed.

The suites are built from params (label set, physical ranges, timestamp
tolerance, minimum counts). Raw rows are validated block by block as they
stream in, so every row of a 13 M-row file is checked, not a sample; the
report keeps, per expectation and file, the number of failing rows and a few
example rows with their file line numbers.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import pandas as pd


@dataclass
class Outcome:
    """One expectation over one input, accumulated across blocks."""

    suite: str
    source: str
    expectation: str
    checked: int = 0
    unexpected: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""

    @property
    def success(self) -> bool:
        return self.unexpected == 0 and not self.error

    def describe(self) -> str:
        if self.error:
            return f"{self.expectation} on {self.source}: could not run ({self.error})"
        shown = "; ".join(f"{e['where']}: {e['value']!r}" for e in self.examples)
        return f"{self.expectation} on {self.source}: {self.unexpected} of {self.checked} failed, e.g. {shown}"


@dataclass
class ValidationReport:
    outcomes: dict[tuple[str, str, str], Outcome] = field(default_factory=dict)

    @property
    def success(self) -> bool:
        return all(o.success for o in self.outcomes.values())

    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes.values() if not o.success]

    def to_dict(self) -> dict[str, Any]:
        return {
            "success": self.success,
            "expectations_checked": len(self.outcomes),
            "failed": [o.__dict__ | {"success": False} for o in self.failures()],
            "passed": [
                {"suite": o.suite, "source": o.source, "expectation": o.expectation, "checked": o.checked}
                for o in self.outcomes.values() if o.success
            ],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=str)

    def summary(self, limit: int = 20) -> str:
        lines = [f"- {o.describe()}" for o in self.failures()[:limit]]
        more = len(self.failures()) - limit
        if more > 0:
            lines.append(f"- ... and {more} more (see the report)")
        return "\n".join(lines)


class ValidationFailed(Exception):
    """Data broke one or more expectations; carries the whole report."""

    def __init__(self, report: ValidationReport, report_path: str = ""):
        self.report = report
        self.report_path = report_path
        where = f"\nFull report: {report_path}" if report_path else ""
        super().__init__(f"data validation failed:\n{report.summary()}{where}")


class Validator:
    """Runs expectation suites on pandas frames with an ephemeral GX context."""

    def __init__(self, example_rows: int = 5):
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
        import great_expectations as gx

        logging.getLogger("great_expectations").setLevel(logging.WARNING)  # its INFO lines are internals
        self._gx = gx
        self.example_rows = example_rows
        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = gx.data_context.types.base.ProgressBarsConfig(globally=False)
        asset = self.context.data_sources.add_pandas("frames").add_dataframe_asset("frame")
        self._batches = asset.add_batch_definition_whole_dataframe("whole")
        self.report = ValidationReport()

    @property
    def expectations(self):
        return self._gx.expectations

    def validate(self, suite: str, source: str, frame: pd.DataFrame, expectations: list) -> bool:
        """Validate `frame` (its index names the rows, e.g. file line numbers) and record the outcome.

        A pass only asks GX whether each expectation holds; a block that fails
        is validated again with counts and example rows, so the common case
        (clean data) does not pay for collecting examples.
        """
        batch = self._batches.get_batch(batch_parameters={"dataframe": frame})
        quick = self._run(batch, suite, expectations, "BOOLEAN_ONLY")
        failed = [r for r in quick.results if not r.success]
        detailed = self._run(batch, suite, expectations, "SUMMARY") if failed else quick
        for r in detailed.results:
            name = _name(r.expectation_config)
            outcome = self.report.outcomes.setdefault((suite, source, name), Outcome(suite, source, name))
            outcome.checked += len(frame)
            if r.exception_info and r.exception_info.get("raised_exception"):
                outcome.error = str(r.exception_info.get("exception_message", "error"))[:300]
            elif not r.success:
                outcome.unexpected += int(r.result.get("unexpected_count") or 1)
                self._examples(outcome, r.result, frame)
        return not failed

    def _run(self, batch, suite: str, expectations: list, result_format: str):
        gx_suite = self._gx.ExpectationSuite(name=suite, expectations=[e.copy() for e in expectations])
        return batch.validate(gx_suite, result_format={"result_format": result_format,
                                                       "partial_unexpected_count": self.example_rows})

    def _examples(self, outcome: Outcome, result: dict, frame: pd.DataFrame) -> None:
        room = self.example_rows - len(outcome.examples)
        if room <= 0:
            return
        values = result.get("partial_unexpected_list") or result.get("observed_value")
        indices = result.get("partial_unexpected_index_list") or []
        if not isinstance(values, list):
            outcome.examples.append({"where": "table", "value": values})
            return
        label = frame.index.name or "row"
        for idx, value in list(zip(indices, values))[:room] or [("?", v) for v in values[:room]]:
            if isinstance(idx, dict):  # GX names the index column alongside the value columns
                idx = idx.get(label, next(iter(idx.values()), "?"))
            outcome.examples.append({"where": f"{label} {idx}", "value": _plain(value)})


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value


def _name(config) -> str:
    kwargs = {k: v for k, v in config.kwargs.items() if k not in ("batch_id", "result_format")}
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    return f"{config.type}({args})"
