"""A run's record while it trains: its directory, checkpoints and artifacts, its MLflow run, and how it ends.

`Recorder` opens the MLflow run (which gives the run its log ID), creates `runs/<experiment>/<ID>/`
with the resolved config, writes each epoch's metrics and checkpoints, and ends the run in one of
its end states: FINISHED (scores and artifacts logged), KILLED (a signal; the last checkpoint
kept), PRUNED (a sweep's pruner stopped it) or FAILED (an error, with the reason).
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from . import checkpoint, environment, figures
from .config import flatten, to_dict
from .console import Reporter
from .errors import Interrupted
from .schema import duration, project_root, runs_dir, safe_name
from .record import Store, Tag
from .version import __version__


@dataclass
class Result:
    run_id: Optional[str]
    id: str  # the log ID
    run_dir: Path
    status: str  # FINISHED | FAILED | KILLED | PRUNED
    metrics: Dict[str, float]  # final scores
    history: List[Dict[str, float]] = field(default_factory=list)  # one dict per epoch
    wall_seconds: float = 0.0
    tracking_seconds: float = 0.0
    experiment: str = ""  # the MLflow experiment it was recorded in


class SignalGate:
    """SIGINT/SIGTERM during a training. While set-up runs (imports, data, model: code of other libraries that
    may catch and drop an exception) a signal is only remembered; `arm()` raises it as Interrupted, and from
    then on a signal raises at once. Later signals wait until the run is recorded."""

    def __init__(self):
        self.fired: Optional[int] = None
        self.armed = False
        self.holding = False

    def _handler(self, signum, frame) -> None:
        if self.fired is None:
            self.fired = signum
            if self.armed and not self.holding:
                raise Interrupted(signum)

    def arm(self) -> None:
        self.armed = True
        if self.fired is not None:
            raise Interrupted(self.fired)

    @contextmanager
    def held(self):
        """A block a signal does not cut (an epoch's record: its checkpoints and metrics land together): a
        signal that arrives in it is raised when the block ends."""
        holding, self.holding = self.holding, True
        try:
            yield
        finally:
            self.holding = holding
        if self.armed and not holding and self.fired is not None:
            raise Interrupted(self.fired)


@contextmanager
def signals_as_exceptions():
    """A SignalGate over SIGINT and SIGTERM for the block (only in the main thread: elsewhere signals are not
    ours to handle)."""
    gate = SignalGate()
    if threading.current_thread() is not threading.main_thread():
        yield gate
        return
    old = {s: signal.signal(s, gate._handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield gate
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def new_run_dir(parent: Path, name: str) -> Path:
    """parent/name, or parent/name-2, -3, ... when taken: never reuses a directory."""
    parent.mkdir(parents=True, exist_ok=True)
    for i in range(1, 1000):
        path = parent / (name if i == 1 else f"{name}-{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a fresh run directory under {parent}")


def git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project_root(), capture_output=True, text=True,
                             timeout=5)
        if out.returncode != 0:
            return None
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def epoch_line(epoch: int, epochs: int, m: Dict[str, float]) -> str:
    """'epoch 3/10  train 0.912/0.680  val 0.874/0.694  test 0.881/0.690  lr 0.001  9.8 s 5,510 img/s'
    (loss/accuracy pairs)."""
    parts = [f"epoch {epoch}/{epochs}", f"train {m['train_loss']:.3f}/{m['train_acc']:.3f}"]
    if "val_acc" in m:
        parts.append(f"val {m['val_loss']:.3f}/{m['val_acc']:.3f}")
    if "epoch_test_acc" in m:
        parts.append(f"test {m['epoch_test_loss']:.3f}/{m['epoch_test_acc']:.3f}")
    parts += [f"lr {m['lr']:.3g}", f"{m['epoch_time']:.1f} s {m['img_per_s']:,.0f} img/s"]
    return "  ".join(parts)


class Recorder:
    """The record of one training run, from its start to its end state."""

    def __init__(self, cfg, overrides: Sequence[str], *, summary: str, sizes: Dict[str, int], device: str,
                 precision: str, tags: Optional[dict] = None, parent_run_id: Optional[str] = None,
                 run_root: Optional[Path] = None, log_id: Optional[str] = None, quiet: bool = False,
                 started: Optional[float] = None, resume=None, state: Optional[dict] = None,
                 clock: Callable[[], float] = time.perf_counter, data=None):
        """resume: the Record of a KILLED run to continue, with `state` its last checkpoint (run_resumable);
        clock: what wall time is read from (started is on it); data: the dataset it trains on, whose content hash
        is recorded with the rest of what it takes to run it again (environment.py: tags, and files
        under repro/)."""
        import torch

        self.clock = clock
        self.started = clock() if started is None else started  # wall time counts from here
        self.cfg, self.cfg_dict = cfg, to_dict(cfg)
        self.classes = list(data.classes) if data is not None else None  # in each checkpoint: what its head predicts
        self.best_path = self.last_path = None
        if resume is not None:
            self._reopen(resume, state, quiet)
            return
        env_tags, repro = environment.environment(data, device) if data is not None else ({}, {})
        run_tags = {
            **env_tags, "cnnlab.version": __version__, "cnnlab.device": device, "cnnlab.precision": precision,
            "cnnlab.torch": torch.__version__, Tag.OVERRIDES: " ".join(overrides),
            "mlflow.source.name": "cnnlab train", "mlflow.source.type": "LOCAL", **(tags or {}),
        }
        commit = git_commit()
        if commit:
            run_tags["mlflow.source.git.commit"] = commit
        store = Store(cfg.tracking.uri)
        store.upkeep()  # a command that writes: runs whose process is gone are ended KILLED first
        self.run = store.create_run(cfg.experiment, run_tags, run_name=cfg.run_name, parent_run_id=parent_run_id,
                                    log_id=log_id)
        self.id = self.run.id
        self.run.keep_alive()
        name = cfg.run_name or self.id.rsplit("/", 1)[-1]
        self.dir = new_run_dir(run_root or runs_dir() / safe_name(cfg.experiment), safe_name(name))
        from omegaconf import OmegaConf

        (self.dir / ".hydra").mkdir()
        (self.dir / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(self.cfg_dict))
        (self.dir / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(list(overrides)))
        (self.dir / "model.txt").write_text(summary)
        if repro:
            (self.dir / "repro").mkdir()
            for name, text in repro.items():
                (self.dir / "repro" / name).write_text(text)
            self.run.log_artifacts(sorted((self.dir / "repro").iterdir()), "repro")
        self.report = Reporter(self.dir / "train.log", quiet=quiet)
        root = self.run.root  # inside the store's directory the tag is relative: the store can move
        inside = root is not None and self.dir.is_relative_to(root)
        self.run.set_tags({Tag.RUN_DIR: self.dir.relative_to(root).as_posix() if inside else str(self.dir)})
        self.run.log_params({**flatten(self.cfg_dict), **sizes})
        self.history: List[Dict[str, float]] = []
        self.best = {"val_acc": -1.0, "epoch": 0}
        self.best_path, self.last_path = self.dir / "best.pt", self.dir / "last.pt"
        self.earlier = 0.0  # wall time of earlier sessions of this run

    def _reopen(self, record, state: dict, quiet: bool) -> None:
        store = Store(self.cfg.tracking.uri)
        store.upkeep()
        self.run = store.reopen(record)
        self.run.keep_alive()
        self.id, self.dir = record.id, record.run_dir
        self.report = Reporter(self.dir / "train.log", quiet=quiet)
        self.history, self.best = list(state["history"]), dict(state["best"])
        self.best_path, self.last_path = self.dir / "best.pt", self.dir / "last.pt"
        self.earlier = state.get("wall_seconds", 0.0)
        self.report.line(f"resumed {self.id} ({self.run.run_id}) after epoch {self.epoch}/{self.cfg.epochs}")

    @property
    def epoch(self) -> int:
        """The last epoch recorded."""
        return len(self.history)

    @staticmethod
    def _score(epoch: int, metrics: Dict[str, float]) -> float:
        """What chooses the best checkpoint: val_acc, or the epoch itself when there is no validation split."""
        return metrics.get("val_acc", epoch)

    def becomes_best(self, epoch: int, metrics: Dict[str, float]) -> bool:
        """Whether this epoch's weights become the best checkpoint, the one the final test scores."""
        return self._score(epoch, metrics) > self.best["val_acc"]

    def epoch_done(self, epoch: int, metrics: Dict[str, float], trainer, batches) -> None:
        """Record an epoch: the best checkpoint (by val_acc; the latest when there is no validation split), the
        last one (with all the state to continue from: `cnnlab train resume=RUN`), metrics to MLflow and the log."""
        self.history.append({"epoch": epoch, **metrics})
        state = {"model": trainer.checkpoint_module.state_dict(), "config": self.cfg_dict, "epoch": epoch,
                 "metrics": metrics, "classes": self.classes}
        if self.becomes_best(epoch, metrics):
            self.best = {"val_acc": self._score(epoch, metrics), "epoch": epoch}
            checkpoint.save(self.best_path, state)
        checkpoint.save(self.last_path, {**state, "trainer": trainer.state_dict(), "batches": batches.state_dict(),
                                         "history": self.history, "best": self.best,
                                         "wall_seconds": self.earlier + self.clock() - self.started})
        self.run.log_metrics(metrics, step=epoch)
        self.report.line(epoch_line(epoch, trainer.epochs, metrics))  # (after budget= re-plans)

    def epoch_tested(self, epoch: int, loss: float, acc: float) -> None:
        """An epoch's point of the test curve, from the final test of its weights (see train.fit)."""
        metrics = {"epoch_test_loss": loss, "epoch_test_acc": acc}
        self.history[epoch - 1].update(metrics)
        self.run.log_metrics(metrics, step=epoch)
        self.report.line(f"epoch {epoch} test {loss:.3f}/{acc:.3f} (the final test's plain view of its weights)")

    def finished(self, final: Dict[str, float], matrix, classes: Sequence[str], extra: Dict[str, float]) -> Result:
        """The run's final scores, per-class accuracy, confusion matrix and artifacts; ends it FINISHED."""
        per_class = (matrix.diag().float() / matrix.sum(1).clamp(min=1).float()).tolist()
        final = {**final, **{f"test_acc_{c}": a for c, a in zip(classes, per_class)},
                 "wall_time": self.earlier + self.clock() - self.started}
        if self.cfg.budget:  # how much of its time budget the run used (1.0: all of it)
            final["budget_used"] = final["wall_time"] / duration(self.cfg.budget)
        with open(self.dir / "per_class.csv", "w") as f:
            f.write("class,test_acc,support\n")
            for c, a, n in zip(classes, per_class, matrix.sum(1).tolist()):
                f.write(f"{c},{a:.4f},{n}\n")
        with open(self.dir / "confusion.csv", "w") as f:  # the numbers behind the picture (rows: true class)
            f.write("true\\predicted," + ",".join(classes) + "\n")
            for c, row in zip(classes, matrix.tolist()):
                f.write(f"{c}," + ",".join(map(str, row)) + "\n")
        figures.save(figures.confusion(matrix.tolist(), classes), self.dir / "confusion.png")
        final["tracking_time"] = self.run.seconds  # MLflow's share of the wall time so far
        self.run.log_metrics(final, step=self.epoch)
        self.report.line(f"done: {self.id} test_acc {final['test_acc']:.4f} (best epoch {final['best_epoch']}, "
                         f"val_acc {final['val_acc_best']:.4f}) in {final['wall_time']:.0f} s; {self.dir}")
        self.run.log_artifacts([self.dir / ".hydra" / "config.yaml", self.dir / ".hydra" / "overrides.yaml"], "config")
        self.run.log_artifacts([self.dir / n for n in ("per_class.csv", "confusion.csv", "confusion.png", "model.txt",
                                                            "train.log")])
        self.run.log_artifacts([self.best_path], "checkpoint")
        self.run.end("FINISHED")
        return self._result("FINISHED", {**final, **extra})

    def killed(self, exc: Interrupted) -> None:
        """Ended by a signal: last.pt stays the end of the last whole epoch, to resume from."""
        signum = exc.exit_code - 128
        if self.epoch and self.last_path is not None and self.last_path.exists():
            kept = f"resume it after epoch {self.epoch} with `cnnlab train resume={self.id}`"
        else:
            kept = "no epoch finished, so there is nothing to resume: train it again"
        self.report.line(f"interrupted (signal {signum}) in epoch {self.epoch + 1}: run {self.id} KILLED; {kept}")
        self.run.end("KILLED", f"signal {signum} in epoch {self.epoch + 1}")

    def pruned(self, exc: Exception, extra: Dict[str, float]) -> Result:
        reason = f"pruned after epoch {self.epoch}: {exc}"
        self.report.line(reason)
        self.run.end("PRUNED", reason)
        last = self.history[-1] if self.history else {}
        return self._result("PRUNED", {**last, "epochs_run": self.epoch, **extra})

    def failed(self, exc: BaseException) -> None:
        reason = f"{type(exc).__name__}: {exc}"
        self.report.line(f"failed in epoch {self.epoch + 1}: {reason}")
        self.run.end("FAILED", reason)

    def _result(self, status: str, metrics: Dict[str, float]) -> Result:
        return Result(self.run.run_id, self.id, self.dir, status, metrics, self.history,
                      self.earlier + self.clock() - self.started, self.run.seconds, self.cfg.experiment)


def resumable(record) -> dict:
    """The last checkpoint of a run to continue: refuses a run that cannot be, saying why."""
    from .errors import CnnlabError

    if record.state in ("FINISHED", "PRUNED"):
        raise CnnlabError(f"Run {record.id} is {record.state}: there is nothing to resume. Train a new run instead.")
    if record.state == "RUNNING":
        raise CnnlabError(f"Run {record.id} is still RUNNING (process {record.tags.get(Tag.OWNER, '?')}).")
    path = (record.run_dir or Path("")) / "last.pt"
    if not path.exists():
        raise CnnlabError(f"Run {record.id} has no last checkpoint at {path}: it ended before its first epoch did. "
                          "Train it again.")
    state = checkpoint.read(path, f"Run {record.id}'s last checkpoint")
    if "trainer" not in state:
        raise CnnlabError(f"Run {record.id}'s last checkpoint {path} was written by an older cnnlab without the "
                          "state to continue from; it cannot be resumed.")
    return state
