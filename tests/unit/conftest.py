"""The unit tier holds pure logic: a test here that starts a process, opens an MLflow store or imports
TensorFlow fails, saying to move it to tests/stage (where each stage runs on small real data)."""

from __future__ import annotations

import multiprocessing.process
import subprocess
import sys

import pytest

MOVE = "the unit tier runs pure logic only; move this test to tests/stage"


@pytest.fixture(autouse=True)
def pure_logic(monkeypatch):
    from components.tracking import server

    def refuse(what):
        def refused(*args, **kwargs):
            raise AssertionError(f"{what}: {MOVE}")
        return refused

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse("a subprocess"))
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", refuse("a child process"))
    monkeypatch.setattr(server, "configured_mlflow", refuse("an MLflow store"))
    had_tensorflow = "tensorflow" in sys.modules
    yield
    if not had_tensorflow and "tensorflow" in sys.modules:
        pytest.fail(f"TensorFlow was imported: {MOVE}")
