"""`Store`: the record in one MLflow store, the facade every command and view goes through.

- The default store is SQLite at `runs/mlflow.db` with artifacts under `runs/mlartifacts/`; `tracking.uri=...` or
  $MLFLOW_TRACKING_URI points elsewhere (a server, another database).
- Opening a store only reads (and creates a missing local one, for commands that record). Its upkeep, relocating a
  moved store's artifacts and ending KILLED the runs whose process is gone, writes: the commands that write call
  `upkeep()`; a view shows such a run as KILLED without changing it.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..errors import CnnlabError
from ..schema import safe_name
from . import ids, liveness, location
from .readers import ClientReader, Histories, Reader, SqliteReader
from .vocabulary import STATES, Record, Tag, parse_value
from .writer import Run, Writer


class Store:
    """The record in one MLflow store. `create=False` (readers): no store is an error, not a new empty one.
    reader: "sqlite" or "client" to choose the reader (tests); by default the store's kind chooses it, once."""

    def __init__(self, uri: Optional[str] = None, create: bool = True, reader: Optional[str] = None):
        location.wait_for_preload()
        self.uri = location.tracking_uri(uri)
        path = location.sqlite_path(self.uri)
        self.root = path.parent if path is not None else None  # where relative run directories are
        for name in ("alembic", "mlflow.store.db.utils"):
            logging.getLogger(name).setLevel(logging.WARNING)
        self.writable = True
        if path is not None:
            self._open_sqlite(path, create)
        elif self.uri.startswith(("http://", "https://")):
            location.probe(self.uri)
        self._names: Dict[str, str] = {}  # experiment id -> name
        sqlite = path is not None and path.exists() and reader != "client" and SqliteReader.usable(path)
        self.reader: Reader = SqliteReader(path, self._make) if sqlite else ClientReader(self.client, self._make)

    def _open_sqlite(self, path: Path, create: bool) -> None:
        if not create and not path.exists():
            raise CnnlabError(f"No runs recorded yet: there is no MLflow store at {path}. Train something first "
                              "(`cnnlab train`), or point $CNNLAB_RUNS_DIR / $MLFLOW_TRACKING_URI at your store.")
        self.writable = location.writable(path)
        if create and not self.writable:
            raise CnnlabError(f"Cannot record runs in {path.parent}: it is not writable. Make it writable, or "
                              "point $CNNLAB_RUNS_DIR (or tracking.uri) at a directory you can write.")
        if path.exists():
            location.check_sqlite(path)
        else:
            location.create_sqlite(path)

    def upkeep(self) -> None:
        """What a command that writes does first: point a moved store's artifact locations at its own directory, and
        end KILLED the runs left RUNNING by a process that is gone. A disk that is full or read-only leaves it for
        later, saying so, instead of ending the command."""
        from ..errors import storage_failure

        path = location.sqlite_path(self.uri)
        try:
            if path is not None and path.exists():
                location.relocate(path)
            liveness.reap(self)
        except Exception as exc:
            why = storage_failure(exc)
            if not why:
                raise
            self.writable = False
            print(f"note: the disk holding {self.root or self.uri} is {why}: the store is read as it is (runs left "
                  "RUNNING by a process that is gone are marked KILLED once it can be written)", file=sys.stderr)

    @functools.cached_property
    def client(self):
        """MLflow's client: every write, and reads the reader does not do."""
        from mlflow.tracking import MlflowClient

        location.wait_for_preload()
        # against a server MLflow prints a "View run" link (one more request) each time a run ends: the live
        # table and the summary say what a run did, and `cnnlab ui` links to it
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        return MlflowClient(tracking_uri=self.uri)

    @functools.cached_property
    def writer(self) -> Writer:
        return Writer(self.client, self.uri)

    def _make(self, run_id: str, name: str, experiment_id: str, status: str, start_time: int, params: dict,
              metrics: dict, tags: dict) -> Record:
        """A Record from what a reader read. A run RUNNING without a process behind it reads as KILLED."""
        state = tags.get(Tag.STATE, status) if status != "RUNNING" else "RUNNING"
        orphaned = liveness.orphaned(state, tags)
        if orphaned:
            host, pid = tags[Tag.OWNER].split()[:2]
            state, tags = "KILLED", {**tags, Tag.REASON: f"its process ({pid} on {host}) ended without ending it "
                                                         "(killed or crashed)"}
        return Record(run_id=run_id, id=tags.get(Tag.ID) or name or run_id[:8], name=name,
                      experiment=self._experiment_name(experiment_id), experiment_id=experiment_id, state=state,
                      start_time=start_time, params={k: parse_value(v) for k, v in params.items()}, metrics=metrics,
                      tags=tags, root=self.root, orphaned=orphaned)

    # ---- experiments

    def experiments(self) -> Dict[str, str]:
        """name -> id of every active experiment."""
        found = self.reader.experiments()
        self._names.update({v: k for k, v in found.items()})
        return found

    def latest_experiment(self, default: str = "cifar10") -> str:
        """The experiment of the most recently started run (`default` in an empty store): what every command
        shows when none is named."""
        return self.reader.latest_experiment() or default

    def experiment_id(self, name: str, create: bool = True) -> Optional[str]:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                self.client.restore_experiment(exp.experiment_id)
            self._names[exp.experiment_id] = name
            return exp.experiment_id
        if not create:
            return None
        where = None
        if self.root is not None:  # artifacts beside the store, so that the store is one movable directory
            where = (self.root / "mlartifacts" / safe_name(name)).as_uri()
        try:
            exp_id = self.client.create_experiment(name, artifact_location=where)
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
            self.experiments()
        if exp_id not in self._names:  # a deleted experiment's run
            self._names[exp_id] = self.client.get_experiment(exp_id).name
        return self._names[exp_id]

    # ---- writing

    def create_run(self, experiment: str, tags: Dict[str, str], *, run_name: Optional[str] = None,
                   parent_run_id: Optional[str] = None, log_id: Optional[str] = None) -> Run:
        """A new RUNNING run (writer.create_run says how it gets its log ID)."""
        start = time.perf_counter()
        exp_id = self.experiment_id(experiment)
        run_id, log_id = self.writer.create_run(exp_id, tags, run_name, parent_run_id, log_id)
        return Run(self.writer, run_id, log_id, exp_id, self.root, time.perf_counter() - start)

    def open(self, record: Record) -> Run:
        """A handle for writing to a run that already exists."""
        return Run(self.writer, record.run_id, record.id, record.experiment_id, self.root)

    def reopen(self, record: Record) -> Run:
        """A KILLED or FAILED run RUNNING again, owned by this process (`cnnlab train resume=RUN`)."""
        self.writer.reopen(record, self.get)
        return self.open(record)

    def set_status(self, run_id: str, state: str) -> None:
        self.writer.set_status(run_id, state)

    # ---- reading

    def get(self, run_id: str) -> Record:
        return ClientReader(self.client, self._make).record(self.client.get_run(run_id))

    def find(self, ref: str, experiments: Optional[Sequence[str]] = None) -> Record:
        """The run `ref` names: its log ID (T3, exercise/T3), its run name, or a unique prefix of its MLflow run ID
        (4 hex digits or more). An ambiguous reference is refused, naming the candidates."""
        ref = str(ref).strip()
        exp_ids = self._experiment_ids(experiments)
        hexadecimal = re.fullmatch(r"[0-9a-f]{4,32}", ref) is not None
        records = self.reader.find(exp_ids, ref, hexadecimal) if exp_ids else []
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
        records = self.reader.runs(exp_ids, sweep) if exp_ids else []
        records = [r for r in records if (since is None or r.start_time >= since) and
                   (until is None or r.start_time < until)]
        if self.writable:
            records = ids.give(self.writer, records)
        return [r for r in records if (parents or not r.is_sweep_parent) and (not states or r.state in states)
                and (not archs or r.params.get("arch.name") in archs)]

    def first_single_run(self, experiment_id: str) -> Optional[Record]:
        """The experiment's first run outside sweeps (its T0, or the lowest T<n> left)."""
        return self.reader.first_single_run(experiment_id)

    def children(self, parent_run_id: str, experiment_id: str) -> List[Record]:
        """A sweep's trial runs (every attempt), oldest first."""
        return self.reader.tagged(experiment_id, Tag.PARENT, parent_run_id)

    def sweep_parent(self, experiment_id: str, name: str) -> Optional[Record]:
        found = self.reader.tagged(experiment_id, Tag.SWEEP_PARENT, name)
        return found[0] if found else None

    def histories(self, run_ids: List[str], keys: Sequence[str]) -> Histories:
        """run id -> metric -> {step: first value logged at that step}, fetched in bulk where the store can."""
        return self.reader.histories(run_ids, keys)

    def _local_artifacts(self, run_id: str) -> Optional[Path]:
        """A local store's run's artifact directory, found beside the store even when the store was moved (its
        recorded location is another directory's mlartifacts/ until a command that writes relocates it)."""
        uri = self.client.get_run(run_id).info.artifact_uri if self.root is not None else ""
        if not uri.startswith("file://") or "/mlartifacts/" not in uri:
            return None
        return self.root / "mlartifacts" / uri.split("/mlartifacts/", 1)[1]

    def list_artifacts(self, run_id: str, path: Optional[str] = None) -> List[str]:
        """The artifacts at `path` (one level) of a run, as paths from its artifact root."""
        local = self._local_artifacts(run_id)
        if local is None:
            return [a.path for a in self.client.list_artifacts(run_id, path)]
        folder = local / path if path else local
        return sorted(str(p.relative_to(local)) for p in folder.iterdir()) if folder.is_dir() else []

    def download(self, run_id: str, path: str) -> Optional[Path]:
        """A run's artifact as a local file (a store on a server keeps them there); None when it has none."""
        import tempfile

        local = self._local_artifacts(run_id)
        if local is not None:
            return local / path if (local / path).exists() else None
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # not in a command's output
        try:
            return Path(self.client.download_artifacts(run_id, path, tempfile.mkdtemp(prefix="cnnlab-")))
        except Exception:  # MLflow raises its own error types, and OSError for a missing local file
            return None
