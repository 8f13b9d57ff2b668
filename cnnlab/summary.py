"""Summaries of the record, computed in one place: per-configuration aggregates over seeds.

The sweep summary, `cnnlab runs` and every export read these; none recomputes them.

- A run's configuration is its `config_key` (a hash of the resolved config without the seed), so
  repeats with other seeds fall into one group, sweep trials and single runs alike.
- A re-run of the same config and seed (a FAILED trial run again, or a `--force` re-run) is an
  attempt, not a seed: only the latest attempt counts.
- With one seed there is no spread: `std` is None, and views show no "± 0".
- Whether two configurations really differ is `verdict()`: the difference of their means with its confidence
  interval and p-value (Welch's t-test, or the paired test when both ran the same seeds), in words. Within a
  sweep (or an experiment's single runs) every configuration's `standing` says whether it is the best, tied
  with it (not separated at the confidence) or below it.
"""

from __future__ import annotations

import statistics
import warnings
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

from .record import Metric, Record

CONFIDENCE = 0.95  # of every verdict, unless a command is told otherwise
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
    experiment_id: str = ""
    ids: List[str] = field(default_factory=list)  # log IDs of the runs counted
    values: List[float] = field(default_factory=list)  # the objective of each
    tests: List[float] = field(default_factory=list)  # test_acc of each
    seeds: List[Optional[int]] = field(default_factory=list)  # the seed of each
    standing: str = ""  # best | tied | below (against its scope's best, by the objective); "" where not tested
    against_best: Optional["Verdict"] = None  # the verdict behind `standing`

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


def groups(records: Iterable[Record], metric: str = Metric.VAL_ACC, direction: str = "maximize",
           confidence: float = CONFIDENCE) -> List[Group]:
    """Per configuration: the objective and test_acc over its FINISHED seeds, best mean first, each one's standing
    against the best of its scope."""
    found: Dict[tuple, Group] = {}
    for r in latest_attempts(records):
        value = objective(r, metric)
        if r.state != "FINISHED" or value is None:
            continue
        key = (*_scope(r), r.config_key)
        if key not in found:
            params = " ".join(f"{k}={v}" for k, v in r.swept.items() if k != "seed")
            found[key] = Group(r.sweep, r.config_key, params, metric, r.experiment_id)
        g = found[key]
        g.ids.append(r.id)
        g.values.append(value)
        g.seeds.append(r.params.get("seed"))
        if r.metrics.get("test_acc") is not None:
            g.tests.append(r.metrics["test_acc"])
    ranked = sorted(found.values(), key=lambda g: g.mean, reverse=direction == "maximize")
    _stand(ranked, direction, confidence)
    return ranked


def _stand(ranked: List[Group], direction: str, confidence: float) -> None:
    """Each group's standing against the best of its sweep (or of its experiment's single runs), where both have
    two seeds or more: tied while the difference is not shown at `confidence`."""
    best: Dict[tuple, Group] = {}
    for g in ranked:
        scope = (g.experiment_id, g.sweep or "")
        if scope not in best:
            best[scope] = g
            continue
        top = best[scope]
        if top.n < 2 or g.n < 2:
            continue
        v = verdict(top.values, g.values, top.seeds, g.seeds, confidence, top.params or "(base)",
                    g.params or "(base)", higher_is_better=direction == "maximize", points="acc" in g.metric)
        g.against_best, g.standing = v, "tied" if not v.shown else "below"
        top.standing = "best"


def standing(g: Group) -> str:
    """A group's standing as a table shows it: 'best', 'tied (p=0.31)', 'below (p=0.002)', or ''."""
    if g.against_best is None:
        return g.standing
    return f"{g.standing} ({g.against_best.p_text() if g.against_best.p is not None else 'identical'})"


def group_of(groups_: Iterable[Group]) -> Dict[str, Group]:
    """log ID -> the group that counts it."""
    return {i: g for g in groups_ for i in g.ids}


def mean_std(mean: Optional[float], std: Optional[float], digits: int = 4) -> str:
    """'0.7123 ± 0.0042', or '0.7123' with one seed, or '' with none."""
    if mean is None:
        return ""
    return f"{mean:.{digits}f}" + ("" if std is None else f" ± {std:.{digits}f}")


# ---- verdicts: is one configuration really better than another?


@dataclass
class Verdict:
    """B against A: the difference of their means (B - A) with its confidence interval and p-value."""

    a: str  # what each side is, for the words ("dropout=0", "T3's configuration")
    b: str
    a_values: List[float]
    b_values: List[float]
    paired: bool  # both ran the same seeds: the test on the per-seed differences
    diff: float  # mean(B) - mean(A)
    low: Optional[float]  # the interval; None: it cannot be computed (a side with one seed)
    high: Optional[float]
    p: Optional[float]
    confidence: float = CONFIDENCE
    higher_is_better: bool = True
    points: bool = True  # accuracies: say differences in points (x100)

    @property
    def shown(self) -> bool:
        """The difference is real at the confidence (p below 1 - confidence)."""
        return self.p is not None and self.p < 1 - self.confidence

    @property
    def better(self) -> Optional[bool]:
        """Whether B is shown better than A (None: no difference shown)."""
        if not self.shown:
            return None
        return (self.diff > 0) == self.higher_is_better

    def amount(self, value: float) -> str:
        if not self.points:
            return f"{abs(value):.3g}"
        value = abs(value) * 100
        return f"{value:.1f} points" if value >= 1 else f"{value:.2g} points"

    def p_text(self) -> str:
        return "p<0.001" if self.p < 0.001 else f"p={self.p:.2g}"

    def _signed(self, value: float) -> str:
        return f"{value * 100:+.2f}" if self.points else f"{value:+.4f}"

    def interval(self) -> str:
        """'+0.6 to +1.8' (B - A), or '' without one."""
        if self.low is None:
            return ""
        return f"{self._signed(self.low)} to {self._signed(self.high)}"

    def seeds(self) -> str:
        na, nb = len(self.a_values), len(self.b_values)
        if na == nb:
            return f"{na} seed{'s' if na > 1 else ''} each"
        return f"{na} and {nb} seeds"

    def words(self) -> str:
        """The verdict in a sentence, as `cnnlab compare` says it."""
        n = self.seeds() + (", paired by seed" if self.paired else "")
        if self.low is None:
            return (f"no difference can be shown with {n}: a side with one seed has no spread to measure. "
                    f"Run more seeds (cnnlab sweep ... --repeats 3, or --repeats auto).")
        if self.p is None:
            return f"{self.b} and {self.a} gave identical results in every seed ({n}): no difference."
        if self.shown:
            spread = "no spread between seeds" if self.low == self.high else f"{self.interval()}"
            return (f"{self.b} is {'better' if self.better else 'worse'} than {self.a} by {self.amount(self.diff)} "
                    f"({spread}, {self.p_text()}, {n}).")
        needed = self.seeds_needed()
        size = max(abs(self.diff), 0.001 if self.points else 1e-6)
        more = (f"about {needed} seeds each would show a difference of {self.amount(size)}, if it is real"
                if needed else f"more than {MAX_SEEDS} seeds each would be needed to show one of {self.amount(size)}")
        return (f"no difference shown between {self.b} and {self.a} with {n} ({self._signed(self.diff)}, "
                f"{self.interval()}, {self.p_text()}); {more}.")

    def short(self) -> str:
        """A table cell: 'better +1.20 (+0.60 to +1.80)', 'not shown -0.30 (-1.1 to +0.5)', or ''."""
        if self.low is None:
            return ""
        if self.p is None:
            return "identical"
        word = {True: "better", False: "worse", None: "not shown"}[self.better]
        return f"{word} {self._signed(self.diff)} ({self.interval()}, {self.p_text()})"

    def seeds_needed(self, power: float = 0.8) -> Optional[int]:
        """Seeds per side with which a difference the size of this one would be shown at this confidence with
        `power` (the spread as measured here); None: more than MAX_SEEDS."""
        from scipy import stats

        if self.paired:
            sd = statistics.stdev([b - a for a, b in zip(self.a_values, self.b_values)])
        else:
            sd = ((statistics.variance(self.a_values) + statistics.variance(self.b_values)) / 2) ** 0.5
        size = max(abs(self.diff), 0.001 if self.points else 1e-6)
        if sd == 0:
            return 2
        alpha = 1 - self.confidence
        for n in range(2, MAX_SEEDS + 1):
            df = n - 1 if self.paired else 2 * n - 2
            ncp = size / (sd / n ** 0.5) if self.paired else size / (sd * (2 / n) ** 0.5)
            t = stats.t.ppf(1 - alpha / 2, df)
            if stats.nct.sf(t, df, ncp) + stats.nct.cdf(-t, df, ncp) >= power:
                return n
        return None


MAX_SEEDS = 1000


def verdict(a: List[float], b: List[float], a_seeds: Optional[List] = None, b_seeds: Optional[List] = None,
            confidence: float = CONFIDENCE, a_name: str = "A", b_name: str = "B", higher_is_better: bool = True,
            points: bool = True) -> Verdict:
    """B against A: Welch's t-test on the two samples, or the paired t-test when both ran the same seeds (the
    values are then matched by seed). One seed on a side: no interval, no p-value. Identical values throughout:
    no p-value, a zero interval."""
    from scipy import stats

    paired = (a_seeds is not None and b_seeds is not None and None not in a_seeds and len(set(a_seeds)) == len(a)
              and sorted(a_seeds) == sorted(b_seeds) and len(a) > 1)
    if paired:
        by_seed = dict(zip(b_seeds, b))
        a = [v for _, v in sorted(zip(a_seeds, a))]
        b = [by_seed[s] for s in sorted(a_seeds)]
    diff = statistics.fmean(b) - statistics.fmean(a)
    made = dict(a=a_name, b=b_name, a_values=list(a), b_values=list(b), paired=paired, diff=diff,
                confidence=confidence, higher_is_better=higher_is_better, points=points)
    if len(a) < 2 or len(b) < 2:
        return Verdict(low=None, high=None, p=None, **made)
    if (a == b) if paired else len(set(a) | set(b)) == 1:  # identical results: nothing to test
        return Verdict(low=0.0, high=0.0, p=None, **made)
    with warnings.catch_warnings():  # nearly identical values: scipy warns, and still answers
        warnings.simplefilter("ignore", RuntimeWarning)
        test = stats.ttest_rel(b, a) if paired else stats.ttest_ind(b, a, equal_var=False)
    ci = test.confidence_interval(confidence)
    return Verdict(low=float(ci.low), high=float(ci.high), p=float(test.pvalue), **made)
