"""The record's vocabulary: the tags cnnlab writes, the metric names, the states and `Record`, one recorded run as
every view sees it. Plain Python: nothing here imports MLflow."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional


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
    TARGET_CLASSES = "cnnlab.target_classes"  # .<target>: which of a real target's classes were scored, as what
    # a run started from another's weights (transfer.py): its source, the source's data, the mode and the head
    SOURCE_RUN, SOURCE, SOURCE_DATA = "cnnlab.source_run", "cnnlab.source", "cnnlab.source_data"
    TRANSFER, HEAD = "cnnlab.transfer", "cnnlab.head"
    TRANSFERRED_TO = "cnnlab.transferred_to"  # on a source: the run IDs started from it, space-separated
    REPRODUCES = "cnnlab.reproduces"  # on a run `cnnlab reproduce` made: the run ID it trained again
    REPRODUCED_BY = "cnnlab.reproduced_by"  # on that run: the run IDs that reproduced it, space-separated
    # what else decides a run's numbers (environment.py): beside mlflow.source.git.commit, cnnlab.torch, cnnlab.device
    PYTHON, CPU, GPU, THREADS = "cnnlab.python", "cnnlab.cpu", "cnnlab.gpu", "cnnlab.threads"
    DATA_HASH = "cnnlab.data_hash"  # the content hash of the images and labels it trained and tested on
    PACKAGES_HASH = "cnnlab.packages_hash"  # of repro/requirements.txt, the installed packages
    GIT_DIFF_HASH = "cnnlab.git_diff_hash"  # of repro/git.diff, the uncommitted changes ("none": a clean tree)


class Metric:
    """The names of the metrics a run records (MLflow metrics; per epoch where a step is given)."""

    TRAIN_LOSS, TRAIN_ACC = "train_loss", "train_acc"  # per epoch
    VAL_LOSS, VAL_ACC = "val_loss", "val_acc"  # per epoch, on the held-out part of the training split
    EPOCH_TEST_LOSS, EPOCH_TEST_ACC = "epoch_test_loss", "epoch_test_acc"  # per epoch: the test curve
    LR, IMG_PER_S, EPOCH_TIME = "lr", "img_per_s", "epoch_time"  # per epoch
    TEST_ACC, TEST_LOSS = "test_acc", "test_loss"  # the final test (with TTA when tta=true)
    TTA_SHARE_USED = "tta_share_used"  # the share of the test images TTA scored (budget= may leave time for fewer)
    VAL_ACC_BEST, BEST_EPOCH, EPOCHS_RUN = "val_acc_best", "best_epoch", "epochs_run"
    WALL_TIME, TRAIN_TIME, PARAMS, FLOPS = "wall_time", "train_time", "params", "flops"

    CURVES = (TRAIN_LOSS, TRAIN_ACC, VAL_LOSS, VAL_ACC, EPOCH_TEST_LOSS, EPOCH_TEST_ACC)
    # what a run's page and `cnnlab compare` show first
    HEADLINE = (TEST_ACC, VAL_ACC_BEST, BEST_EPOCH, EPOCHS_RUN, WALL_TIME, PARAMS, FLOPS)

    @staticmethod
    def target_acc(name: str) -> str:
        """The accuracy on a target (shifted) test set: target_acc_<name>."""
        return f"target_acc_{name}"


STATES = ("FINISHED", "FAILED", "KILLED", "PRUNED", "RUNNING")


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
    orphaned: bool = field(repr=False, default=False)  # recorded RUNNING, its process gone: shown KILLED until reaped

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
