"""`register`: the registered model's name and when a new version takes `@champion`."""

from __future__ import annotations

from pydantic import Field

from components.settings.base import Section


class RegisterParams(Section):
    name_prefix: str = Field(description="registered model \"<prefix>-<dataset>-<device>\"")
    champion_tolerance: float = Field(ge=0, le=1,
        description="accuracies this close are a tie, broken by measured latency")
