"""MLflow tracking: where the store is, and one run's params, metrics, tags and artifacts.

The default store is SQLite at `runs/mlflow.db` with artifacts under `runs/mlartifacts/`;
`tracking.uri=...` or $MLFLOW_TRACKING_URI points elsewhere (a server, another database).
Everything goes through `MlflowClient` with explicit run ids: no global active run, so
trials in one process and runs in parallel processes never mix.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Dict, Iterable, Optional

from .config import runs_dir
from .errors import CnnlabError

BATCH = 100  # MLflow accepts at most 100 params or tags per log_batch call


_preloading: Optional[threading.Thread] = None


def preload() -> None:
    """Start importing MLflow's client (about a second) in a thread while other work goes on.

    `client()` waits for it: importing MLflow from two threads at once is a circular-import race.
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


def client(uri: Optional[str] = None, create: bool = True):
    """A client on the store; creates a local SQLite store (schema included) on first use.

    Call it once in the parent before starting parallel workers: several processes creating
    the same SQLite schema at once corrupt it. Readers pass create=False: no store, no runs.
    """
    import logging

    if _preloading is not None:
        _preloading.join()
    uri = tracking_uri(uri)
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        if not create and not path.exists():
            raise CnnlabError(f"No runs recorded yet: there is no MLflow store at {path}. Train something first "
                              "(`cnnlab train`), or point $CNNLAB_RUNS_DIR / $MLFLOW_TRACKING_URI at your store.")
        path.parent.mkdir(parents=True, exist_ok=True)
    for name in ("alembic", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from mlflow.tracking import MlflowClient

    c = MlflowClient(tracking_uri=uri)
    c.search_experiments(max_results=1)  # creates and migrates the schema now, not in a worker
    return c


def experiment_id(c, name: str, create: bool = True) -> Optional[str]:
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            c.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    if not create:
        return None
    location = None
    if c.tracking_uri.startswith("sqlite:"):
        location = (runs_dir() / "mlartifacts" / name).as_uri()
    try:
        return c.create_experiment(name, artifact_location=location)
    except Exception:  # created meanwhile by a parallel process
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


class Run:
    """One MLflow run; `seconds` accumulates the wall time spent in tracking calls."""

    def __init__(self, uri: Optional[str], experiment: str, run_name: str, tags: Dict[str, str],
                 parent_run_id: Optional[str] = None, mlflow_client=None):
        start = time.perf_counter()
        self.client = mlflow_client or client(uri)
        tags = dict(tags)
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        run = self.client.create_run(experiment_id(self.client, experiment), run_name=run_name, tags=tags)
        self.run_id = run.info.run_id
        self.experiment_id = run.info.experiment_id
        self.seconds = time.perf_counter() - start
        self.ended = False

    def _timed(self, fn, *args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start

    def log_params(self, params: Dict[str, object]) -> None:
        from mlflow.entities import Param

        items = [Param(k, "None" if v is None else str(v)) for k, v in params.items()]
        for i in range(0, len(items), BATCH):
            self._timed(self.client.log_batch, self.run_id, params=items[i:i + BATCH])

    def set_tags(self, tags: Dict[str, object]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        for i in range(0, len(items), BATCH):
            self._timed(self.client.log_batch, self.run_id, tags=items[i:i + BATCH])

    def log_metrics(self, metrics: Dict[str, float], step: int = 0) -> None:
        """All of `metrics` in one call (one database round trip per epoch)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
        self._timed(self.client.log_batch, self.run_id, metrics=items)

    def log_artifacts(self, paths: Iterable[Path], subdir: Optional[str] = None) -> None:
        for path in paths:
            self._timed(self.client.log_artifact, self.run_id, str(path), subdir)

    def end(self, status: str) -> None:
        """FINISHED, FAILED or KILLED; a second call is a no-op."""
        if not self.ended:
            self._timed(self.client.set_terminated, self.run_id, status)
            self.ended = True
