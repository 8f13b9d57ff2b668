"""Running one trial, in the sweep's process or in a worker process of its pool.

A worker loads each data set once and reuses it for every trial it trains; it leaves SIGINT and
SIGTERM to train(), which ends the trial's run KILLED; its progress goes back over a queue.
"""

from __future__ import annotations

import json
import os
import signal
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..errors import Interrupted, Pruned
from ..record import Tag
from .spec import Outcome, Spec, Trial

_WORKER: Dict[str, Any] = {}


def _dataset(cfg):
    """The data set of `cfg`, loaded once per process and reused by every trial that asks for it; on a GPU
    it is moved there once, so trials start without copying it."""
    from .. import data
    from ..device import pick_device

    d = cfg.data
    device = pick_device(cfg.device)
    key = (d.name, d.root, d.n_train, d.n_test, cfg.seed if d.name == "synthetic" else None, str(device))
    cache = _WORKER.setdefault("datasets", {})
    if key not in cache:
        ds = data.load(d, seed=cfg.seed)
        cache[key] = ds.to(device) if device.type == "cuda" else ds
    return cache[key]


def log_id(sweep: str, trial_id: str, attempt: int) -> str:
    """A trial's log ID: <sweep>/T<n>, and <sweep>/T<n>-<attempt> from its second attempt on."""
    return f"{sweep}/{trial_id}" + (f"-{attempt}" if attempt > 1 else "")


def run_trial(trial: Trial, spec: Spec, sweep: str, parent_run_id: str, run_root: str, storage: str,
              attempt: int = 1, resume: Optional[str] = None, progress=None) -> Outcome:
    """Train one trial as a child run (or continue the KILLED run `resume`, a run ID). Failures become an
    Outcome; a signal propagates as Interrupted."""
    from ..config import compose
    from ..training import train
    from .strategies import get_strategy

    start = time.perf_counter()
    curve: List[float] = []
    should_stop = get_strategy(spec.strategy)(spec).judge(trial, sweep, storage)

    def on_epoch(epoch: int, metrics: Dict[str, float]) -> None:
        value = metrics.get(spec.metric)
        if value is not None:
            curve.append(value)
        if progress is not None:
            progress(("epoch", trial.id, epoch, value))
        if should_stop is not None and value is not None and should_stop(epoch, value):
            raise Pruned(f"{spec.metric}={value:.4f} at epoch {epoch}")

    if progress is not None:
        progress(("start", trial.id))
    tags = {Tag.SWEEP: sweep, Tag.TRIAL: trial.id, Tag.ATTEMPT: attempt, Tag.TRIAL_KEY: trial.key,
            Tag.CONFIG_KEY: trial.group, Tag.SWEPT: json.dumps(trial.params)}
    try:
        cfg = compose(trial.overrides)
        if resume is not None:
            from ..record import Store

            record = Store(cfg.tracking.uri).get(resume)
            result = train(None, trial.overrides, dataset=_dataset(cfg), on_epoch=on_epoch, quiet=True,
                           resume=record)
        else:
            result = train(cfg, trial.overrides, dataset=_dataset(cfg), on_epoch=on_epoch,
                           parent_run_id=parent_run_id, tags=tags, run_root=Path(run_root),
                           log_id=log_id(sweep, trial.id, attempt), quiet=True)
    except Interrupted:
        raise
    except BaseException as exc:  # the trial failed; the sweep goes on
        return Outcome(trial.id, "FAILED", seconds=time.perf_counter() - start,
                       reason=f"{type(exc).__name__}: {exc}"[:500], history=curve)
    best = (max(curve) if spec.direction == "maximize" else min(curve)) if curve else None
    return Outcome(trial.id, result.status, best, result.metrics.get("test_acc") if result.status == "FINISHED" else None,
                   time.perf_counter() - start, result.run_id, history=curve)


def _orphaned() -> bool:
    return os.getppid() != _WORKER.get("parent", os.getppid())


def _on_term(signum, frame) -> None:
    """Between trials: a SIGTERM from the sweep (it is stopping) waits for the pool to shut down; one that
    says the sweep died (the kernel's parent-death signal, or the watchdog) ends the worker."""
    if _orphaned():
        os._exit(128 + signum)


def _die_with_parent(parent_pid: int) -> None:
    """A worker never outlives its sweep: the kernel sends it SIGTERM when the sweep dies (Linux), and a
    watchdog thread checks every second on any system. In a trial, train() turns that SIGTERM into a KILLED
    run before the worker exits."""
    import ctypes
    import threading

    _WORKER["parent"] = parent_pid
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if _orphaned():  # the sweep died before we got here
        os._exit(143)

    def watch():
        while not _orphaned():
            time.sleep(1)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True, name="parent-watchdog").start()


def init_worker(threads: int, devices: Any, progress_queue, parent_pid: int) -> None:
    """Worker start-up: tied to the sweep's life, its share of CPU threads (or its GPU), torch imported once.
    SIGINT is the sweep's to handle; train() installs its own handlers during a trial."""
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _on_term)
    claim_gpu(devices)
    import torch

    torch.set_num_threads(threads)
    _WORKER["progress"] = progress_queue


def claim_gpu(devices) -> None:
    """This worker's GPU, from the queue the sweep filled (the GPUs in turn, one per worker), made its default: a
    trial on device auto or cuda trains there. Every GPU stays visible, so a trial that names cuda:N gets that one
    (hiding the others with CUDA_VISIBLE_DEVICES made cuda:1 fail in every worker)."""
    if devices is None:
        return
    import torch

    torch.cuda.set_device(devices.get())


def work(trial: Trial, spec: Spec, sweep: str, parent_run_id: str, run_root: str, storage: str,
         attempt: int, resume: Optional[str]) -> Outcome:
    """run_trial in a worker process: its progress over the queue, a signal as a KILLED outcome."""
    queue = _WORKER.get("progress")
    try:
        return run_trial(trial, spec, sweep, parent_run_id, run_root, storage, attempt, resume,
                         progress=queue.put if queue is not None else None)
    except Interrupted:
        if _orphaned():  # its run is recorded KILLED; nobody is left to tell
            os._exit(143)
        return Outcome(trial.id, "KILLED", reason="interrupted")


class Inline:
    """The executor for --workers 1: runs each trial at submit time, in this process."""

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        future.set_result(fn(*args))
        return future

    def shutdown(self, **kwargs) -> None:
        pass
