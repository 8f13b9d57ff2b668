"""The training log's columns, declared once: the .xlsx, .csv and .md exports and `cnnlab runs` all read
this table. A new column is one line here.

Each column has its header (as the course's table writes it), the header group above it in the
workbook, how its value is read from a log row (log.Row: the run's record, its changes, its
configuration's group over seeds), its format, its `--sort` key and its short name in `cnnlab runs`
(None: not shown there). Target-set accuracies are one column per target set found (TARGETS).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

from .record.vocabulary import Metric

# format name -> (Excel number format, text format for .md and the terminal)
FORMATS: Dict[str, tuple] = {
    "text": (None, "{}"),
    "int": ("0", "{:.0f}"),
    "count": ("#,##0", "{:,.0f}"),
    "acc": ("0.000", "{:.4f}"),
    "lr": ("0.0####", "{:g}"),
    "mflops": ("#,##0.00", "{:,.2f}"),
    "seconds": ("#,##0.0", "{:,.1f}"),
}
GROUPS = ("Experiment", "Source Dataset", "Target Dataset", "Details")


@dataclass(frozen=True)
class Column:
    header: str
    group: str  # one of GROUPS
    value: Callable[[Any], Any]  # log.Row -> the cell's value (None: blank)
    fmt: str = "text"  # a key of FORMATS
    sort: Optional[str] = None  # the --sort key that orders by this column
    short: Optional[str] = None  # its name in `cnnlab runs`; None: not shown there
    width: Optional[int] = None  # the widest a workbook column gets (long texts wrap)
    when: Optional[Callable[[list], bool]] = None  # shown only if this holds for the rows (None: always)

    def text(self, value: Any) -> str:
        """The value as .md and the terminal show it."""
        if value is None or (isinstance(value, float) and value != value):
            return ""
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return FORMATS[self.fmt][1].format(value)
        return str(value)

    @property
    def descending(self) -> bool:
        """Sorting puts the best first: accuracies descend, everything else ascends."""
        return self.fmt == "acc"


TARGETS = "<one column per target set>"

def _repeats(rows) -> bool:
    return any(r.group is not None and r.group.n > 1 for r in rows)


def _standing(group) -> Optional[str]:
    from .summary import standing

    return standing(group) if group is not None and group.standing else None


COLUMNS: List[Any] = [
    Column("ID", "Experiment", lambda r: r.record.id, sort="id", short="id"),
    Column("BATCH SIZE", "Experiment", lambda r: r.param("batch_size"), "int", "batch_size", "batch"),
    Column("FILE", "Experiment", lambda r: r.file, width=28),
    # codes as the course's log writes them (D0, D1 / T0, T1); the Legend says what each is
    Column("DATA SETS", "Experiment", lambda r: r.codes.get("D"), short="data", width=10),
    Column("TEST SPLIT", "Experiment", lambda r: r.codes.get("T"), short="test", width=10),
    Column("EPOCH", "Experiment", lambda r: r.param("epochs"), "int", "epochs", "epochs"),
    Column("LR", "Experiment", lambda r: r.param("lr"), "lr", "lr", "lr"),
    Column("IMAGE SIZE", "Experiment", lambda r: f"{r.param('image_size') or 32}x{r.param('image_size') or 32}"),
    Column("ARCHITECTURE CHANGES", "Experiment", lambda r: r.changes, short="changes", width=36),
    Column("TRAINING CHANGES", "Experiment", lambda r: r.training_changes, short="training", width=30,
           when=lambda rows: any(r.training_changes for r in rows)),
    # the held-out accuracies the model is judged on (the course's Source Dataset group), then the mean over seeds
    Column("ACC VAL", "Source Dataset", lambda r: r.metric(Metric.VAL_ACC_BEST, Metric.VAL_ACC), "acc", "val_acc", "val acc"),
    Column("ACC TEST", "Source Dataset", lambda r: r.metric("no_tta_test_acc", "test_acc"), "acc", "test_acc",
           "test acc"),
    Column("ACC TEST TTA", "Source Dataset", lambda r: r.tta_acc, "acc", "tta_acc", "tta acc",
           when=lambda rows: any(r.tta_acc is not None for r in rows)),
    Column("ACC AVG", "Source Dataset", lambda r: r.group and r.group.test_mean, "acc", "acc_avg", "mean test"),
    Column("ACC STD", "Source Dataset", lambda r: r.group and r.group.test_std, "acc", short="± std", when=_repeats),
    Column("N", "Source Dataset", lambda r: r.group and r.group.n, "int", short="seeds", when=_repeats),
    # whether its configuration is tied with the best of its sweep (by the objective), and better or worse than
    # the baseline's (by test accuracy): summary.verdict over their seeds, where both have two or more
    Column("VS BEST", "Source Dataset", lambda r: _standing(r.group), short="vs best", width=16,
           when=lambda rows: any(r.group is not None and r.group.standing for r in rows)),
    Column("VERDICT", "Source Dataset", lambda r: r.verdict, short="vs baseline", width=30,
           when=lambda rows: any(r.verdict and r.verdict != "baseline" for r in rows)),
    TARGETS,
    Column("TARGET ACC AVG", "Target Dataset", lambda r: r.target_avg, "acc", short="target acc"),
    Column("ACC TRAIN", "Details", lambda r: r.metric("train_acc_final", "train_acc"), "acc", "train_acc",
           "train acc"),
    Column("SOURCE", "Details", lambda r: r.source, short="source", width=20,
           when=lambda rows: any(r.source for r in rows)),
    Column("ARCH", "Details", lambda r: r.param("arch.name"), short="arch"),
    Column("PARAMS", "Details", lambda r: r.count("params"), "count", "params"),
    Column("MFLOPS", "Details", lambda r: r.mflops, "mflops", "flops", "MFLOPs"),
    Column("WALL TIME (S)", "Details", lambda r: r.rounded("wall_time", 1), "seconds", "wall_time", "time (s)"),
    Column("STATUS", "Details", lambda r: r.record.state, short="status"),
    Column("RUN ID", "Details", lambda r: r.record.run_id),
    Column("MLFLOW", "Details", lambda r: r.link, width=14),
]


def target_column(name: str) -> Column:
    return Column(f"ACC {name.replace('_', ' ').upper()}", "Target Dataset",
                  lambda r, key=f"target_acc_{name}": r.metric(key), "acc")


def expand(targets: Sequence[str], rows: Optional[list] = None) -> List[Column]:
    """COLUMNS with TARGETS replaced by a column per target set name, and (given the rows) without the
    columns whose `when` does not hold for them."""
    out: List[Column] = []
    for column in COLUMNS:
        out += [target_column(t) for t in targets] if column is TARGETS else [column]
    return [c for c in out if rows is None or c.when is None or c.when(rows)]


def sort_keys() -> Dict[str, str]:
    """--sort key -> column header (plus 'start', the recorded order)."""
    return {"start": "", **{c.sort: c.header for c in expand([]) if c.sort}}
