"""A sweep's parent run: found or made (a stable sweep name), what its children already hold (a resume skips the
FINISHED trials, continues the KILLED ones), and the summary written onto it at the end."""

from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Dict, List

from .. import summary
from ..errors import CnnlabError
from ..record import Record, Store, Tag
from .spec import Outcome, Spec

# what identifies a sweep's spec: a sweep of the same name with other values here is another sweep
IDENTITY = ("strategy", "metric", "direction", "space", "overrides", "cli_overrides", "configs")
LIVE_WAIT = 20  # seconds a resume waits for trials still running in a process that is ending


class ParentRun:
    """The parent run of sweep `name` of `spec` in `experiment`, in `store`; its files in `root`. join: this process
    joins a sweep another drives (the parent, and other workers' RUNNING trials, are not its own)."""

    def __init__(self, store: Store, spec: Spec, name: str, experiment: str, root: Path, strategy, join: bool,
                 storage: str):
        self.store, self.spec, self.name, self.experiment, self.root = store, spec, name, experiment, root
        self.strategy, self.join, self.storage = strategy, join, storage
        self.run_id = None
        self.running_at_start: Dict[str, Record] = {}  # run id -> a trial another process was running

    def open(self) -> None:
        """Find the sweep's parent run (refusing one of another spec) and mark it RUNNING, or make it."""
        from omegaconf import OmegaConf

        from ..config import compose, flatten, resolve, to_dict

        self.exp_id = self.store.experiment_id(self.experiment)
        state = self.strategy.shared  # what workers elsewhere see (Optuna's study), or None
        # of two first starts at once, the one that made the study made the parent run
        shared = state.parent() if state is not None else None
        parent = self.store.get(shared) if shared else self.store.sweep_parent(self.exp_id, self.name)
        spec = asdict(self.spec)
        params = {k: spec[k] for k in ("strategy", "metric", "direction", "trials", "repeats", "max_repeats",
                                       "confidence", "sampler", "pruner", "seed")}
        params.update(space=" ".join(spec["space"]), overrides=" ".join(spec["overrides"]),
                      configs=json.dumps(spec["configs"])[:6000], cli_overrides=" ".join(spec["cli_overrides"]))
        if parent is not None:
            changed = [k for k in IDENTITY if str(parent.params.get(k) or "") != str(params[k] or "")]
            if changed:
                was = "; ".join(f"{k} was {parent.params.get(k)!r}, now {params[k]!r}" for k in changed)
                raise CnnlabError(f"Sweep {self.name} already exists with another spec ({was}). Its trials would mix "
                                  f"with these: give this one another --name (e.g. {self.name}-2), or run the old spec "
                                  "again to resume it.")
            self.run_id = parent.run_id
            self.store.set_status(self.run_id, "RUNNING")
        else:
            tags = {Tag.SWEEP_PARENT: self.name, Tag.SWEEP: self.name, "mlflow.source.name": "cnnlab sweep"}
            run = self.store.create_run(self.experiment, tags, run_name=self.name, log_id=self.name)
            run.keep_alive()
            self.run_id = run.run_id
            base = flatten(to_dict(resolve(compose(self.spec.fixed))))
            params.update({f"base.{k}": v for k, v in base.items()})  # what ARCHITECTURE CHANGES compares with
            run.log_params(params)
        if state is not None and shared != self.run_id:
            state.set_parent(self.run_id)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "sweep.yaml").write_text(OmegaConf.to_yaml(asdict(self.spec)))

    def children(self) -> List[Record]:
        return self.store.children(self.run_id, self.exp_id)

    def resume(self, force: bool) -> Dict[str, Record]:
        """trial key -> the run that has it: FINISHED (or PRUNED), or still RUNNING in a live process (which is
        never started twice). A run whose process died reads as KILLED (and upkeep() ended it so)."""
        children = self.children()
        deadline = time.time() + LIVE_WAIT
        shared = "://" in self.storage  # a database others work from: their RUNNING trials are theirs to end
        while not self.join and not shared and any(r.state == "RUNNING" for r in children) and time.time() < deadline:
            time.sleep(1)  # a worker of a sweep that just died is still ending its run
            self.store.upkeep()
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
            elif record.state in ("FINISHED", "PRUNED") and not force:
                done[record.trial_key] = record
        return done

    def end(self, state: str, reason: str) -> None:
        """End the parent run `state` if this process made or reopened it and it is still RUNNING."""
        if self.run_id:
            parent = self.store.get(self.run_id)
            if parent.state == "RUNNING":
                self.store.open(parent).end(state, reason)


    def finish(self, status: str, outcomes: List[Outcome], notes: List[str]) -> tuple:
        """End children a dead worker left RUNNING, write the summary onto the parent run and end it (unless trials
        still run elsewhere): (every trial's latest attempt, the groups best first). Adds to `notes`."""
        for record in self.children():  # its worker process died (out of memory, killed) mid-trial
            if record.orphaned and not self.join:
                self.store.open(record).end("KILLED" if status == "KILLED" else "FAILED", "its worker stopped")
        children = self.children()
        notes += self.running_notes(children)
        latest = summary.latest_attempts(children)
        groups = summary.groups(children, self.spec.metric, self.spec.direction, self.spec.confidence)
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
        parent = self.store.open(self.store.get(self.run_id))
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
        others = self.strategy.shared.running_elsewhere() if self.strategy.shared is not None else 0
        if others and status == "FINISHED":
            notes.append(f"{others} trial(s) still run in other workers: the last of them ends the sweep")
        else:
            parent.end(status)
        return latest, groups


    def running_notes(self, children: List[Record]) -> List[str]:
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
