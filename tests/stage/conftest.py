"""The stage tier: each stage on small real data. Every test starts from a copy of an MLflow store migrated once
per session, where `make_params` (state in tmp_path/state) and `params_file` (tmp_path/.state) put the store."""

from __future__ import annotations

import pytest

from tests.conftest import seed_store


@pytest.fixture(autouse=True)
def premigrated_store(migrated_store, tmp_path):
    for state in ("state", ".state"):
        seed_store(migrated_store, tmp_path / state)
