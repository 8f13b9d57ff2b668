"""`cnnlab ui`: the MLflow UI on this project's store, stopped with its whole process group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request

from .errors import CnnlabError, Interrupted
from .schema import runs_dir

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def _wait_until_up(url: str, proc: subprocess.Popen, log_path, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise CnnlabError(f"The MLflow UI exited at start (code {proc.returncode}); is the port already in use? "
                              f"Its log: {log_path}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise CnnlabError(f"The MLflow UI did not answer at {url} within {timeout:.0f} s. Its log: {log_path}")


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the server's whole process group (uvicorn and its workers), SIGKILL if it lingers."""
    for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


def serve(port: int = 5000, host: str = "127.0.0.1", experiment: str = "cifar10", ready=None) -> int:
    """Run the UI until Ctrl-C/SIGTERM; `ready(url)` is called once it answers. Returns the exit code."""
    from .store import Store, ui_link

    store = Store(create=False)
    uri = store.uri
    known = store.experiments()
    if experiment not in known:
        raise CnnlabError(f"Unknown experiment {experiment!r} in {uri}. Known: {', '.join(known) or 'none yet'}.")
    if host not in LOCAL_HOSTS:
        print(f"warning: binding {host}: anyone who can reach this machine can read (and change) your runs.",
              file=sys.stderr)
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host, "--port", str(port)]
    # the server's log goes to a file: an unread pipe fills up and blocks the server mid-request or mid-shutdown
    log_path = runs_dir() / "mlflow-ui.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, start_new_session=True, stdout=log, stderr=log)
    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"

    def on_term(signum, frame):
        raise Interrupted(signum)

    old = signal.signal(signal.SIGTERM, on_term)
    # Ctrl-C must stop it even when started with SIGINT ignored (`cnnlab ui &` from a script, or a parent
    # process that ignores it): Python then leaves SIGINT ignored and the UI could not be stopped that way
    old_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _wait_until_up(base, proc, log_path)
        url = ui_link(base, known[experiment])
        print(f"MLflow UI: {url}\n(Ctrl-C stops it)", flush=True)
        if ready is not None:
            ready(url)
        proc.wait()
        return proc.returncode or 0
    except (KeyboardInterrupt, Interrupted) as exc:
        return getattr(exc, "exit_code", 130)
    finally:
        _stop(proc)
        signal.signal(signal.SIGTERM, old)
        signal.signal(signal.SIGINT, old_int)
