"""Running a sweep: the parent run, resume, the worker pool, signals, the summary.

1. The strategy plans the trials (each: ID T<n>, overrides, a key = hash of its resolved config and
   seed), checking every config before anything runs.
2. The parent run is found or created (a stable sweep name) and its children read: FINISHED keys
   are skipped, FAILED/KILLED ones run again as a new attempt, an Optuna study continues.
3. Trials run in this process or in N worker processes (data loaded once per worker), each one
   `train()` with the parent's id and the trial's log ID; a live table shows them.
4. Every child is summarised (summary.groups: mean ± std per config over seeds) on the terminal and
   on the parent.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterator, List, Optional

from .. import summary
from ..errors import CnnlabError, Interrupted
from ..store import Record, Store, Tag, owner_alive
from .display import Display
from .spec import Outcome, Spec, Trial, sweep_name
from .strategies import WAIT, Context, get_strategy
from .trial import Inline, init_worker, run_trial, work


# what identifies a sweep's spec: a sweep of the same name with other values here is another sweep
IDENTITY = ("strategy", "metric", "direction", "space", "overrides", "cli_overrides", "configs")
LIVE_WAIT = 20  # seconds a resume waits for trials still running in a process that is ending


@dataclass
class SweepResult:
    name: str
    parent_run_id: str
    ran: int  # trials trained by this command
    skipped: int  # planned trials already FINISHED
    nothing_to_run: str  # the strategy's words when ran == 0
    notes: List[str] = field(default_factory=list)
    outcomes: List[Outcome] = field(default_factory=list)
    records: List[Record] = field(default_factory=list)  # every trial's latest attempt
    groups: List[summary.Group] = field(default_factory=list)  # per configuration, best first


class Sweep:
    def __init__(self, spec: Spec, workers: int = 1, storage: Optional[str] = None, force: bool = False,
                 join: bool = False, quiet: bool = False):
        from ..config import compose
        from ..schema import runs_dir, safe_name

        if workers < 1:
            raise CnnlabError(f"--workers {workers}: give 1 or more (trials run at once, each in its own process).")
        self.spec, self.workers, self.force, self.join = spec, workers, force, join
        self.strategy = get_strategy(spec.strategy)(spec)
        self.name = sweep_name(spec)
        base = compose(spec.fixed)
        self.experiment = base.experiment
        self.tracking_uri = base.tracking.uri
        self.root = runs_dir() / safe_name(self.experiment) / safe_name(self.name)
        self.storage = storage or str(self.root / "optuna.journal")
        self.stop_signal: Optional[int] = None
        self.display = Display(self.name, spec, quiet)
        self.notes: List[str] = []

    def plan(self) -> List[Trial]:
        """The trials ahead of time, every config checked (none for a strategy that chooses as it goes)."""
        return self.strategy.plan()

    def run(self) -> SweepResult:
        planned = self.plan()
        if not self.join:
            self._lock()
        try:
            # the store first (created once, before any worker): a server that refuses us must refuse before the
            # strategy makes its own state (an Optuna study with no parent run yet)
            self.store = Store(self.tracking_uri)
            self.strategy.prepare(self.name, self.storage, self.join)  # its own storage, before any run is made
            return self._run(planned)
        except (Interrupted, KeyboardInterrupt) as exc:  # never leave the parent RUNNING (a joiner's is not its own)
            if not self.join:
                self._end_parent("KILLED", f"signal {getattr(exc, 'exit_code', 130) - 128} before its trials ran")
            raise
        except BaseException as exc:
            self._end_parent("FAILED", f"{type(exc).__name__}: {exc}")
            raise
        finally:
            if not self.join:
                self._lock_file.close()

    def _end_parent(self, state: str, reason: str) -> None:
        """End the parent run `state` if this process made or reopened it and it is still RUNNING."""
        if getattr(self, "parent_id", None):
            parent = self.store.get(self.parent_id)
            if parent.state == "RUNNING":
                self.store.open(parent).end(state, reason)

    def _lock(self) -> None:
        """One process drives a sweep; more machines join through --join/--storage instead."""
        import fcntl

        self.root.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.root / ".lock", "a+")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise CnnlabError(f"Sweep {self.name} is already running (lock {self.root / '.lock'}). Wait for it, or "
                              "add workers from elsewhere with --join NAME --storage URL.") from None

    # ---- the parent run and what its children already hold

    def _open_parent(self) -> None:
        from omegaconf import OmegaConf

        from ..config import compose, flatten, resolve, to_dict

        self.exp_id = self.store.experiment_id(self.experiment)
        shared = self.strategy.shared_parent()  # of two first starts at once, the one that made the study made it
        parent = self.store.get(shared) if shared else self.store.sweep_parent(self.exp_id, self.name)
        spec = asdict(self.spec)
        params = {k: spec[k] for k in ("strategy", "metric", "direction", "trials", "repeats", "sampler",
                                       "pruner", "seed")}
        params.update(space=" ".join(spec["space"]), overrides=" ".join(spec["overrides"]),
                      configs=json.dumps(spec["configs"])[:6000], cli_overrides=" ".join(spec["cli_overrides"]))
        if parent is not None:
            changed = [k for k in IDENTITY if str(parent.params.get(k) or "") != str(params[k] or "")]
            if changed:
                was = "; ".join(f"{k} was {parent.params.get(k)!r}, now {params[k]!r}" for k in changed)
                raise CnnlabError(f"Sweep {self.name} already exists with another spec ({was}). Its trials would mix "
                                  f"with these: give this one another --name (e.g. {self.name}-2), or run the old spec "
                                  "again to resume it.")
            self.parent_id = parent.run_id
            self.store.set_status(self.parent_id, "RUNNING")
        else:
            tags = {Tag.SWEEP_PARENT: self.name, Tag.SWEEP: self.name, "mlflow.source.name": "cnnlab sweep"}
            run = self.store.create_run(self.experiment, tags, run_name=self.name, log_id=self.name)
            run.keep_alive()
            self.parent_id = run.run_id
            base = flatten(to_dict(resolve(compose(self.spec.fixed))))
            params.update({f"base.{k}": v for k, v in base.items()})  # what ARCHITECTURE CHANGES compares with
            run.log_params(params)
        if shared != self.parent_id:
            self.strategy.share_parent(self.parent_id)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "sweep.yaml").write_text(OmegaConf.to_yaml(asdict(self.spec)))

    def children(self) -> List[Record]:
        return self.store.children(self.parent_id, self.exp_id)

    def _resume(self) -> Dict[str, Record]:
        """trial key -> the run that has it: FINISHED (or PRUNED), or still RUNNING in a live process (which is
        never started twice). Runs whose process died were ended KILLED when the store opened (Store.reap)."""
        children = self.children()
        deadline = time.time() + LIVE_WAIT
        shared = "://" in self.storage  # a database others work from: their RUNNING trials are theirs to end
        while not self.join and not shared and any(r.state == "RUNNING" for r in children) and time.time() < deadline:
            time.sleep(1)  # a worker of a sweep that just died is still ending its run
            self.store.reap()
            children = self.children()
        done: Dict[str, Record] = {}
        self.attempts: Dict[str, int] = {}
        self.resumable: Dict[str, Record] = {}  # trial key -> its KILLED latest attempt, continued where it stood
        self.running_at_start: Dict[str, Record] = {}  # run id -> a trial another process was running
        for record in summary.latest_attempts(children):
            if record.state == "KILLED" and record.run_dir is not None and (record.run_dir / "last.pt").exists():
                self.resumable[record.trial_key] = record
        for record in children:
            if record.trial:
                self.attempts[record.trial] = max(self.attempts.get(record.trial, 0), record.attempt)
            if record.state == "RUNNING":  # said at the end, as it stands then (see _running_notes)
                self.running_at_start[record.run_id] = record
                done[record.trial_key] = record
            elif record.state in ("FINISHED", "PRUNED") and not self.force:
                done[record.trial_key] = record
        return done

    # ---- running

    def _run(self, planned: List[Trial]) -> SweepResult:
        self._open_parent()
        done = self._resume()
        planned = self._drop_duplicates(planned)
        skipped = sum(t.key in done for t in planned)
        ctx = Context(self.name, self.storage, self.join, done, lambda: self.stop_signal is not None, self._abandon)
        executor, queue = self._executor()
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        outcomes: List[Outcome] = []
        try:
            self.display.start()
            self._loop(executor, queue, self.strategy.trials(ctx, planned), outcomes)
        except Interrupted as exc:  # --workers 1: the signal reached train() in this process
            self.stop_signal = exc.exit_code - 128
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
            self.display.stop()
            for s, h in old.items():
                signal.signal(s, h)
        result = self._finish("KILLED" if self.stop_signal is not None else "FINISHED", skipped, outcomes)
        if self.stop_signal is not None:
            raise Interrupted(self.stop_signal)
        return result

    def _abandon(self, trial_id: str) -> None:
        """A trial's worker died (killed, or its machine went down) and the study runs it again: its run ends."""
        for record in self.children():
            if record.trial == trial_id and record.state == "RUNNING":
                self.store.open(record).end("KILLED", "its worker stopped sending heartbeats (killed, or its machine "
                                                      "died); the trial runs again with the same values")
                self.notes.append(f"{record.id}: its worker died; run again")

    def _drop_duplicates(self, planned: List[Trial]) -> List[Trial]:
        """A trial whose config another trial of the plan already has (an override made them equal) runs once."""
        first: Dict[str, str] = {}
        kept = []
        for t in planned:
            if t.key in first:
                self.notes.append(f"{t.id} is the same config as {first[t.key]} after overrides: run once")
            else:
                first[t.key] = t.id
                kept.append(t)
        return kept

    def _executor(self):
        if self.workers == 1:
            return Inline(), None
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        queue = ctx.Queue()
        devices = None
        n_gpus = _cuda_device_count()
        if n_gpus > 0:
            devices = ctx.Queue()
            for i in range(self.workers):
                devices.put(i % n_gpus)
        threads = max(1, (os.cpu_count() or 1) // self.workers)
        executor = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=init_worker,
                                       initargs=(threads, devices, queue, os.getpid()))
        return executor, queue

    def _submit(self, executor, trial: Trial) -> Future:
        resume = self.resumable.pop(trial.key, None)
        if resume is not None:
            attempt = resume.attempt
            self.notes.append(f"{resume.id} resumed from its last whole epoch")
        else:
            attempt = self.attempts.get(trial.id, 0) + 1
            self.attempts[trial.id] = attempt
        args = (trial, self.spec, self.name, self.parent_id, str(self.root), self.storage, attempt,
                resume.run_id if resume is not None else None)
        self.display.trial_started(trial)
        if isinstance(executor, Inline):
            return executor.submit(run_trial, *args, self.display.on_progress)
        return executor.submit(work, *args)

    def _loop(self, executor, queue, todo: Iterator[Trial], outcomes: List[Outcome]) -> None:
        in_flight: Dict[Future, Trial] = {}
        exhausted = False
        ask_after = 0.0  # the strategy said WAIT: ask again from this time on
        while True:
            while not exhausted and len(in_flight) < self.workers and self.stop_signal is None \
                    and time.time() >= ask_after:
                trial = next(todo, None)
                if trial is None:
                    exhausted = True
                    break
                if trial is WAIT:
                    ask_after = time.time() + 2
                    break
                future = self._submit(executor, trial)
                in_flight[future] = trial
                if isinstance(executor, Inline):
                    break  # already done: collect it before asking for the next
            if not in_flight:
                if exhausted or self.stop_signal is not None:
                    return
                time.sleep(max(0.0, min(2.0, ask_after - time.time())))
                continue
            finished, _ = wait(list(in_flight), timeout=0.5, return_when=FIRST_COMPLETED)
            if queue is not None:
                while not queue.empty():
                    self.display.on_progress(queue.get())
            for future in finished:
                trial = in_flight.pop(future)
                try:
                    outcome = future.result()
                except Exception as exc:  # the worker process itself died (killed, out of memory)
                    outcome = Outcome(trial.id, "FAILED", reason=f"worker died: {type(exc).__name__}: {exc}")
                outcomes.append(outcome)
                self.display.trial_ended(trial, outcome)
                self.strategy.tell(trial, outcome)
            self.display.refresh()
            if self.stop_signal is not None and in_flight:
                self._forward_signal()

    def _on_signal(self, signum, frame) -> None:
        """Parent of workers: stop starting trials and pass the signal on; train() in each ends its run KILLED."""
        first = self.stop_signal is None
        if first:
            self.stop_signal = signum
        if self.workers == 1:
            if first:
                raise Interrupted(signum)
            return
        self._forward_signal()

    def _forward_signal(self) -> None:
        import multiprocessing

        for child in multiprocessing.active_children():
            try:
                os.kill(child.pid, signal.SIGTERM)
            except OSError:
                pass

    # ---- the summary

    def _finish(self, status: str, skipped: int, outcomes: List[Outcome]) -> SweepResult:
        """End children a dead worker left RUNNING, write the summary onto the parent run and end it."""
        for record in self.children():  # its worker process died (out of memory, killed) mid-trial
            if record.state == "RUNNING" and not self.join and not owner_alive(record.tags.get(Tag.OWNER, ""),
                                                                                record.tags.get(Tag.HEARTBEAT)):
                self.store.open(record).end("KILLED" if status == "KILLED" else "FAILED", "its worker stopped")
        children = self.children()
        self.notes += self._running_notes(children)
        latest = summary.latest_attempts(children)
        groups = summary.groups(children, self.spec.metric, self.spec.direction)
        path = self.root / "summary.csv"
        keys = ["trial", "state", "run_id", "config_key", "params", self.spec.metric, "test_acc", "wall_time", "reason"]
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            for r in latest:
                writer.writerow({"trial": r.id, "state": r.state, "run_id": r.run_id, "config_key": r.config_key,
                                 "params": " ".join(f"{k}={v}" for k, v in r.swept.items() if k != "seed"),
                                 self.spec.metric: summary.objective(r, self.spec.metric),
                                 "test_acc": r.metrics.get("test_acc") if r.state == "FINISHED" else None,
                                 "wall_time": r.metrics.get("wall_time"), "reason": r.reason})
        parent = self.store.open(self.store.get(self.parent_id))
        parent.log_artifacts([path, self.root / "sweep.yaml"])
        metrics = {f"n_{s.lower()}": sum(r.state == s for r in latest) for s in ("FINISHED", "FAILED", "KILLED",
                                                                              "PRUNED")}
        if groups:
            best = groups[0]
            metrics[f"best_{self.spec.metric}"] = best.mean
            if best.test_mean is not None:
                metrics["best_test_acc"] = best.test_mean
            parent.set_tags({"cnnlab.best_trials": " ".join(best.ids), "cnnlab.best_params": best.params})
        parent.log_metrics(metrics)
        others = self.strategy.running_elsewhere()
        if others and status == "FINISHED":
            self.notes.append(f"{others} trial(s) still run in other workers: the last of them ends the sweep")
        else:
            parent.end(status)
        return SweepResult(self.name, self.parent_id, len(outcomes), skipped, self.strategy.nothing_to_run(skipped),
                           self.notes, outcomes, latest, groups)


    def _running_notes(self, children: List[Record]) -> List[str]:
        """What became of the trials other processes were running when this one started: said as they are now,
        not as they were (a worker's note that a trial is 'still running' went stale while it worked)."""
        now = {r.run_id: r for r in children}
        notes = []
        for run_id, then in getattr(self, "running_at_start", {}).items():
            record = now.get(run_id, then)
            if record.state == "RUNNING":
                pid = record.tags.get(Tag.OWNER, "? ?").split()[1]
                notes.append(f"{record.id} is still running (process {pid}): not started again")
            else:
                notes.append(f"{record.id} was running in another process, which ended it {record.state}")
        return notes


def _cuda_device_count() -> int:
    """GPUs visible, asked in a child process so that this one never initialises CUDA before forking workers."""
    import subprocess
    import sys

    try:
        out = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
                             capture_output=True, text=True, timeout=60)
        return int(out.stdout.strip() or 0)
    except (OSError, ValueError, subprocess.SubprocessError):
        return 0
