"""Running a sweep: the trial pool (in this process or N workers), signals; the parent run is parent.py.

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

import os
import signal
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional

from .. import summary
from ..errors import CnnlabError, Interrupted
from ..record import Record, Store
from .display import Display
from .parent import ParentRun
from .spec import Outcome, Spec, Trial, sweep_name
from .strategies import WAIT, Context, get_strategy
from .trial import Inline, init_worker, run_trial, work


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
        self.parent: Optional[ParentRun] = None  # once the store is open

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
            self.store.upkeep()  # runs whose process is gone are ended KILLED before the sweep reads its trials
            self.parent = ParentRun(self.store, self.spec, self.name, self.experiment, self.root, self.strategy,
                                    self.join, self.storage)
            if self.strategy.shared is not None:  # its own storage, before any run is made
                self.strategy.shared.prepare(self.name, self.storage, self.join)
            return self._run(planned)
        except (Interrupted, KeyboardInterrupt) as exc:  # never leave the parent RUNNING (a joiner's is not its own)
            if not self.join and self.parent is not None:
                self.parent.end("KILLED", f"signal {getattr(exc, 'exit_code', 130) - 128} before its trials ran")
            raise
        except BaseException as exc:
            if self.parent is not None:
                self.parent.end("FAILED", f"{type(exc).__name__}: {exc}")
            raise
        finally:
            if not self.join:
                self._lock_file.close()

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

    # ---- running

    def _run(self, planned: List[Trial]) -> SweepResult:
        self.parent.open()
        done = self.parent.resume(self.force)
        planned = self._drop_duplicates(planned)
        skipped = sum(t.key in done for t in planned)
        ctx = Context(self.name, self.storage, self.join, done, lambda: self.stop_signal is not None, self._abandon)
        executor, queue = self._executor()
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        outcomes: List[Outcome] = []
        try:
            self.display.start()
            self._loop(executor, queue, self.strategy.trials(ctx, planned), outcomes)
            if self.spec.max_repeats:
                self._repeat_until_clear(executor, queue, planned, outcomes)
        except Interrupted as exc:  # --workers 1: the signal reached train() in this process
            self.stop_signal = exc.exit_code - 128
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
            self.display.stop()
            for s, h in old.items():
                signal.signal(s, h)
        latest, groups = self.parent.finish("KILLED" if self.stop_signal is not None else "FINISHED", outcomes,
                                            self.notes)
        result = SweepResult(self.name, self.parent.run_id, len(outcomes), skipped,
                             self.strategy.nothing_to_run(skipped), self.notes, outcomes, latest, groups)
        if self.stop_signal is not None:
            raise Interrupted(self.stop_signal)
        return result

    def _repeat_until_clear(self, executor, queue, planned: List[Trial], outcomes: List[Outcome]) -> None:
        """--repeats auto: rounds of one more seed for the configurations still in the running (repeats.py)."""
        from .repeats import AutoRepeats

        auto = AutoRepeats(self.spec, planned)
        while self.stop_signal is None:
            more = auto.next_round(self.parent.children())
            if not more:
                break
            self._loop(executor, queue, iter(more), outcomes)
        if auto.outcome:
            self.notes.append(auto.outcome)

    def _abandon(self, trial_id: str) -> None:
        """A trial's worker died (killed, or its machine went down) and the study runs it again: its run ends."""
        for record in self.parent.children():
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
        resume = self.parent.resumable.pop(trial.key, None)
        if resume is not None:
            attempt = resume.attempt
            self.notes.append(f"{resume.id} resumed from its last whole epoch")
        else:
            attempt = self.parent.attempts.get(trial.id, 0) + 1
            self.parent.attempts[trial.id] = attempt
        args = (trial, self.spec, self.name, self.parent.run_id, str(self.root), self.storage, attempt,
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
