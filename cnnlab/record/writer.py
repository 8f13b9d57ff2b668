"""Every write to the record, through MLflow's client with explicit run ids (no global active run, so trials in one
process and runs in parallel processes never mix), and `Run`, a run open for writing."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, Optional

from ..errors import CnnlabError
from . import ids
from .liveness import Heartbeat, owner
from .location import redact_url
from .vocabulary import Record, Tag

BATCH = 100  # MLflow accepts at most 100 params or tags per log_batch call


class Writer:
    """The writes, on the store at `uri` through `client`."""

    def __init__(self, client, uri: str):
        self.client, self.uri = client, uri

    def set_tags(self, run_id: str, tags: Dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, redact_url(str(v))) for k, v in tags.items()]  # a URL's password is never recorded
        for i in range(0, len(items), BATCH):
            self.client.log_batch(run_id, tags=items[i:i + BATCH])

    def log_params(self, run_id: str, params: Dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, "None" if v is None else redact_url(str(v))) for k, v in params.items()]
        for i in range(0, len(items), BATCH):
            self.client.log_batch(run_id, params=items[i:i + BATCH])

    def log_metrics(self, run_id: str, metrics: Dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
        for i in range(0, len(items), 1000):
            self.client.log_batch(run_id, metrics=items[i:i + 1000])

    def log_artifact(self, run_id: str, path: Path, subdir: Optional[str] = None) -> None:
        self.client.log_artifact(run_id, str(path), subdir)

    def end(self, run_id: str, state: str, reason: str = "") -> None:
        """End a run: FINISHED, FAILED, KILLED or PRUNED (MLflow's status KILLED, with our state tag)."""
        self.set_tags(run_id, {Tag.STATE: state, **({Tag.REASON: reason[:5000]} if reason else {})})
        self.client.set_terminated(run_id, "KILLED" if state == "PRUNED" else state)

    def set_status(self, run_id: str, state: str) -> None:
        """Mark a run RUNNING again (a sweep's parent when the sweep resumes)."""
        self.client.update_run(run_id, status=state)

    def create_run(self, exp_id: str, tags: Dict[str, str], run_name: Optional[str], parent_run_id: Optional[str],
                   log_id: Optional[str]) -> tuple:
        """(run id, log ID) of a new RUNNING run owned by this process. A sweep's trials bring the log ID their sweep
        numbered them with; any other run gets T<n>, the next number in its experiment (ids.claim)."""
        tags = {k: str(v) for k, v in tags.items()}
        tags.update({Tag.OWNER: owner(), Tag.HEARTBEAT: str(int(time.time()))})
        if parent_run_id:
            tags[Tag.PARENT] = parent_run_id
        if log_id is not None:
            tags[Tag.ID] = log_id
        run_id = self.client.create_run(exp_id, run_name=run_name or log_id, tags=tags).info.run_id  # <sweep>/T<n>
        if log_id is None:
            log_id = ids.claim(self, exp_id, run_id)
            if not run_name:
                self.client.update_run(run_id, name=log_id)
        return run_id, log_id

    def reopen(self, record: Record, read: Callable[[str], Record]) -> None:
        """A KILLED or FAILED run RUNNING again, owned by this process (`cnnlab train resume=RUN`). Of two processes
        that reopen it at once, one does; the other is told it is RUNNING. On a local store they take turns under a
        lock; on a server the owner tag read back says who won. read(run id): the run as the store has it now."""
        from mlflow.exceptions import MlflowException

        me = owner()
        with ids.turns(self.uri):
            fresh = read(record.run_id)
            if fresh.state == "RUNNING":
                raise CnnlabError(f"Run {record.id} is still RUNNING (process {fresh.tags.get(Tag.OWNER, '?')}): "
                                  "another `cnnlab train resume=` took it.")
            self.set_tags(record.run_id, {Tag.OWNER: me, Tag.HEARTBEAT: str(int(time.time()))})
            self.client.update_run(record.run_id, status="RUNNING")
        if read(record.run_id).tags.get(Tag.OWNER) != me:
            raise CnnlabError(f"Run {record.id} is still RUNNING: another `cnnlab train resume=` took it.")
        for tag in (Tag.STATE, Tag.REASON):
            if tag in fresh.tags:
                try:
                    self.client.delete_tag(record.run_id, tag)
                except MlflowException:  # deleted already
                    pass


class Run:
    """A run open for writing; every call's wall time adds up in `seconds` (tracking's share of a training)."""

    def __init__(self, writer: Writer, run_id: str, log_id: str, experiment_id: str, root: Optional[Path] = None,
                 seconds: float = 0.0):
        self.writer, self.run_id, self.id, self.experiment_id = writer, run_id, log_id, experiment_id
        self.root = root  # the store's directory (a local store), where relative run directories are
        self.seconds = seconds
        self.ended = False
        self._heartbeat: Optional[Heartbeat] = None

    def keep_alive(self) -> None:
        """Say every HEARTBEAT_SECONDS that this run's process is alive, until the run ends."""
        self._heartbeat = Heartbeat(lambda now: self.writer.set_tags(self.run_id, {Tag.HEARTBEAT: now}))

    def _timed(self, fn, *args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start

    def log_params(self, params: Dict[str, Any]) -> None:
        self._timed(self.writer.log_params, self.run_id, params)

    def set_tags(self, tags: Dict[str, Any]) -> None:
        self._timed(self.writer.set_tags, self.run_id, tags)

    def log_metrics(self, metrics: Dict[str, float], step: int = 0) -> None:
        """All of `metrics` in one call (one database round trip per epoch)."""
        self._timed(self.writer.log_metrics, self.run_id, metrics, step)

    def log_artifacts(self, paths: Iterable[Path], subdir: Optional[str] = None) -> None:
        for path in paths:
            self._timed(self.writer.log_artifact, self.run_id, path, subdir)

    def end(self, state: str, reason: str = "") -> None:
        """FINISHED, FAILED, KILLED or PRUNED, with the reason; a second call is a no-op."""
        if not self.ended:
            if self._heartbeat is not None:
                self._heartbeat.stop()
            self._timed(self.writer.end, self.run_id, state, reason)
            self.ended = True
