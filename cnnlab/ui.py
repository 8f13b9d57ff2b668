"""`cnnlab ui`: the MLflow UI on this project's store, which never outlives the command that started it.

The server runs in its own process group under a small guard process (`python -m cnnlab.ui PID CMD`):
`cnnlab ui` stops the guard on Ctrl-C, SIGTERM or SIGHUP and the guard stops the server's whole group
(uvicorn and its workers); when `cnnlab ui` dies any other way (kill -9, a closed terminal) the guard is
told by the kernel (Linux's parent-death signal; it also polls) and does the same.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import List, Optional

from . import signals
from .errors import CnnlabError
from .schema import runs_dir

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def _check_port(host: str, port: int) -> None:
    """Refuse a port something already listens on (a leftover server would answer for another store)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: a closed connection's TIME_WAIT
        try:
            s.bind((host, port))
        except OSError as exc:
            raise CnnlabError(f"Port {port} on {host} is taken ({exc.strerror}): another server (perhaps an MLflow "
                              f"UI of another project) listens there. Stop it, or give another --port.") from None


def _wait_until_up(url: str, proc: subprocess.Popen, log_path, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise CnnlabError(f"The MLflow UI exited at start (code {proc.returncode}). Its log: {log_path}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200 and proc.poll() is None:
                    return
        except OSError:
            time.sleep(0.3)
    raise CnnlabError(f"The MLflow UI did not answer at {url} within {timeout:.0f} s. Its log: {log_path}")


def stop_group(proc: subprocess.Popen, grace: float = 3) -> None:
    """SIGTERM to the process group `proc` leads (the server, uvicorn and its workers), SIGKILL if it lingers."""
    pgid = proc.pid
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.time() + grace
        while time.time() < deadline:
            proc.poll()  # reap the leader: until then its zombie still counts as a member of the group
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


def guard(parent: int, cmd: List[str]) -> int:
    """Run `cmd` in a process group of its own until it ends, until we are told to stop, or until `parent` is
    gone; then stop that group."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: told at once when parent dies
    except (OSError, AttributeError):
        pass
    stopping = []
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stopping.append(signum))
    proc = subprocess.Popen(cmd, start_new_session=True)
    while proc.poll() is None and not stopping and os.getppid() == parent:
        time.sleep(0.5)
    stop_group(proc)
    proc.wait()
    return proc.returncode or 0


def _url_file() -> Path:
    """Where `cnnlab ui` writes the URL it serves this project at."""
    return runs_dir() / "mlflow-ui.url"


def last_url() -> str:
    """Where `cnnlab ui` last served this project (the workbook's run links point there), else port 5000."""
    path = _url_file()
    return path.read_text().strip() if path.is_file() else "http://127.0.0.1:5000"


def serve(port: int = 5000, host: str = "127.0.0.1", experiment: Optional[str] = None, ready=None) -> int:
    """Run the UI until Ctrl-C/SIGTERM/SIGHUP; `ready(url)` is called once it answers. Returns the exit code."""
    from .record import Store, ui_link

    store = Store(create=False)
    known = store.experiments()
    experiment = experiment or (store.latest_experiment(None) if known else None)
    if experiment is not None and experiment not in known:
        raise CnnlabError(f"Unknown experiment {experiment!r} in {store.uri}. Known: {', '.join(known) or 'none yet'}.")
    if store.uri.startswith(("http://", "https://")):  # a tracking server (team mode) already serves the UI
        base = store.uri.rstrip("/")
        url = ui_link(base, known[experiment]) if experiment else base
        _url_file().parent.mkdir(parents=True, exist_ok=True)
        _url_file().write_text(base + "\n")
        print(f"MLflow UI (served by the tracking server): {url}", flush=True)
        if ready is not None:
            ready(url)
        return 0
    _check_port(host, port)
    if host not in LOCAL_HOSTS:
        print(f"warning: binding {host}: anyone who can reach this machine can read (and change) your runs.",
              file=sys.stderr)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", store.uri, "--host", host, "--port", str(port)]
    # the server's log goes to a file: an unread pipe fills up and blocks the server mid-request or mid-shutdown
    log_path = runs_dir() / "mlflow-ui.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        # MLflow's job runner (a pool of huey consumers) serves GenAI features, not the runs table: not started
        env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
        proc = subprocess.Popen([sys.executable, "-m", "cnnlab.ui", str(os.getpid()), *cmd], start_new_session=True,
                                stdout=log, stderr=log, env=env)
    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"

    def run() -> int:
        try:
            _wait_until_up(base, proc, log_path)
            url = ui_link(base, known[experiment]) if experiment else base
            _url_file().write_text(base + "\n")
            print(f"MLflow UI: {url}\n(Ctrl-C stops it)", flush=True)
            if ready is not None:
                ready(url)
            proc.wait()
            return proc.returncode or 0
        finally:
            stop_group(proc, grace=10)  # the guard: it stops the server's group (up to 6 s) and exits

    return signals.foreground(run)

if __name__ == "__main__":
    sys.exit(guard(int(sys.argv[1]), sys.argv[2:]))
