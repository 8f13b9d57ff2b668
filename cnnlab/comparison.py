"""`cnnlab compare T0 T3 T5` or `cnnlab compare 'dropout=0' 'dropout=0.5'`: runs or whole configurations side by
side: only what differs between them, their final scores and curves (sparklines in the terminal, overlaid on a page
with --html), each configuration's test accuracy over its seeds, and the verdict of each against the first
(summary.verdict: is the difference real?).

A side is a run (log ID, name or run-ID prefix: the run is shown, its configuration's seeds are counted) or a
configuration named by its values (`'dropout=0.5 lr=0.01'`): the FINISHED runs whose config has them. Values that
match several configurations are narrowed to those that differ from the other sides only in the keys given;
if that leaves more than one, the command names them and asks for more keys (or --sweep).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from . import summary
from .errors import CnnlabError
from .record import Metric, Record, Store, parse_value

METRICS = Metric.HEADLINE
SPARK_KEYS = (Metric.VAL_ACC, Metric.TRAIN_LOSS)
BARS = "▁▂▃▄▅▆▇█"


@dataclass
class Side:
    """One side of a comparison: the run shown, and its configuration's FINISHED runs (one per seed, latest)."""

    label: str
    record: Record
    runs: List[Record] = field(default_factory=list)

    @property
    def tests(self) -> List[float]:
        return [r.metrics[Metric.TEST_ACC] for r in self.runs]

    @property
    def seeds(self) -> List:
        return [r.params.get("seed") for r in self.runs]


@dataclass
class Comparison:
    sides: List[Side]
    changed: List[str]  # config keys whose values differ between the runs
    histories: Dict[str, Dict[str, Dict[int, float]]]  # run id -> metric -> {epoch: value}
    verdicts: List[summary.Verdict] = field(default_factory=list)  # each side after the first against the first

    @property
    def records(self) -> List[Record]:
        return [s.record for s in self.sides]

    @property
    def labels(self) -> List[str]:
        return [s.label if "=" in s.label else r.id if r.experiment == "cifar10" else f"{r.experiment}:{r.id}"
                for s, r in zip(self.sides, self.records)]


def gather(store: Store, refs: Sequence[str], experiments: Optional[List[str]] = None, sweep: Optional[str] = None,
           confidence: float = summary.CONFIDENCE) -> Comparison:
    from .log import differs

    if len(refs) < 2:
        raise CnnlabError(f"compare needs two runs or configurations or more (got {len(refs)}): cnnlab compare T0 T3, "
                          "or cnnlab compare 'dropout=0' 'dropout=0.5'.")
    runs = {ref: store.find(ref, experiments) for ref in refs if "=" not in ref}
    scope = experiments or sorted({r.experiment for r in runs.values()}) or [store.latest_experiment()]
    pool = [r for r in store.runs(scope, sweep=sweep) if r.state == "FINISHED"]
    sides = _sides(refs, runs, pool)
    seen: Dict[str, str] = {}
    for ref, side in zip(refs, sides):  # a run once; a configuration named by values once
        key = side.record.run_id if ref in runs else side.record.config_key
        if key in seen:
            what = f"run {side.record.id}" if ref in runs else "the same configuration"
            raise CnnlabError(f"{ref!r} names {what} a second time ({seen[key]!r} did): give each once.")
        seen[key] = ref
    records = [s.record for s in sides]
    changed = sorted({k for r in records[1:] for k in differs(records[0].params, r.params)})
    histories = store.histories([r.run_id for r in records], [Metric.VAL_ACC, Metric.TRAIN_LOSS, Metric.VAL_LOSS,
                                                               Metric.TRAIN_ACC])
    first = sides[0]
    verdicts = [summary.verdict(first.tests, s.tests, first.seeds, s.seeds, confidence, _name(first), _name(s))
                for s in sides[1:]]
    return Comparison(sides, changed, histories, verdicts)


def _name(side: Side) -> str:
    return side.label if "=" in side.label else f"{side.label}'s configuration"


def _seeds_of(record: Record, pool: Sequence[Record]) -> List[Record]:
    """The FINISHED runs of `record`'s configuration in its experiment, the latest one per seed."""
    latest: Dict = {}
    for r in pool:
        if r.experiment_id == record.experiment_id and r.config_key == record.config_key and \
                Metric.TEST_ACC in r.metrics:
            latest[r.params.get("seed")] = r
    return list(latest.values())


def _sides(refs: Sequence[str], runs: Dict[str, Record], pool: Sequence[Record]) -> List[Side]:
    """Each ref as a Side: a run as itself, values as the one configuration they name (see the module's words)."""
    from .log import differs

    wanted = {ref: _wanted(ref, pool) for ref in refs if ref not in runs}
    candidates: Dict[str, Dict[str, List[Record]]] = {}  # ref -> config key -> its runs
    for ref in refs:
        if ref in runs:
            candidates[ref] = {runs[ref].config_key: [runs[ref]]}
        else:
            candidates[ref] = {}
            for r in _matching(ref, wanted[ref], pool):
                candidates[ref].setdefault(r.config_key, []).append(r)
    keys = {k for values in wanted.values() for k in values}
    anchors = [next(iter(c.values()))[-1] for c in candidates.values() if len(c) == 1]
    for ref, found in candidates.items():
        if len(found) > 1 and anchors:  # keep what differs from an unambiguous side only in the keys given
            narrowed = {k: v for k, v in found.items() if set(differs(anchors[0].params, v[-1].params)) <= keys}
            candidates[ref] = narrowed or found
    ambiguous = [ref for ref, found in candidates.items() if len(found) > 1]
    if len(refs) == 2 and len(ambiguous) == 2:  # two sets of values: the one pair that differs only in them
        a, b = refs
        pairs = [(ka, kb) for ka, va in candidates[a].items() for kb, vb in candidates[b].items()
                 if set(differs(va[-1].params, vb[-1].params)) <= keys]
        if len(pairs) == 1:
            candidates[a] = {pairs[0][0]: candidates[a][pairs[0][0]]}
            candidates[b] = {pairs[0][1]: candidates[b][pairs[0][1]]}
            ambiguous = []
    for ref in ambiguous:
        raise CnnlabError(_ambiguous(ref, candidates[ref]))
    sides = []
    for ref in refs:
        if ref in runs:
            sides.append(Side(ref, runs[ref], _seeds_of(runs[ref], pool)))
        else:
            found = next(iter(candidates[ref].values()))
            sides.append(Side(ref, found[-1], _seeds_of(found[-1], pool)))
    return sides


def _wanted(ref: str, pool: Sequence[Record]) -> Dict[str, object]:
    """'dropout=0.5 arch=vgg_small' -> {'dropout': 0.5, 'arch.name': 'vgg_small'}, each key one that runs have."""
    known = {k for r in pool for k in r.params}
    wanted = {}
    for part in ref.split():
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise CnnlabError(f"{ref!r}: a configuration is given as key=value pairs ('dropout=0.5 lr=0.01'); "
                              f"{part!r} is not one.")
        if key not in known and f"{key}.name" in known:
            key = f"{key}.name"
        if key not in known:
            near = ", ".join(sorted(k for k in known if key.split(".")[-1] in k)[:8]) or "see `cnnlab describe`"
            raise CnnlabError(f"{ref!r}: no FINISHED run here has the config key {key!r} (similar: {near}).")
        wanted[key] = parse_value(value)
    return wanted


def _matching(ref: str, wanted: Dict[str, object], pool: Sequence[Record]) -> List[Record]:
    found = [r for r in pool if all(_equal(r.params.get(k), v) for k, v in wanted.items())]
    if not found:
        raise CnnlabError(f"No FINISHED run has {ref} (among {len(pool)} in scope): train it first, or check the "
                          "values with `cnnlab runs`.")
    return found


def _equal(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return str(a) == str(b)


def _ambiguous(ref: str, found: Dict[str, List[Record]]) -> str:
    from .log import differs

    firsts = [runs[-1] for runs in found.values()]
    keys = sorted({k for r in firsts[1:] for k in differs(firsts[0].params, r.params)})
    listed = "; ".join(f"{r.id} ({' '.join(f'{k}={r.params.get(k)}' for k in keys)})" for r in firsts[:6])
    more = f" and {len(firsts) - 6} more" if len(firsts) > 6 else ""
    return (f"{ref!r} matches {len(found)} configurations: {listed}{more}. Add the keys that tell them apart "
            f"(e.g. '{ref} {keys[0]}=...'), or narrow with --sweep NAME or --experiment.")


def sparkline(series: Dict[int, float], low: float, high: float) -> str:
    """One character per epoch on a shared scale (low..high), so that sparklines of several runs compare."""
    if not series:
        return ""
    span = (high - low) or 1.0
    out = []
    for step in sorted(series):
        value = series[step]
        out.append("·" if value != value else BARS[min(len(BARS) - 1, max(0, int((value - low) / span * len(BARS))))])
    return "".join(out)


def rows(c: Comparison) -> Dict[str, List[List[str]]]:
    """The tables of a comparison as text: 'changed' (config keys that differ), 'metrics', 'curves'."""
    from .pages import metric

    changed = [[k, *[_text(r.params.get(k)) for r in c.records]] for k in c.changed]
    metrics = [[k, *[metric(k, r.metrics.get(k)) for r in c.records]] for k in METRICS
               if any(r.metrics.get(k) is not None for r in c.records)]
    metrics.insert(0, ["state", *[r.state for r in c.records]])
    curves = []
    for key in SPARK_KEYS:
        values = [v for r in c.records for v in c.histories[r.run_id].get(key, {}).values() if not math.isnan(v)]
        if values:
            low, high = min(values), max(values)
            curves.append([f"{key} ({low:.3g}..{high:.3g})",
                           *[sparkline(c.histories[r.run_id].get(key, {}), low, high) for r in c.records]])
    seeds = [["seeds", *[str(len(side.runs)) for side in c.sides]],
             ["test_acc over seeds", *[summary.mean_std(*_mean_std(side.tests)) for side in c.sides]],
             ["runs counted", *[" ".join(r.id.rsplit("/", 1)[-1] for r in side.runs) for side in c.sides]]]
    return {"changed": changed, "metrics": metrics, "curves": curves, "seeds": seeds}


def _mean_std(values: List[float]):
    import statistics

    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def verdict_lines(c: Comparison) -> List[str]:
    """Each side after the first against the first, in words (on the test accuracy of their configurations)."""
    return [v.words() for v in c.verdicts]


def _text(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return "" if value is None else str(value)


def print_terminal(c: Comparison) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    tables = rows(c)
    for title, key in (("what differs", "changed"), ("scores", "metrics"), ("curves, per epoch", "curves"),
                       ("each configuration over its seeds", "seeds")):
        if not tables[key]:
            if key == "changed":
                console.print("The runs have the same config (seed and names aside).")
            continue
        out = Table(title=title, title_justify="left")
        out.add_column("")
        for label in c.labels:
            out.add_column(label, justify="right" if key == "metrics" else "left", no_wrap=key == "curves")
        for row in tables[key]:
            out.add_row(*row)
        console.print(out)
    for line in verdict_lines(c):
        console.print(f"verdict (test accuracy): {line}", highlight=False)


def page(c: Comparison) -> str:
    from . import figures, pages

    tables = rows(c)
    header = ["", *c.labels]
    curves = {label: c.histories[r.run_id] for label, r in zip(c.labels, c.records)}
    sections = [
        pages.section("What differs", pages.table(header, tables["changed"]) if tables["changed"]
                      else pages.paragraph("The runs have the same config (seed and names aside).")),
        pages.section("Scores", pages.table(header, tables["metrics"], numeric=range(1, len(header)))),
        pages.section("Curves", pages.image(figures.embed(figures.overlaid_curves(
            curves, (Metric.VAL_ACC, Metric.VAL_LOSS, Metric.TRAIN_LOSS, Metric.TRAIN_ACC))), "overlaid curves")
            if any(h for h in c.histories.values()) else pages.missing("No run recorded an epoch.")),
        pages.section("Over seeds", pages.table(header, tables["seeds"]) +
                      "".join(pages.paragraph(f"Verdict (test accuracy): {line}") for line in verdict_lines(c))),
    ]
    return pages.page(f"Compare {' · '.join(c.labels)}", f"{len(c.records)} runs", sections)


def default_name(c: Comparison) -> str:
    from .schema import safe_name

    return safe_name("compare-" + "-".join(label.replace("/", "-").replace(":", "-") for label in c.labels)) + ".html"
