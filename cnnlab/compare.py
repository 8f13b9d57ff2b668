"""`cnnlab compare T0 T3 T5`: runs side by side, only what differs between them, their final scores and their
curves (sparklines in the terminal, overlaid on a page with --html)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from .errors import CnnlabError
from .record import Metric, Record, Store

METRICS = Metric.HEADLINE
SPARK_KEYS = (Metric.VAL_ACC, Metric.TRAIN_LOSS)
BARS = "▁▂▃▄▅▆▇█"


@dataclass
class Comparison:
    records: List[Record]
    changed: List[str]  # config keys whose values differ between the runs
    histories: Dict[str, Dict[str, Dict[int, float]]]  # run id -> metric -> {epoch: value}

    @property
    def labels(self) -> List[str]:
        return [r.id if r.experiment == "cifar10" else f"{r.experiment}:{r.id}" for r in self.records]


def gather(store: Store, refs: Sequence[str], experiments: Optional[List[str]] = None) -> Comparison:
    from .log import differs

    if len(refs) < 2:
        raise CnnlabError(f"compare needs two runs or more (got {len(refs)}): cnnlab compare T0 T3 [T5 ...].")
    records = [store.find(ref, experiments) for ref in refs]
    seen = set()
    for ref, r in zip(refs, records):
        if r.run_id in seen:
            raise CnnlabError(f"{ref!r} names run {r.id} a second time: give each run once.")
        seen.add(r.run_id)
    changed = sorted({k for r in records[1:] for k in differs(records[0].params, r.params)})
    histories = store.histories([r.run_id for r in records], [Metric.VAL_ACC, Metric.TRAIN_LOSS, Metric.VAL_LOSS, Metric.TRAIN_ACC])
    return Comparison(records, changed, histories)


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
    return {"changed": changed, "metrics": metrics, "curves": curves}


def _text(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return "" if value is None else str(value)


def print_terminal(c: Comparison) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    tables = rows(c)
    for title, key in (("what differs", "changed"), ("scores", "metrics"), ("curves, per epoch", "curves")):
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
    ]
    return pages.page(f"Compare {' · '.join(c.labels)}", f"{len(c.records)} runs", sections)


def default_name(c: Comparison) -> str:
    from .schema import safe_name

    return safe_name("compare-" + "-".join(label.replace("/", "-").replace(":", "-") for label in c.labels)) + ".html"
