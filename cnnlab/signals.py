"""Signals, named once: as exceptions inside a block, and the foreground loop of a command that keeps servers
running (`cnnlab ui`, `cnnlab team up`) until Ctrl-C, SIGTERM or SIGHUP."""

from __future__ import annotations

import signal
from contextlib import contextmanager
from typing import Callable

from .errors import Interrupted


def _raise(signum, frame):
    raise Interrupted(signum)


@contextmanager
def as_exceptions(signals=(signal.SIGTERM, signal.SIGHUP)):
    """Inside the block each of `signals` raises Interrupted (exit code 128 + its number), and Ctrl-C raises
    KeyboardInterrupt even when the process was started with SIGINT ignored (`cnnlab ui &` from a script, or a
    parent that ignores it: Python then leaves SIGINT ignored and the command could not be stopped that way). The
    handlers before are put back after."""
    old = {s: signal.signal(s, _raise) for s in signals}
    old[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def foreground(body: Callable[[], int]) -> int:
    """body()'s exit code, or the signal's when one stops it (130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP):
    body's own `finally` stops what it started."""
    with as_exceptions():
        try:
            return body()
        except (KeyboardInterrupt, Interrupted) as exc:
            return getattr(exc, "exit_code", 130)
