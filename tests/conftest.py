"""Shared fixtures: every test gets its own runs/ and data cache; nothing touches the real ones."""

from __future__ import annotations

import os
import sys

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs two workers on two cores: one torch thread each, here
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # and in the processes the tests start


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
    from cnnlab.record import Store

    return Store().client


# processes a test of ours may start: the CLI, sweep workers, the MLflow UI and what it spawns
OURS = ("cnnlab", "multiprocessing.spawn", "mlflow ui", "mlflow server", "uvicorn", "huey", "mlflow.server")


def _leftovers(since: float, marker: str) -> list:
    """(pid, command) of processes matching OURS, started after `since` (seconds since boot) with `marker` in their
    environment (this session's temporary directory: tests point CNNLAB_RUNS_DIR into it), zombies aside."""
    import os
    from pathlib import Path

    ticks = os.sysconf("SC_CLK_TCK")
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ours = marker.encode() in (proc / "environ").read_bytes()
        except OSError:
            continue
        if not ours:
            continue
        if int(proc.name) == os.getpid() or fields[0] == "Z" or int(fields[19]) / ticks < since:
            continue
        if "resource_tracker" not in command and any(name in command for name in OURS):
            found.append((int(proc.name), command[:160]))
    return found


@pytest.fixture(scope="session", autouse=True)
def no_process_left_behind(tmp_path_factory):
    """The suite leaves no process of ours running: checked at the end, after a grace for slow exits."""
    import os
    import signal
    import time
    from pathlib import Path

    started = float(Path("/proc/uptime").read_text().split()[0])
    marker = str(tmp_path_factory.getbasetemp())
    yield
    deadline = time.time() + 30
    while _leftovers(started, marker) and time.time() < deadline:
        time.sleep(0.5)
    left = _leftovers(started, marker)
    for pid, _ in left:  # stop them by PID, then say so
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not left, f"processes left running by the tests: {left}"
