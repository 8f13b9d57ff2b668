"""Where the record is and the upkeep of its file: the tracking URI, the SQLite store's creation (atomic), its checks,
its relocation after a move, and a tracking server's first answer."""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

from ..errors import CnnlabError
from ..schema import runs_dir


_preloading: Optional[threading.Thread] = None


def preload() -> None:
    """Start importing MLflow's client (about a second) in a thread while other work goes on.

    `Store()` waits for it: importing MLflow from two threads at once is a circular-import race.
    """
    global _preloading

    def load():
        import mlflow.entities  # noqa: F401
        from mlflow.tracking import MlflowClient  # noqa: F401

    if _preloading is None:
        _preloading = threading.Thread(target=load, daemon=True)
        _preloading.start()


def tracking_uri(uri: Optional[str] = None) -> str:
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{runs_dir() / 'mlflow.db'}"


def sqlite_path(uri: str) -> Optional[Path]:
    """The file of a SQLite store, absolute (`sqlite:///mlflow.db` is relative to the working directory)."""
    return Path(uri[len("sqlite:///"):]).absolute() if uri.startswith("sqlite:///") else None


@contextmanager
def file_lock(path: Path):
    """An exclusive lock between processes (released by the OS if the holder dies)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def create_sqlite(path: Path) -> None:
    """Create the SQLite store at `path` atomically: its schema is built in a file aside and moved into place,
    under a lock, so that processes starting at once on a fresh store (or one interrupted while creating it)
    never see a half-made schema. Leftovers of an interrupted creation are removed."""
    if path.exists():
        return
    with file_lock(path.parent / f".{path.name}.lock"):
        if path.exists():  # another process made it while we waited
            return
        for stale in path.parent.glob(f".{path.name}.*.tmp"):
            stale.unlink()
        tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        store = SqlAlchemyStore(f"sqlite:///{tmp}", (path.parent / "mlartifacts").as_uri())
        store.engine.dispose()
        os.replace(tmp, path)


def check_sqlite(path: Path) -> None:
    """Refuse a file that is not a usable store, saying what to do; a store whose creation an older cnnlab left
    half-made (no runs in it) is moved aside and made again. A store with runs is never changed here."""
    import sqlite3

    fix = f"Move it away (mv {path} {path}.bad) to start a fresh store; nothing was changed."
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            runs = db.execute("SELECT count(*) FROM runs").fetchone()[0] if "runs" in tables else 0
            version = db.execute("SELECT version_num FROM alembic_version").fetchone() \
                if "alembic_version" in tables else None
    except sqlite3.DatabaseError as exc:
        raise CnnlabError(f"{path} is not a readable MLflow store ({exc}): it is corrupt or not an SQLite file. "
                          f"{fix}") from None
    half_made = version is None or any(t.startswith("_alembic_tmp") for t in tables) or "runs" not in tables
    if not half_made:
        return
    if runs:
        raise CnnlabError(f"{path} holds {runs} run(s) but its schema is half-migrated (an interrupted upgrade). "
                          f"Back it up, then run `mlflow db upgrade sqlite:///{path}`.")
    with file_lock(path.parent / f".{path.name}.lock"):
        if path.exists():
            aside = path.with_name(f"{path.name}.incomplete-{time.strftime('%Y%m%d-%H%M%S')}")
            os.replace(path, aside)
            print(f"note: {path} was a half-made store with no runs (an interrupted creation); moved it to "
                  f"{aside.name} and made a new one", file=sys.stderr)
    create_sqlite(path)


def relocate(path: Path) -> None:
    """A store copied or moved elsewhere keeps its artifacts beside it: experiments and runs whose artifact
    location is another directory's `mlartifacts/` are pointed at this one's (cnnlab made them so)."""
    import sqlite3

    root = (path.parent / "mlartifacts").as_uri()
    with sqlite3.connect(path) as db:
        locations = db.execute("SELECT experiment_id, artifact_location FROM experiments").fetchall()
        moved = {loc[:loc.index("/mlartifacts/") + len("/mlartifacts")] for _, loc in locations
                 if loc and loc.startswith("file://") and "/mlartifacts/" in loc}
        moved.discard(root)
        if not moved:
            return
        with file_lock(path.parent / f".{path.name}.lock"):
            for old in moved:
                n = len(old) + 1
                db.execute("UPDATE experiments SET artifact_location = ? || substr(artifact_location, ?) "
                           "WHERE artifact_location LIKE ? || '/%'", (root, n, old))
                db.execute("UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) "
                           "WHERE artifact_uri LIKE ? || '/%'", (root, n, old))


def redact_url(text: str) -> str:
    """`text` with the password of any URL in it (scheme://user:password@host) replaced by ***."""
    import re

    return re.sub(r"(\w+://[^:/@\s]*):[^@\s]*@", r"\1:***@", text)


def probe(uri: str) -> None:
    """Fail fast, naming the URI, when a tracking server does not answer (MLflow's own retries take minutes)
    or refuses us (a server with authentication, and no or wrong credentials)."""
    import base64
    import urllib.error
    import urllib.request

    for attempt in range(2):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=5):
                break
        except urllib.error.HTTPError:  # it answered (with auth, or without /health): it is up
            break
        except (OSError, ValueError) as exc:
            error = exc
            time.sleep(1)
    else:
        raise CnnlabError(f"The MLflow tracking server at {redact_url(uri)} does not answer ({error}). Start it, or fix "
                          "$MLFLOW_TRACKING_URI / tracking.uri (unset, runs go to the local store in runs/).")
    request = urllib.request.Request(f"{uri.rstrip('/')}/api/2.0/mlflow/experiments/search?max_results=1")
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    not_mlflow = (f"The tracking URI {redact_url(uri)} answers, but not as an MLflow tracking server does ({{}} at "
                  "/api/2.0/mlflow/experiments/search). Check the host, port and path of $MLFLOW_TRACKING_URI / "
                  "tracking.uri (`cnnlab team status` prints the team's), or unset it to record in runs/.")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read(1 << 20)
        try:
            json.loads(body or b"{}")
        except ValueError:
            raise CnnlabError(not_mlflow.format(f"HTTP {response.status} with a page that is not JSON")) from None
    except urllib.error.HTTPError as exc:
        if exc.code in (404, 405, 501):
            raise CnnlabError(not_mlflow.format(f"HTTP {exc.code} {exc.reason}")) from None
        if exc.code == 401:
            given = f"as user {user!r}, whose password it refused" if user and password else "without credentials"
            raise CnnlabError(
                f"The MLflow tracking server at {redact_url(uri)} is not authorising this client ({given}; it "
                "answered 401 Unauthorized). Set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to an account "
                "of that server: `cnnlab team up` writes them into runs/team/secrets.env (load it with "
                "`set -a; . runs/team/secrets.env; set +a`).") from None
        if exc.code == 403:
            raise CnnlabError(f"The MLflow tracking server at {redact_url(uri)} does not let user {user!r} read "
                              "experiments (403 Forbidden): ask its admin for READ (and EDIT to record runs).") from None
    except (OSError, ValueError):
        pass  # it answered /health: MLflow's client retries and reports anything else


def writable(path: Path) -> bool:
    """Can this process write the store at `path` (creating its directory if need be)?"""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path.parent, os.W_OK) and (not path.exists() or os.access(path, os.W_OK))


def wait_for_preload() -> None:
    """Wait for preload()'s import, if one is under way: importing MLflow from two threads at once races."""
    if _preloading is not None:
        _preloading.join()
