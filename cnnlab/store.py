"""The experiment record: the one module that speaks to MLflow.

Where the store is and how it is created, the tag and state names, a run's log ID, and the
queries every view needs (find a run by any reference, list runs with filters, the children of
a sweep, metric histories) live here. The rest of cnnlab gets `Record`s, plain Python, and
never sees an MLflow object.

- The default store is SQLite at `runs/mlflow.db` with artifacts under `runs/mlartifacts/`;
  `tracking.uri=...` or $MLFLOW_TRACKING_URI points elsewhere (a server, another database).
- Everything goes through `MlflowClient` with explicit run ids: no global active run, so
  trials in one process and runs in parallel processes never mix.
- Log IDs are assigned once, when a run is created, and stored on it (tag `cnnlab.id`):
  `T<n>` per experiment for single runs, `<sweep>/T<n>` for sweep trials (`-2`, `-3` for
  later attempts at the same trial). Listing, filtering and sorting never renumber.
- Filters never carry user text inside a quoted string it could break out of: a value that
  cannot be quoted is matched in Python instead.
"""

from __future__ import annotations

import functools
import json
import os
import random
import re
import sys
import threading
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from .errors import CnnlabError
from .schema import runs_dir, safe_name


class Tag:
    """The tags cnnlab writes (MLflow params hold the resolved config, metrics the scores)."""

    ID = "cnnlab.id"  # the log ID: T<n>, or <sweep>/T<n> for a trial
    SEQ = "cnnlab.seq"  # a single run's n, zero-padded so that the store can order by it
    STATE = "cnnlab.state"  # FINISHED | FAILED | KILLED | PRUNED (MLflow's own status has no PRUNED)
    REASON = "cnnlab.end_reason"  # why a run ended FAILED, KILLED or PRUNED
    RUN_DIR = "cnnlab.run_dir"
    OVERRIDES = "cnnlab.overrides"  # the overrides as the user typed them
    SWEEP = "cnnlab.sweep"  # the sweep a trial (or a sweep's parent run) belongs to
    SWEEP_PARENT = "cnnlab.sweep_parent"  # on a sweep's parent run: the sweep's name
    TRIAL = "cnnlab.trial"  # T<n> within the sweep
    ATTEMPT = "cnnlab.attempt"  # 1, 2, ...: runs of the same trial (a re-run is an attempt, not a seed)
    TRIAL_KEY = "cnnlab.trial_key"  # hash of the resolved config with the seed
    CONFIG_KEY = "cnnlab.config_key"  # the same without the seed: the repeats of one configuration share it
    SWEPT = "cnnlab.swept"  # JSON of the trial's swept values
    OWNER = "cnnlab.owner"  # "<host> <pid> <process start>" of the process that runs it
    HEARTBEAT = "cnnlab.heartbeat"  # unix time its owner last said it is alive
    PARENT = "mlflow.parentRunId"


STATES = ("FINISHED", "FAILED", "KILLED", "PRUNED", "RUNNING")
HEARTBEAT_SECONDS = 60  # how often a running run's owner says it is alive
STALE_SECONDS = 600  # a run on another host whose owner was silent this long is taken as gone
BATCH = 100  # MLflow accepts at most 100 params or tags per log_batch call
PAGE = 5000


def parse_value(text: Optional[str]) -> Any:
    """An MLflow param (always a string) back to the value it was: '64' -> 64, 'True' -> True, 'None' -> None."""
    if text is None or text == "None":
        return None
    if text in ("True", "true"):
        return True
    if text in ("False", "false"):
        return False
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


@dataclass
class Record:
    """One recorded run, as every view sees it."""

    run_id: str
    id: str  # the log ID
    name: str  # MLflow's run name
    experiment: str
    experiment_id: str
    state: str  # one of STATES
    start_time: int  # ms since the epoch
    params: Dict[str, Any]  # the resolved config, flattened (data.name, arch.name, ...), values parsed
    metrics: Dict[str, float]  # the latest value of each metric
    tags: Dict[str, str] = field(repr=False, default_factory=dict)
    root: Optional[Path] = field(repr=False, default=None)  # the store's directory: relative run dirs are in it

    @property
    def sweep(self) -> Optional[str]:
        return self.tags.get(Tag.SWEEP)

    @property
    def trial(self) -> Optional[str]:
        return self.tags.get(Tag.TRIAL)

    @property
    def trial_key(self) -> str:
        return self.tags.get(Tag.TRIAL_KEY, self.run_id)

    @property
    def config_key(self) -> str:
        return self.tags.get(Tag.CONFIG_KEY, self.run_id)

    @property
    def attempt(self) -> int:
        return int(self.tags.get(Tag.ATTEMPT, 1))

    @property
    def swept(self) -> Dict[str, str]:
        return json.loads(self.tags.get(Tag.SWEPT, "{}"))

    @property
    def parent_run_id(self) -> Optional[str]:
        return self.tags.get(Tag.PARENT)

    @property
    def is_sweep_parent(self) -> bool:
        return Tag.SWEEP_PARENT in self.tags

    @property
    def run_dir(self) -> Optional[Path]:
        path = self.tags.get(Tag.RUN_DIR)
        if not path:
            return None
        return Path(path) if Path(path).is_absolute() or self.root is None else self.root / path

    @property
    def reason(self) -> str:
        return self.tags.get(Tag.REASON, "")


def ui_link(base: str, experiment_id: str, run_id: Optional[str] = None) -> str:
    """A run's page (or the experiment's runs table, best validation accuracy first) in the MLflow UI at `base`,
    in its machine-learning view (MLflow 3 opens experiments in a GenAI view otherwise). The table's columns
    cannot be chosen through the URL: MLflow keeps them per browser (README, "Browsing runs")."""
    if run_id:
        return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"
    return (f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
            "&orderByKey=metrics.%60val_acc_best%60&orderByAsc=false")


# ---------------------------------------------------------------- where the store is


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


def _sqlite_path(uri: str) -> Optional[Path]:
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


def _create_sqlite(path: Path) -> None:
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


def _check_sqlite(path: Path) -> None:
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
    _create_sqlite(path)


def _relocate(path: Path) -> None:
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


def _probe(uri: str) -> None:
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


def _writable(path: Path) -> bool:
    """Can this process write the store at `path` (creating its directory if need be)?"""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path.parent, os.W_OK) and (not path.exists() or os.access(path, os.W_OK))


def _literal(value: str) -> Optional[str]:
    """`value` as a quoted string of MLflow's filter grammar, or None when it cannot be quoted safely."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    return None


# ---------------------------------------------------------------- the store


class Store:
    """The record in one MLflow store. `create=False` (readers): no store is an error, not a new empty one."""

    def __init__(self, uri: Optional[str] = None, create: bool = True):
        import logging

        if _preloading is not None:
            _preloading.join()
        self.uri = tracking_uri(uri)
        path = _sqlite_path(self.uri)
        self.root = path.parent if path is not None else None  # where relative run directories are
        for name in ("alembic", "mlflow.store.db.utils"):
            logging.getLogger(name).setLevel(logging.WARNING)
        if path is not None:
            if not create and not path.exists():
                raise CnnlabError(f"No runs recorded yet: there is no MLflow store at {path}. Train something first "
                                  "(`cnnlab train`), or point $CNNLAB_RUNS_DIR / $MLFLOW_TRACKING_URI at your store.")
            self.writable = _writable(path)
            if create and not self.writable:
                raise CnnlabError(f"Cannot record runs in {path.parent}: it is not writable. Make it writable, or "
                                  "point $CNNLAB_RUNS_DIR (or tracking.uri) at a directory you can write.")
            if path.exists():
                _check_sqlite(path)
                if self.writable:
                    self._upkeep(_relocate, path)
            else:
                _create_sqlite(path)
        else:
            self.writable = True
            if self.uri.startswith(("http://", "https://")):
                _probe(self.uri)
        self._sqlite = path if path is not None and path.exists() else None  # read directly, see _read
        self._names: Dict[str, str] = {}  # experiment id -> name
        if self.writable:
            self._upkeep(self.reap)

    def _upkeep(self, fn, *args) -> None:
        """Maintenance a reader can do without (relocating, reaping): a disk that is full or read-only leaves it
        for later, saying so, instead of ending a command that only reads."""
        from .errors import storage_failure

        try:
            fn(*args)
        except Exception as exc:
            why = storage_failure(exc)
            if not why:
                raise
            self.writable = False
            print(f"note: the disk holding {self.root or self.uri} is {why}: the store is read as it is (runs left "
                  "RUNNING by a process that is gone are marked KILLED once it can be written)", file=sys.stderr)

    @functools.cached_property
    def client(self):
        """MLflow's client: every write, and reads other than a SQLite store's runs and experiments."""
        from mlflow.tracking import MlflowClient

        if _preloading is not None:
            _preloading.join()
        # against a server MLflow prints a "View run" link (one more request) each time a run ends: the live
        # table and the summary say what a run did, and `cnnlab ui` links to it
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        return MlflowClient(tracking_uri=self.uri)

    # ---- experiments

    def experiments(self) -> Dict[str, str]:
        """name -> id of every active experiment."""
        rows = self._query(("SELECT name, experiment_id FROM experiments WHERE lifecycle_stage = 'active' "
                            "ORDER BY experiment_id", ()))
        if rows is not None:
            found = {name: str(exp_id) for name, exp_id in rows[0]}
        else:
            found = {e.name: e.experiment_id for e in self.client.search_experiments()}
        self._names.update({v: k for k, v in found.items()})
        return found

    def latest_experiment(self, default: str = "cifar10") -> str:
        """The experiment of the most recently started run (`default` in an empty store): what every command
        shows when none is named."""
        rows = self._query(("SELECT e.name FROM runs r JOIN experiments e USING (experiment_id) WHERE "
                            "e.lifecycle_stage = 'active' AND r.lifecycle_stage = 'active' ORDER BY r.start_time DESC "
                            "LIMIT 1", ()))
        if rows is not None:
            return rows[0][0][0] if rows[0] else default
        known = self.experiments()
        if not known:
            return default
        runs = self.client.search_runs(list(known.values()), max_results=1, order_by=["attributes.start_time DESC"])
        return self._experiment_name(runs[0].info.experiment_id) if runs else default

    def experiment_id(self, name: str, create: bool = True) -> Optional[str]:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            self._names[exp.experiment_id] = name
            return exp.experiment_id
        if not create:
            return None
        location = None
        if self.root is not None:  # artifacts beside the store, so that the store is one movable directory
            location = (self.root / "mlartifacts" / safe_name(name)).as_uri()
        try:
            exp_id = self.client.create_experiment(name, artifact_location=location)
        except Exception:  # created meanwhile by a parallel process
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise
            exp_id = exp.experiment_id
        self._names[exp_id] = name
        return exp_id

    def _experiment_ids(self, names: Optional[Sequence[str]]) -> List[str]:
        known = self.experiments()
        if names is None:
            return list(known.values())
        missing = [e for e in names if e not in known]
        if missing:
            raise CnnlabError(f"Unknown experiment(s) {', '.join(missing)} in {self.uri}. "
                              f"Known: {', '.join(sorted(known)) or 'none (nothing recorded yet)'}.")
        return [known[e] for e in names]

    def _experiment_name(self, exp_id: str) -> str:
        if exp_id not in self._names:
            self._names[exp_id] = self.client.get_experiment(exp_id).name
        return self._names[exp_id]

    # ---- creating runs

    def create_run(self, experiment: str, tags: Dict[str, str], *, run_name: Optional[str] = None,
                   parent_run_id: Optional[str] = None, log_id: Optional[str] = None) -> "Run":
        """A new RUNNING run. A sweep's trials bring the log ID their sweep numbered them with; any other run
        gets T<n>, the next number in its experiment, claimed so that runs created at once never share one."""
        start = time.perf_counter()
        exp_id = self.experiment_id(experiment)
        tags = {k: str(v) for k, v in tags.items()}
        tags.update({Tag.OWNER: owner(), Tag.HEARTBEAT: str(int(time.time()))})
        if parent_run_id:
            tags[Tag.PARENT] = parent_run_id
        if log_id is not None:
            tags[Tag.ID] = log_id
        run = self.client.create_run(exp_id, run_name=run_name or log_id, tags=tags)  # the UI shows <sweep>/T<n>
        run_id = run.info.run_id
        if log_id is None:
            log_id = self._claim_id(exp_id, run_id)
            if not run_name:
                self.client.update_run(run_id, name=log_id)
        return Run(self, run_id, log_id, exp_id, time.perf_counter() - start)

    def reap(self) -> List[Record]:
        """End KILLED the runs left RUNNING by a process that is gone (SIGKILL, a crash, a power cut), saying so."""
        exp_ids = list(self.experiments().values())
        if not exp_ids:
            return []
        reaped = []
        running = self._read(exp_ids, "status = 'RUNNING'")
        if running is None:
            running = [self._record(r) for r in self._search(exp_ids, {}, extra=["attributes.status = 'RUNNING'"])]
        for record in running:
            tags = record.tags
            if Tag.OWNER not in tags or owner_alive(tags[Tag.OWNER], tags.get(Tag.HEARTBEAT)):
                continue
            host, pid = tags[Tag.OWNER].split()[:2]
            self._end(record.run_id, "KILLED", f"its process ({pid} on {host}) ended without ending it "
                                                "(killed or crashed)")
            print(f"note: {record.experiment} {record.id} was left RUNNING by process {pid} on {host}, which is gone: "
                  "marked KILLED", file=sys.stderr)
            reaped.append(record)
        return reaped

    def _claim_id(self, exp_id: str, run_id: str) -> str:
        """T<next n>, written on the run and kept only if no other run claims the same ID. On a local store the
        claims take turns under a lock, so numbers run without gaps; on a server, two runs that claim one at once
        both see each other and both move on: a number may be skipped there, never given twice."""
        with self._turns():
            return self._claim_id_checked(exp_id, run_id)

    def _turns(self):
        """A lock that processes on a local store take turns under (claiming log IDs, reopening a run); a server's
        store has none."""
        path = _sqlite_path(self.uri)
        return file_lock(path.parent / f".{path.name}.ids.lock") if path else nullcontext()

    def _claim_id_checked(self, exp_id: str, run_id: str) -> str:
        for attempt in range(100):
            top = self.client.search_runs([exp_id], f"tags.`{Tag.SEQ}` LIKE '%'", max_results=1,
                                          order_by=[f"tags.`{Tag.SEQ}` DESC"])
            n = int(top[0].data.tags[Tag.SEQ]) + 1 if top else 0
            log_id = f"T{n}"
            self._set_tags(run_id, {Tag.ID: log_id, Tag.SEQ: f"{n:09d}"})
            holders = self.client.search_runs([exp_id], f"tags.`{Tag.ID}` = '{log_id}'", max_results=10)
            if all(r.info.run_id == run_id for r in holders):
                return log_id
            time.sleep(random.uniform(0.01, 0.05) * (attempt + 1))
        raise CnnlabError(f"Could not give run {run_id} a log ID in {self.uri}: too many runs were being created at "
                          "once. Try again.")

    # ---- writing

    def _set_tags(self, run_id: str, tags: Dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, redact_url(str(v))) for k, v in tags.items()]  # a URL's password is never recorded
        for i in range(0, len(items), BATCH):
            self.client.log_batch(run_id, tags=items[i:i + BATCH])

    def _log_params(self, run_id: str, params: Dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, "None" if v is None else redact_url(str(v))) for k, v in params.items()]
        for i in range(0, len(items), BATCH):
            self.client.log_batch(run_id, params=items[i:i + BATCH])

    def _log_metrics(self, run_id: str, metrics: Dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
        for i in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[i:i + 1000])

    def _log_artifact(self, run_id: str, path: Path, subdir: Optional[str] = None) -> None:
        self.client.log_artifact(run_id, str(path), subdir)

    def _end(self, run_id: str, state: str, reason: str = "") -> None:
        """End a run: FINISHED, FAILED, KILLED or PRUNED (MLflow's status KILLED, with our state tag)."""
        tags = {Tag.STATE: state, **({Tag.REASON: reason[:5000]} if reason else {})}
        self._set_tags(run_id, tags)
        self.client.set_terminated(run_id, "KILLED" if state == "PRUNED" else state)

    def set_status(self, run_id: str, state: str) -> None:
        """Mark a run RUNNING again (a sweep's parent when the sweep resumes)."""
        self.client.update_run(run_id, status=state)

    def open(self, record: Record) -> "Run":
        """A handle for writing to a run that already exists."""
        return Run(self, record.run_id, record.id, record.experiment_id, 0.0)

    def reopen(self, record: Record) -> "Run":
        """A KILLED or FAILED run RUNNING again, owned by this process (`cnnlab train resume=RUN`). Of two
        processes that reopen it at once, one does; the other is told it is RUNNING. On a local store they take
        turns under a lock; on a server the owner tag read back says who won."""
        me = owner()
        with self._turns():
            fresh = self.get(record.run_id)
            if fresh.state == "RUNNING":
                raise CnnlabError(f"Run {record.id} is still RUNNING (process {fresh.tags.get(Tag.OWNER, '?')}): "
                                  "another `cnnlab train resume=` took it.")
            self._set_tags(record.run_id, {Tag.OWNER: me, Tag.HEARTBEAT: str(int(time.time()))})
            self.client.update_run(record.run_id, status="RUNNING")
        if self.get(record.run_id).tags.get(Tag.OWNER) != me:
            raise CnnlabError(f"Run {record.id} is still RUNNING: another `cnnlab train resume=` took it.")
        from mlflow.exceptions import MlflowException

        for tag in (Tag.STATE, Tag.REASON):
            if tag in fresh.tags:
                try:
                    self.client.delete_tag(record.run_id, tag)
                except MlflowException:  # deleted already
                    pass
        return self.open(record)

    # ---- reading

    def _search(self, exp_ids: List[str], where: Dict[str, str], *, extra: Sequence[str] = (),
                order_by: Optional[List[str]] = None, max_results: Optional[int] = None) -> list:
        """Runs of `exp_ids` matching `where` ({"tags.<name>" | "run_name": value}) and the `extra` clauses
        (built by this module from values it controls), oldest first unless ordered otherwise."""
        clauses, in_python = list(extra), {}
        for key, value in where.items():
            quoted = _literal(value)
            if quoted is None:
                in_python[key] = value
            elif key == "run_name":
                clauses.append(f"attributes.run_name = {quoted}")
            else:
                clauses.append(f"tags.`{key[len('tags.'):]}` = {quoted}")
        runs, token = [], None
        while True:
            page = self.client.search_runs(exp_ids, " and ".join(clauses), max_results=min(PAGE, max_results or PAGE),
                                           page_token=token, order_by=order_by or ["attributes.start_time ASC"])
            runs += list(page)
            token = page.token
            if not token or (max_results and len(runs) >= max_results):
                break

        def keep(run) -> bool:
            for key, value in in_python.items():
                got = run.info.run_name if key == "run_name" else run.data.tags.get(key[len("tags."):])
                if got != value:
                    return False
            return True

        return [r for r in runs if keep(r)]

    def _record(self, run) -> Record:
        return self._make_record(run.info.run_id, run.info.run_name, run.info.experiment_id, run.info.status,
                                 run.info.start_time, run.data.params, dict(run.data.metrics), dict(run.data.tags))

    def _make_record(self, run_id: str, name: str, experiment_id: str, status: str, start_time: int,
                     params: Dict[str, str], metrics: Dict[str, float], tags: Dict[str, str]) -> Record:
        return Record(
            run_id=run_id, id=tags.get(Tag.ID) or name or run_id[:8], name=name,
            experiment=self._experiment_name(experiment_id), experiment_id=experiment_id,
            state=tags.get(Tag.STATE, status) if status != "RUNNING" else "RUNNING", start_time=start_time,
            params={k: parse_value(v) for k, v in params.items()}, metrics=metrics, tags=tags, root=self.root)

    def _query(self, *statements: Tuple[str, Sequence[Any]]) -> Optional[List[list]]:
        """The rows of each (sql, args), read-only and in one transaction, from the SQLite store; None for a store
        of another kind, or one whose tables are not as expected (another MLflow): the client reads it then."""
        if self._sqlite is None:
            return None
        import sqlite3
        from contextlib import closing

        try:
            with closing(sqlite3.connect(f"{self._sqlite.as_uri()}?mode=ro", uri=True, timeout=30)) as db:
                db.execute("BEGIN")  # one snapshot for all the statements
                return [db.execute(sql, args).fetchall() for sql, args in statements]
        except sqlite3.Error:
            return None

    def _read(self, exp_ids: Sequence[str], where: str = "", args: Sequence[Any] = ()) -> Optional[List[Record]]:
        """The active runs of `exp_ids` (and `where`, SQL on the runs table) oldest first, read from the SQLite
        file itself: MLflow's client makes an ORM object of every param, metric and tag, 3 s for 1,000 runs after
        1.7 s of importing and opening, where these queries take a tenth of that. The tables are MLflow's (runs,
        params, latest_metrics, tags, as `mlflow db upgrade` keeps them); writes always go through the client.
        None when the store is not SQLite or its tables are not as expected. A test holds both readers equal."""
        if not exp_ids:
            return None if self._sqlite is None else []
        selected = (f"SELECT run_uuid FROM runs WHERE lifecycle_stage = 'active' AND experiment_id IN "
                    f"({','.join('?' * len(exp_ids))})" + (f" AND {where}" if where else ""))
        args = [int(e) for e in exp_ids] + list(args)
        found = self._query(
            (f"SELECT run_uuid, name, experiment_id, status, start_time FROM runs WHERE run_uuid IN ({selected}) "
             "ORDER BY start_time, run_uuid", args),
            (f"SELECT run_uuid, key, value FROM params WHERE run_uuid IN ({selected})", args),
            (f"SELECT run_uuid, key, value, is_nan FROM latest_metrics WHERE run_uuid IN ({selected})", args),
            (f"SELECT run_uuid, key, value FROM tags WHERE run_uuid IN ({selected})", args))
        if found is None:
            return None
        runs, param_rows, metric_rows, tag_rows = found
        params: Dict[str, Dict[str, str]] = {r[0]: {} for r in runs}
        metrics: Dict[str, Dict[str, float]] = {r[0]: {} for r in runs}
        tags: Dict[str, Dict[str, str]] = {r[0]: {} for r in runs}
        for run_id, key, value in param_rows:
            params[run_id][key] = value
        for run_id, key, value, is_nan in metric_rows:
            metrics[run_id][key] = float("nan") if is_nan else value
        for run_id, key, value in tag_rows:
            tags[run_id][key] = value
        return [self._make_record(run_id, name, str(exp_id), status, start_time, params[run_id], metrics[run_id],
                                  tags[run_id]) for run_id, name, exp_id, status, start_time in runs]

    def get(self, run_id: str) -> Record:
        return self._record(self.client.get_run(run_id))

    def find(self, ref: str, experiments: Optional[Sequence[str]] = None) -> Record:
        """The run `ref` names: its log ID (T3, exercise/T3), its run name, or a unique prefix of its MLflow run ID
        (4 hex digits or more). An ambiguous reference is refused, naming the candidates."""
        ref = str(ref).strip()
        exp_ids = self._experiment_ids(experiments)
        hexadecimal = re.fullmatch(r"[0-9a-f]{4,32}", ref) is not None
        records = self._read(exp_ids, "(run_uuid IN (SELECT run_uuid FROM tags WHERE key = ? AND value = ?) OR "
                                      "name = ? OR (? AND run_uuid LIKE ?))",
                             (Tag.ID, ref, ref, hexadecimal, f"{ref}%")) if exp_ids else []
        if records is None:  # not SQLite: MLflow's search, the same three ways
            found: Dict[str, Any] = {}
            for where in ({f"tags.{Tag.ID}": ref}, {"run_name": ref}):
                for run in self._search(exp_ids, where):
                    found.setdefault(run.info.run_id, run)
            if hexadecimal:
                for run in self._search(exp_ids, {}, extra=[f"attributes.run_id LIKE '{ref}%'"]):
                    found.setdefault(run.info.run_id, run)
            records = [self._record(r) for r in found.values()]
        by_id = [r for r in records if r.id == ref or r.run_id == ref]
        if len(records) > 1 and len(by_id) == 1:  # an exact log ID or run ID wins over names and prefixes
            records = by_id
        where = f" in experiment(s) {', '.join(experiments)}" if experiments else ""
        if not records:
            raise CnnlabError(f"No run {ref!r}{where} in {self.uri}: give a log ID as `cnnlab runs` prints it (T3, "
                              "exercise/T3), a run name, or a prefix of the MLflow run ID (4+ hex digits).")
        if len(records) > 1:
            listed = "; ".join(f"{r.experiment}: {r.id} (name {r.name}, run {r.run_id[:12]})"
                               for r in sorted(records, key=lambda r: r.start_time))
            raise CnnlabError(f"{ref!r} names {len(records)} runs{where}: {listed}. Give the run ID prefix, or "
                              "narrow with --experiment.")
        return records[0]

    def runs(self, experiments: Optional[Sequence[str]] = None, *, sweep: Optional[str] = None,
             states: Sequence[str] = (), since: Optional[int] = None, until: Optional[int] = None,
             archs: Sequence[str] = (), parents: bool = False) -> List[Record]:
        """Runs oldest first. since/until: start times in ms (until exclusive). Sweep parent runs only with
        parents=True (they are not rows of the log)."""
        bad = [s for s in states if s not in STATES]
        if bad:
            raise CnnlabError(f"Unknown status {', '.join(bad)}. Valid: {', '.join(STATES)}.")
        exp_ids = self._experiment_ids(experiments)
        if not exp_ids:
            return []
        extra = []
        if since is not None:
            extra.append(f"attributes.start_time >= {int(since)}")
        if until is not None:
            extra.append(f"attributes.start_time < {int(until)}")
        records = self._read(exp_ids)
        if records is not None:  # the same selection as the search below, made here
            records = [r for r in records if (not sweep or r.sweep == sweep) and
                       (since is None or r.start_time >= since) and (until is None or r.start_time < until)]
        else:
            where = {f"tags.{Tag.SWEEP}": sweep} if sweep else {}
            records = [self._record(r) for r in self._search(exp_ids, where, extra=extra)]
        records = self._give_ids(records)
        return [r for r in records if (parents or not r.is_sweep_parent) and (not states or r.state in states)
                and (not archs or r.params.get("arch.name") in archs)]

    def first_single_run(self, experiment_id: str) -> Optional[Record]:
        """The experiment's first run outside sweeps (its T0, or the lowest T<n> left): one indexed query."""
        if self._sqlite is not None:
            found = self._read([experiment_id], f"run_uuid = (SELECT t.run_uuid FROM tags t JOIN runs r USING "
                                                f"(run_uuid) WHERE t.key = '{Tag.SEQ}' AND r.experiment_id = ? AND "
                                                "r.lifecycle_stage = 'active' ORDER BY t.value LIMIT 1)",
                               (int(experiment_id),))
            if found is not None:
                return found[0] if found else None
        found = self._search([experiment_id], {}, extra=[f"tags.`{Tag.SEQ}` LIKE '%'"], max_results=1,
                             order_by=[f"tags.`{Tag.SEQ}` ASC"])
        return self._record(found[0]) if found else None

    def _give_ids(self, records: List[Record]) -> List[Record]:
        """Runs recorded before log IDs existed get theirs now, once, in start order: a sweep's parent its
        sweep's name, a trial <sweep>/<its run name>, any other run the next T<n> of its experiment."""
        for r in records:
            if Tag.ID in r.tags:
                continue
            if r.is_sweep_parent:
                r.id = r.tags[Tag.SWEEP_PARENT]
                self._set_tags(r.run_id, {Tag.ID: r.id})
            elif r.sweep:
                r.id = f"{r.sweep}/{r.name}"
                self._set_tags(r.run_id, {Tag.ID: r.id})
            else:
                r.id = self._claim_id(r.experiment_id, r.run_id)
            r.tags[Tag.ID] = r.id
        return records

    def children(self, parent_run_id: str, experiment_id: str) -> List[Record]:
        """A sweep's trial runs (every attempt), oldest first."""
        return [self._record(r) for r in self._search([experiment_id], {f"tags.{Tag.PARENT}": parent_run_id})]

    def sweep_parent(self, experiment_id: str, name: str) -> Optional[Record]:
        found = self._search([experiment_id], {f"tags.{Tag.SWEEP_PARENT}": name}, max_results=1)
        return self._record(found[0]) if found else None

    def histories(self, run_ids: List[str], keys: Sequence[str]) -> Dict[str, Dict[str, Dict[int, float]]]:
        """run id -> metric -> {step: first value logged at that step}, fetched in bulk where the store can."""
        out: Dict[str, Dict[str, Dict[int, float]]] = {r: {} for r in run_ids}
        if not run_ids or not keys:
            return out
        found = self._query(*[(f"SELECT run_uuid, key, step, value, is_nan FROM metrics WHERE run_uuid IN "
                               f"({','.join('?' * len(run_ids[i:i + 500]))}) AND key IN ({','.join('?' * len(keys))}) "
                               "ORDER BY run_uuid, key, timestamp, step, value", [*run_ids[i:i + 500], *keys])
                              for i in range(0, len(run_ids), 500)])
        if found is not None:  # the SQLite file itself, as _read does
            for rows in found:
                for run_id, key, step, value, is_nan in rows:
                    out[run_id].setdefault(key, {}).setdefault(step, float("nan") if is_nan else value)
            return out
        # MLflow's client has no bulk call; its SQL store does (one query per metric for 500 runs)
        backend = getattr(getattr(self.client, "_tracking_client", None), "store", None)
        for key in keys:
            if hasattr(backend, "get_metric_history_bulk"):
                for i in range(0, len(run_ids), 500):
                    for m in backend.get_metric_history_bulk(run_ids[i:i + 500], key, max_results=10 ** 7):
                        out[m.run_id].setdefault(key, {}).setdefault(m.step, m.value)
            else:  # a tracking server: one request per run
                for run_id in run_ids:
                    for m in self.client.get_metric_history(run_id, key):
                        out[run_id].setdefault(key, {}).setdefault(m.step, m.value)
        return out

    def list_artifacts(self, run_id: str, path: Optional[str] = None) -> List[str]:
        return [a.path for a in self.client.list_artifacts(run_id, path)]

    def download(self, run_id: str, path: str) -> Optional[Path]:
        """A run's artifact as a local file (a store on a server keeps them there); None when it has none."""
        import tempfile

        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # not in a command's output
        try:
            return Path(self.client.download_artifacts(run_id, path, tempfile.mkdtemp(prefix="cnnlab-")))
        except Exception:  # MLflow raises its own error types, and OSError for a missing local file
            return None


class Run:
    """A run open for writing; every call's wall time adds up in `seconds` (tracking's share of a training)."""

    def __init__(self, store: Store, run_id: str, log_id: str, experiment_id: str, seconds: float = 0.0):
        self.store, self.run_id, self.id, self.experiment_id = store, run_id, log_id, experiment_id
        self.seconds = seconds
        self.ended = False
        self._stop = threading.Event()

    def keep_alive(self) -> None:
        """Say every HEARTBEAT_SECONDS that this run's process is alive, until the run ends (a daemon thread)."""
        def beat():
            while not self._stop.wait(HEARTBEAT_SECONDS):
                try:
                    self.store._set_tags(self.run_id, {Tag.HEARTBEAT: str(int(time.time()))})
                except Exception:  # a store that does not answer now: the next beat tries again
                    pass

        threading.Thread(target=beat, daemon=True, name=f"heartbeat-{self.id}").start()

    def _timed(self, fn, *args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start

    def log_params(self, params: Dict[str, Any]) -> None:
        self._timed(self.store._log_params, self.run_id, params)

    def set_tags(self, tags: Dict[str, Any]) -> None:
        self._timed(self.store._set_tags, self.run_id, tags)

    def log_metrics(self, metrics: Dict[str, float], step: int = 0) -> None:
        """All of `metrics` in one call (one database round trip per epoch)."""
        self._timed(self.store._log_metrics, self.run_id, metrics, step)

    def log_artifacts(self, paths: Iterable[Path], subdir: Optional[str] = None) -> None:
        for path in paths:
            self._timed(self.store._log_artifact, self.run_id, path, subdir)

    def end(self, state: str, reason: str = "") -> None:
        """FINISHED, FAILED, KILLED or PRUNED, with the reason; a second call is a no-op."""
        if not self.ended:
            self._stop.set()
            self._timed(self.store._end, self.run_id, state, reason)
            self.ended = True
