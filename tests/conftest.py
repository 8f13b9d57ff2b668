"""Shared fixtures: every test gets its own runs/ and data cache; nothing touches the real ones."""

from __future__ import annotations

import sys

import pytest


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Point the run store and the data cache into tmp_path; one CPU thread keeps tests steady."""
    monkeypatch.setenv("CNNLAB_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("CNNLAB_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


@pytest.fixture
def cli(monkeypatch, capsys):
    """Run `cnnlab ARGS...` in this process: returns (exit code, stdout, stderr)."""
    from cnnlab.cli import main

    def run(*args: str):
        monkeypatch.setattr(sys, "argv", ["cnnlab", *args])
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def mlflow_client():
    """An MLflow client on the test's own store (tests read the record as MLflow holds it)."""
    from cnnlab.store import Store

    return Store().client
