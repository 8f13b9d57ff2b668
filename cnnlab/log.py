"""The training log: recorded runs as the rows of the course's table, plus their per-epoch curves,
per-class accuracy and per-configuration summaries over seeds.

`build()` reads the runs the store gives and the groups summary.py computes, `sort_top()` orders
and cuts, and columns.py says what each column shows. ARCHITECTURE CHANGES is the difference
between a run's resolved config and its baseline, written the way the course writes it.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from . import columns as cols
from . import summary
from .engine import tta_scope
from .errors import CnnlabError
from .schema import BOOKKEEPING, KNOBS, TRAINING, keys_in
from .record import Metric, Record, Store, Tag, ui_link

CURVE_KEYS = Metric.CURVES
# the config keys whose changes ARCHITECTURE CHANGES describes (and every arch.* parameter), those of TRAINING
# CHANGES, and those that say nothing about what a run computes (a trial equal to its base in all else is the
# baseline): each key's field in schema.Config says which; the rest have columns of their own
ARCH_KEYS = ("arch.name", *KNOBS)
TRAINING_KEYS = keys_in(TRAINING)
BOOKKEEPING_KEYS = keys_in(BOOKKEEPING)


def _num(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def describe_changes(base: Dict[str, Any], cfg: Dict[str, Any], keys: Sequence[str] = ARCH_KEYS) -> str:
    """What changed from `base` to `cfg` in `keys`, in the course's words: 'Increase dense units 64→500; added
    dropout 0.5'. With the architecture keys, every arch.* parameter counts too."""
    parts = []
    if keys is ARCH_KEYS:
        keys = list(keys) + sorted(k for k in set(base) | set(cfg) if k.startswith("arch.") and k != "arch.name")
    for key in keys:
        a, b = base.get(key), cfg.get(key)
        if a == b or (a is None and b is None):
            continue
        if key == "arch.name":
            parts.append(f"architecture {a}→{b}")
        elif key == "dense_units":
            if not b:
                parts.append("removed dense layer")
            elif not a:
                parts.append(f"added dense layer of {b} units")
            else:
                parts.append(f"{'increase' if b > a else 'decrease'} dense units {a}→{b}")
        elif key == "dropout":
            if not b:
                parts.append("removed dropout")
            elif not a:
                parts.append(f"added dropout {_num(b)}")
            else:
                parts.append(f"dropout {_num(a)}→{_num(b)}")
        elif key == "batch_norm":
            parts.append("batch norm on" if b else "batch norm off")
        elif key == "augment":
            parts.append("augmentation on" if b else "augmentation off")
        elif key == "nesterov":
            parts.append("Nesterov momentum on" if b else "Nesterov momentum off")
        elif key == "pool":
            parts.append(f"{b} pooling instead of {a}")
        elif key == "width":
            parts.append(f"width x{_num(a)}→x{_num(b)}")
        elif key == "init_from":
            mode = cfg.get("transfer")
            if mode == "finetune" and cfg.get("body_lr") not in (None, 1, 1.0):
                mode += f", body lr x{_num(cfg.get('body_lr'))}"
            parts.append(f"fine-tuned from {b} on {cfg.get('data.name')} ({mode})" if b and mode != "none"
                         else f"trained from scratch (transfer=none, not from {b})" if b else f"not from {a}")
        elif key in ("transfer", "body_lr") and cfg.get("init_from") and "init_from" in keys and \
                base.get("init_from") != cfg.get("init_from"):
            continue  # said with init_from
        elif key == "body_lr":
            parts.append(f"body lr x{_num(b)}")
        else:
            parts.append(f"{key.replace('_', ' ')} {_num(a)}→{_num(b)}")
    if not parts:
        return ""
    text = "; ".join(parts)
    return text[0].upper() + text[1:]


def _same(a: Dict[str, Any], b: Dict[str, Any]) -> bool:
    """Same configuration apart from bookkeeping (seed, names, sizes)."""
    return not differs(a, b)


def _count(n: Optional[int]) -> str:
    if n is None:
        return "?"
    return f"{n / 1000:g}k" if n >= 1000 else str(n)


@dataclass
class Row:
    """One run as the log sees it; columns.py reads its cells from here."""

    record: Record
    changes: str  # ARCHITECTURE CHANGES against the baseline
    training_changes: str  # the same for the training settings without columns of their own
    group: Optional[summary.Group]  # its configuration over seeds (None: not FINISHED)
    link: str
    runs_root: Path
    verdict: str = ""  # its configuration against the baseline's, over their seeds (test accuracy); "baseline"
    codes: Dict[str, str] = field(default_factory=dict)  # DATA SETS and TEST SPLIT as the course codes them (D0, T0)

    def param(self, key: str) -> Any:
        return self.record.params.get(key)

    def metric(self, *keys: str) -> Optional[float]:
        for key in keys:
            value = self.record.metrics.get(key)
            if value is not None:
                return None if value != value else value
        return None

    def count(self, key: str) -> Optional[int]:
        value = self.metric(key)
        return None if value is None else int(value)

    def rounded(self, key: str, digits: int) -> Optional[float]:
        value = self.metric(key)
        return None if value is None else round(value, digits)

    @property
    def file(self) -> str:
        run_dir = self.record.run_dir
        if run_dir is None:
            return self.record.name
        try:
            return run_dir.relative_to(self.runs_root).as_posix()
        except ValueError:
            return str(run_dir)

    @property
    def data_sets(self) -> str:
        """What trained it, in words (the legend of DATA SETS' codes)."""
        frac = self.param("data.train_fraction") or 1.0
        return (f"{self.param('data.name') or '?'}{f' {frac:.0%}' if frac < 1 else ''} "
                f"({_count(self.param('split.train'))} train)")

    @property
    def test_split(self) -> str:
        """How it was tested, in words (the legend of TEST SPLIT's codes): held out, the test set, the targets."""
        targets = sorted(self.targets)
        return (f"val {(self.param('val_split') or 0):.0%} / {self.param('data.name') or '?'} test "
                f"{_count(self.param('split.test'))}{self._tta}"
                + (f"; targets {', '.join(targets)}" if targets else ""))

    @property
    def _tta(self) -> str:
        if not self.param("tta"):
            return ""
        used = self.metric("tta_share_used")  # (budget= may have left time for fewer than tta_share)
        return f" with TTA{tta_scope(self.param('tta_share') or 1.0 if used is None else used)}"

    @property
    def source(self) -> str:
        """Where a transfer run started: 'cifar10/T3 (probe)', or ''."""
        tags = self.record.tags
        return f"{tags[Tag.SOURCE]} ({tags[Tag.TRANSFER]})" if Tag.SOURCE in tags else ""

    @property
    def tta_acc(self) -> Optional[float]:
        """The final test accuracy with test-time augmentation, for a run that used it."""
        return self.metric("test_acc") if self.param("tta") else None

    @property
    def targets(self) -> Dict[str, float]:
        return {k[len("target_acc_"):]: v for k, v in self.record.metrics.items() if k.startswith("target_acc_")}

    @property
    def target_avg(self) -> Optional[float]:
        return statistics.fmean(self.targets.values()) if self.targets else None

    @property
    def mflops(self) -> Optional[float]:
        flops = self.metric("flops")
        return None if flops is None else round(flops / 1e6, 2)


@dataclass
class Log:
    rows: List[Row]
    columns: List[cols.Column]
    table: Any  # pandas DataFrame: one row per run, in start order, a column per `columns`
    curves: Any  # ID, epoch, the CURVE_KEYS
    per_class: Any  # ID + one column per class
    sweeps: Any  # per sweep and configuration: mean ± std over seeds
    best: Optional[int] = None  # row index of the best run (by validation accuracy)
    groups: List[summary.Group] = field(default_factory=list)
    legend: Any = None  # CODE, WHAT: what each DATA SETS (D0, D1) and TEST SPLIT (T0, T1) code stands for

    def column(self, header: str) -> cols.Column:
        return next(c for c in self.columns if c.header == header)

    def short_columns(self) -> List[cols.Column]:
        """The columns of the log's compact views (`cnnlab runs`, a report's table): TARGET ACC AVG only when a
        run was evaluated on target sets."""
        shown = [c for c in self.columns if c.short]
        if self.table["TARGET ACC AVG"].isna().all():
            shown = [c for c in shown if c.header != "TARGET ACC AVG"]
        return shown


def _experiment_baselines(store: Store, records: Sequence[Record]) -> Dict[str, Record]:
    """experiment id -> its first single run (T0, or the lowest left), as the course's log compares with T0; looked
    up in the store, so that a filtered log still compares with the experiment's own baseline."""
    out = {}
    for exp_id in {r.experiment_id for r in records if not r.parent_run_id}:
        first = store.first_single_run(exp_id)
        if first is not None:
            out[exp_id] = first
    return out


def _sweep_objectives(store: Store, records: Sequence[Record]) -> Dict[str, tuple]:
    """parent run id -> (metric, direction, base config, confidence) of each sweep the records belong to."""
    out = {}
    for parent_id in {r.parent_run_id for r in records if r.parent_run_id}:
        parent = store.get(parent_id)
        base = {k[5:]: v for k, v in parent.params.items() if k.startswith("base.")}
        out[parent_id] = (parent.params.get("metric") or Metric.VAL_ACC, parent.params.get("direction") or "maximize",
                          base, float(parent.params.get("confidence") or summary.CONFIDENCE))
    return out


def reference(store: Store, record: Record) -> Tuple[str, Optional[Dict[str, Any]]]:
    """What the log compares `record` with, as (what it is, its params): a trial its sweep's base config, any
    other run its experiment's baseline (its first single run). None: the record is that baseline."""
    if record.parent_run_id:
        base = _sweep_objectives(store, [record])[record.parent_run_id][2]
        return f"sweep {record.sweep}'s base config", (None if not base or _same(base, record.params) else base)
    first = _experiment_baselines(store, [record]).get(record.experiment_id)
    if first is None or first.run_id == record.run_id:
        return f"{record.experiment}'s baseline", None
    return f"{record.experiment}'s baseline {first.id}", first.params


def differs(a: Dict[str, Any], b: Dict[str, Any]) -> List[str]:
    """The config keys whose values differ between two runs' params, bookkeeping (seed, names, sizes) aside."""
    keys = {k for k in set(a) | set(b) if not k.startswith(("split.", "tracking.")) and k not in BOOKKEEPING_KEYS}
    return sorted(k for k in keys if a.get(k) != b.get(k))


def build(store: Store, records: List[Record], baseline: Optional[Record] = None,
          ui_url: str = "http://127.0.0.1:5000", curves: bool = True) -> Log:
    """The log of `records` (oldest first); `curves=False` leaves the per-epoch curves out (one query per run)."""
    import pandas as pd

    from .schema import runs_dir

    if not records:
        raise CnnlabError(f"No runs match in {store.uri}: train some (`cnnlab train`) or widen the filters.")
    sweeps = _sweep_objectives(store, records)
    # one summary for the views: each sweep's groups by its own objective, the single runs' by val_acc
    groups: List[summary.Group] = []
    for parent_id, (metric, direction, _, confidence) in sweeps.items():
        groups += summary.groups([r for r in records if r.parent_run_id == parent_id], metric, direction, confidence)
    groups += summary.groups([r for r in records if not r.parent_run_id])
    group_of = summary.group_of(groups)

    rows = []
    against = _Against(records, group_of)
    firsts = _experiment_baselines(store, records) if baseline is None else {}
    root = runs_dir()
    for r in records:
        if baseline is not None:
            ref, is_base = baseline.params, baseline.run_id == r.run_id
        elif r.parent_run_id:  # a sweep's trial: its sweep's base config
            ref = sweeps[r.parent_run_id][2]
            is_base = not ref or _same(ref, r.params)
        else:  # a single run: the experiment's baseline, its first run (T0)
            first = firsts.get(r.experiment_id)
            ref, is_base = (first.params if first else None), first is None or first.run_id == r.run_id
        arch = "baseline" if is_base else (describe_changes(ref, r.params) or "no architecture change")
        training = "" if is_base else describe_changes(ref, r.params, TRAINING_KEYS)
        rows.append(Row(r, arch, training, group_of.get(r.id), ui_link(ui_url, r.experiment_id, r.run_id), root,
                        against(r, ref, is_base)))

    legend = _codes(rows)
    targets = sorted({t for row in rows for t in row.targets})
    columns = cols.expand(targets, rows)
    table = pd.DataFrame([[c.value(row) for c in columns] for row in rows], columns=[c.header for c in columns])
    scored = table["ACC VAL"].dropna()
    best = int(scored.astype(float).idxmax()) if len(scored) else None

    ids = [r.id for r in records]
    hist = store.histories([r.run_id for r in records], CURVE_KEYS) if curves else {}
    curve_rows = []
    for tid, r in zip(ids, records):
        h = hist.get(r.run_id, {})
        for step in sorted({s for values in h.values() for s in values}):
            curve_rows.append({"ID": tid, "epoch": step, **{k: h.get(k, {}).get(step) for k in CURVE_KEYS}})
    curves = pd.DataFrame(curve_rows, columns=["ID", "epoch", *CURVE_KEYS])

    classes: List[str] = []
    for r in records:
        for k in r.metrics:
            if k.startswith("test_acc_") and k[9:] not in classes:
                classes.append(k[9:])
    per_class = pd.DataFrame([{"ID": tid, **{c: r.metrics.get(f"test_acc_{c}") for c in classes}}
                              for tid, r in zip(ids, records)], columns=["ID", *classes])
    sweep_groups = [g for g in groups if g.sweep]
    return Log(rows, columns, table, curves, per_class, sweep_frame(sweep_groups), best, groups, legend)


def _codes(rows: List[Row]):
    """Each distinct training set a code D0, D1, ... and each test protocol T0, T1, ..., in the order the rows first
    use them, as the course's log writes DATA SETS and TEST SPLIT; the legend says what each is."""
    import pandas as pd

    seen: Dict[str, Dict[str, str]] = {"D": {}, "T": {}}
    for row in rows:
        for prefix, text in (("D", row.data_sets), ("T", row.test_split)):
            codes = seen[prefix]
            codes.setdefault(text, f"{prefix}{len(codes)}")
            row.codes[prefix] = codes[text]
    return pd.DataFrame([{"CODE": code, "WHAT": text} for prefix in "DT" for text, code in seen[prefix].items()],
                        columns=["CODE", "WHAT"])


class _Against:
    """VERDICT of each row: its configuration against the baseline's on test accuracy, where both have two seeds or
    more. The baseline's group is looked up once per scope and each pair of groups tested once (not once per row:
    the seeds of a configuration share their verdict)."""

    def __init__(self, records: Sequence[Record], group_of: Dict[str, summary.Group]):
        self.records, self.group_of = records, group_of
        self.bases: Dict[tuple, Optional[summary.Group]] = {}
        self.verdicts: Dict[tuple, str] = {}

    def __call__(self, record: Record, ref: Optional[Dict[str, Any]], is_base: bool) -> str:
        group = self.group_of.get(record.id)
        scope = (record.experiment_id, record.sweep, id(ref))
        if scope not in self.bases:
            self.bases[scope] = self._base_group(record, ref)
        base = self.bases[scope]
        if group is not None and group.n > 1 and (is_base or group is base):  # a seed of the baseline's configuration
            return "baseline"
        if group is None or base is None or min(len(group.tests), len(base.tests)) < 2:
            return ""
        pair = (id(group), id(base))
        if pair not in self.verdicts:
            seeds = (base.seeds, group.seeds) if len(base.tests) == base.n and len(group.tests) == group.n \
                else (None, None)
            self.verdicts[pair] = summary.verdict(base.tests, group.tests, *seeds).short()
        return self.verdicts[pair]

    def _base_group(self, record: Record, ref: Optional[Dict[str, Any]]) -> Optional[summary.Group]:
        """The group of a run of the records with the baseline's config `ref`, in `record`'s scope (its sweep, or the
        experiment's single runs)."""
        if ref is None:
            return None
        for other in self.records:
            if other.experiment_id == record.experiment_id and other.sweep == record.sweep and \
                    other.id in self.group_of and _same(ref, other.params):
                return self.group_of[other.id]
        return None


SWEEP_COLUMNS = ["SWEEP", "CONFIG", "OBJECTIVE", "SEEDS", "MEAN", "STD", "BEST", "VS BEST", "TEST MEAN", "TEST STD",
                 "TRIALS"]


def sweep_frame(groups: List[summary.Group]):
    """The Sweeps sheet: one row per sweep configuration, from summary.groups."""
    import pandas as pd

    return pd.DataFrame([{
        "SWEEP": g.sweep, "CONFIG": g.params or "(base)", "OBJECTIVE": g.metric, "SEEDS": g.n, "MEAN": g.mean,
        "STD": g.std, "BEST": g.best("minimize" if g.metric.endswith("loss") else "maximize"),
        "VS BEST": summary.standing(g),
        "TEST MEAN": g.test_mean, "TEST STD": g.test_std, "TRIALS": " ".join(g.ids),
    } for g in groups], columns=SWEEP_COLUMNS)


def sort_top(log: Log, sort: Optional[str] = None, top: Optional[int] = None, reverse: bool = False) -> Log:
    """Rows ordered by `sort` (accuracies best first, the rest ascending; start order by default), first `top`.
    IDs are the runs' own: ordering and cutting never renumber."""
    keys = cols.sort_keys()
    order = list(range(len(log.rows)))
    if sort:
        if sort not in keys:
            raise CnnlabError(f"--sort {sort}: valid keys are {', '.join(keys)}.")
        if keys[sort]:
            column = log.column(keys[sort])
            order = list(log.table[column.header].sort_values(ascending=not column.descending, na_position="last",
                                                              kind="stable").index)
    if reverse:
        order = order[::-1]
    if top is not None:
        if top < 1:
            raise CnnlabError("--top must be >= 1.")
        order = order[:top]
    keep = {log.rows[i].record.id for i in order}
    best = order.index(log.best) if log.best in order else None
    return Log([log.rows[i] for i in order], log.columns, log.table.iloc[order].reset_index(drop=True),
               log.curves[log.curves["ID"].isin(keep)].reset_index(drop=True),
               log.per_class[log.per_class["ID"].isin(keep)].reset_index(drop=True), log.sweeps, best, log.groups,
               log.legend)


def changed_columns(log: Log) -> List[str]:
    """ID plus the headers of the columns whose values differ between rows (what --only-changed shows)."""
    keep = ["ID"]
    for name in log.table.columns[1:]:
        if len({str(v) for v in log.table[name].tolist()}) > 1:
            keep.append(name)
    return keep


def _day(option: str, value: Optional[str], end: bool = False) -> Optional[int]:
    """--since/--until DATE as ms since the epoch; --until a day includes that day."""
    import datetime as dt

    if not value:
        return None
    try:
        day = dt.datetime.fromisoformat(value)
    except ValueError:
        raise CnnlabError(f"--{option} {value}: expected a date like 2026-11-24 (or 2026-11-24T15:00).") from None
    if end and len(value) <= 10:
        day += dt.timedelta(days=1)
    return int(day.timestamp() * 1000)


def select(experiment=None, sweep=None, status=None, since=None, until=None, arch=None, baseline=None, sort=None,
           top=None, ui_url=None, curves=True, announce=print) -> Log:
    """The log of the runs the filters choose (the options of `cnnlab runs` and export-log, and cnnlab.runs()):
    by default the latest run's experiment; a sweep named alone is found wherever it ran."""
    store = Store(create=False)
    experiments = experiment or (None if sweep else [store.latest_experiment()])
    records = store.runs(experiments, sweep=sweep,
                         states=[s.upper() for s in status or []], since=_day("since", since),
                         until=_day("until", until, end=True), archs=arch or [])
    base = None
    if baseline:
        base = store.find(baseline)
        announce(f"baseline: {base.experiment} {base.id} (run {base.run_id})")
    log = build(store, records, base, curves=curves, **({"ui_url": ui_url} if ui_url else {}))
    return sort_top(log, sort, top)
