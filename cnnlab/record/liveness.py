"""Which runs still have a process behind them: the owner and heartbeat a run carries, and the reaping of runs whose
process is gone. Reaping writes, so the commands that write (train, sweep) call it, through Store.upkeep(); a view
only shows such a run as KILLED (`Record.state`), and changes nothing."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import List, Optional

from .vocabulary import Record, Tag


HEARTBEAT_SECONDS = 60  # how often a running run's owner says it is alive
STALE_SECONDS = 600  # a run on another host whose owner was silent this long is taken as gone


def process_start(pid: int) -> Optional[str]:
    """When process `pid` started (clock ticks since boot), to tell it from a later process with its number."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def owner() -> str:
    import socket

    return f"{socket.gethostname()} {os.getpid()} {process_start(os.getpid()) or '-'}"


def owner_alive(text: str, heartbeat: Optional[str]) -> bool:
    """Is the process that owns a run still there? On this host by its pid and start; elsewhere by its
    heartbeat."""
    import socket

    try:
        host, pid, started = text.split()
    except ValueError:
        return True  # not ours to judge
    if host != socket.gethostname():
        return heartbeat is None or time.time() - float(heartbeat) < STALE_SECONDS
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return started == "-" or process_start(int(pid)) == started


def orphaned(state: str, tags: dict) -> bool:
    """Is a run in `state` with `tags` RUNNING without a process behind it any more (SIGKILL, a crash, a power cut)?"""
    return state == "RUNNING" and Tag.OWNER in tags and not owner_alive(tags[Tag.OWNER], tags.get(Tag.HEARTBEAT))


def reap(store) -> List[Record]:
    """End KILLED the runs of `store` (a Store) left RUNNING by a process that is gone, saying so once."""
    reaped = []
    for record in store.reader.running(list(store.experiments().values())):
        if not record.orphaned:
            continue
        host, pid = record.tags[Tag.OWNER].split()[:2]
        store.writer.end(record.run_id, "KILLED", record.reason)  # the reason the record reads with (Store._make)
        print(f"note: {record.experiment} {record.id} was left RUNNING by process {pid} on {host}, which is gone: "
              "marked KILLED", file=sys.stderr)
        reaped.append(record)
    return reaped


class Heartbeat:
    """Say every HEARTBEAT_SECONDS that a run's process is alive (a daemon thread), until stop()."""

    def __init__(self, beat):
        self._stop = threading.Event()

        def loop():
            while not self._stop.wait(HEARTBEAT_SECONDS):
                try:
                    beat(str(int(time.time())))
                except Exception:  # a store that does not answer now: the next beat tries again
                    pass

        threading.Thread(target=loop, daemon=True, name="heartbeat").start()

    def stop(self) -> None:
        self._stop.set()
