"""Summaries of the record, computed in one place: per-configuration aggregates over seeds.

The sweep summary, `cnnlab runs` and every export read these; none recomputes them.

- A run's configuration is its `config_key` (a hash of the resolved config without the seed), so
  repeats with other seeds fall into one group, sweep trials and single runs alike.
- A re-run of the same config and seed (a FAILED trial run again, or a `--force` re-run) is an
  attempt, not a seed: only the latest attempt counts.
- With one seed there is no spread: `std` is None, and views show no "± 0".
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

from .record import Metric, Record

OBJECTIVES = (Metric.VAL_ACC, Metric.VAL_LOSS)  # train() logs each one's best-epoch value as <metric>_best


def objective(record: Record, metric: str = Metric.VAL_ACC) -> Optional[float]:
    """The value a run is chosen by: `metric` at its best epoch (the test set never chooses)."""
    value = record.metrics.get(f"{metric}_best", record.metrics.get(metric))
    return None if value is None or value != value else value


def _scope(record: Record) -> Tuple[str, str]:
    return record.experiment_id, record.sweep or ""


def latest_attempts(records: Iterable[Record]) -> List[Record]:
    """One run per config and seed (its latest attempt), in the order of the first attempts. `records` are
    oldest first."""
    latest: Dict[tuple, Record] = {}
    for r in records:
        latest[(*_scope(r), r.trial_key)] = r
    return list(latest.values())


@dataclass
class Group:
    """One configuration over its seeds (FINISHED runs, latest attempts only)."""

    sweep: Optional[str]
    config_key: str
    params: str  # the swept values ("lr=0.01 dropout=0.5"), "" for a sweep's base or a single run
    metric: str
    ids: List[str] = field(default_factory=list)  # log IDs of the runs counted
    values: List[float] = field(default_factory=list)  # the objective of each
    tests: List[float] = field(default_factory=list)  # test_acc of each

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> Optional[float]:
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    @property
    def test_mean(self) -> Optional[float]:
        return statistics.fmean(self.tests) if self.tests else None

    @property
    def test_std(self) -> Optional[float]:
        return statistics.stdev(self.tests) if len(self.tests) > 1 else None

    def best(self, direction: str = "maximize") -> float:
        return max(self.values) if direction == "maximize" else min(self.values)


def groups(records: Iterable[Record], metric: str = Metric.VAL_ACC, direction: str = "maximize") -> List[Group]:
    """Per configuration: the objective and test_acc over its FINISHED seeds, best mean first."""
    found: Dict[tuple, Group] = {}
    for r in latest_attempts(records):
        value = objective(r, metric)
        if r.state != "FINISHED" or value is None:
            continue
        key = (*_scope(r), r.config_key)
        if key not in found:
            params = " ".join(f"{k}={v}" for k, v in r.swept.items() if k != "seed")
            found[key] = Group(r.sweep, r.config_key, params, metric)
        g = found[key]
        g.ids.append(r.id)
        g.values.append(value)
        if r.metrics.get("test_acc") is not None:
            g.tests.append(r.metrics["test_acc"])
    return sorted(found.values(), key=lambda g: g.mean, reverse=direction == "maximize")


def group_of(groups_: Iterable[Group]) -> Dict[str, Group]:
    """log ID -> the group that counts it."""
    return {i: g for g in groups_ for i in g.ids}


def mean_std(mean: Optional[float], std: Optional[float], digits: int = 4) -> str:
    """'0.7123 ± 0.0042', or '0.7123' with one seed, or '' with none."""
    if mean is None:
        return ""
    return f"{mean:.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}")
