"""What a sweep shows: a live table of its trials on a terminal (one line per finished trial otherwise),
the trial list of a dry run, and the summary at the end (from summary.groups, as every view)."""

from __future__ import annotations

import sys
import time
from typing import Any, Dict, List, Optional

from ..summary import mean_std, standing
from .spec import Outcome, Spec, Trial


def _fmt(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.4f}"


def _params(trial: Trial) -> str:
    return " ".join(f"{k}={v}" for k, v in trial.params.items())


class Display:
    def __init__(self, name: str, spec: Spec, quiet: bool = False):
        self.name, self.spec, self.quiet = name, spec, quiet
        self.trials: Dict[str, Trial] = {}
        self.outcomes: Dict[str, Outcome] = {}
        self.running: Dict[str, Dict[str, Any]] = {}
        self.live = None

    def start(self) -> None:
        if self.quiet or not sys.stderr.isatty():
            return
        from rich.console import Console
        from rich.live import Live

        self.live = Live(self._table(), console=Console(stderr=True), refresh_per_second=2, transient=False)
        self.live.start()

    def stop(self) -> None:
        if self.live is not None:
            self.live.update(self._table())
            self.live.stop()
            self.live = None

    def refresh(self) -> None:
        if self.live is not None:
            self.live.update(self._table())

    def trial_started(self, trial: Trial) -> None:
        self.trials[trial.id] = trial

    def on_progress(self, message) -> None:
        kind, tid = message[0], message[1]
        if kind == "start":
            self.running[tid] = {"start": time.perf_counter(), "epoch": 0}
        elif kind == "epoch" and tid in self.running:
            self.running[tid].update(epoch=message[2], value=message[3])
        self.refresh()

    def trial_ended(self, trial: Trial, outcome: Outcome) -> None:
        self.outcomes[trial.id] = outcome
        self.running.pop(trial.id, None)
        if self.live is None:
            extra = f" ({outcome.reason})" if outcome.reason else ""
            print(f"{trial.id} {outcome.state} {_params(trial)} {self.spec.metric}={_fmt(outcome.value)} "
                  f"test_acc={_fmt(outcome.test_acc)} {outcome.seconds:.0f}s{extra}", flush=True)

    def _best(self) -> Optional[Outcome]:
        scored = [o for o in self.outcomes.values() if o.state == "FINISHED" and o.value is not None]
        if not scored:
            return None
        pick = max if self.spec.direction == "maximize" else min
        return pick(scored, key=lambda o: o.value)

    def _table(self):
        from rich.table import Table

        table = Table(title=f"sweep {self.name} ({self.spec.strategy}, {self.spec.metric})", expand=False)
        for col in ("trial", "state", "params", "epoch", self.spec.metric, "test_acc", "time"):
            table.add_column(col, justify="right" if col not in ("params", "state", "trial") else "left")
        best = self._best()
        for tid, trial in self.trials.items():
            out, live = self.outcomes.get(tid), self.running.get(tid)
            if out is not None:
                table.add_row(tid, out.state + (" *" if best is out else ""), _params(trial), str(len(out.history)),
                              _fmt(out.value), _fmt(out.test_acc), f"{out.seconds:.0f}s")
            elif live is not None:
                table.add_row(tid, "RUNNING", _params(trial), str(live.get("epoch", 0)), _fmt(live.get("value")), "",
                              f"{time.perf_counter() - live['start']:.0f}s")
        if best is not None:
            table.caption = f"best so far: {best.trial_id} {self.spec.metric}={best.value:.4f}"
        return table


def print_plan(name: str, spec: Spec, trials: List[Trial], describe: str) -> None:
    print(f"sweep {name} ({spec.strategy}): {len(trials) or 'the strategy chooses'} trial(s)")
    for t in trials:
        print(f"  {t.id:>4}  {' '.join(t.overrides)}")
    if describe:
        print(f"  {describe}")


def print_summary(spec: Spec, result) -> None:
    """The end of a sweep: what ran, then per configuration the objective and test accuracy over seeds."""
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    if not console.is_terminal:  # piped: no wrapping at 80 columns, a run ID stays whole on its line
        console = Console(highlight=False, soft_wrap=True, width=1000)
    for note in result.notes:
        console.print(f"note: {note}", markup=False)
    if result.ran == 0:
        console.print(f"sweep {result.name}: {result.nothing_to_run}", markup=False)
    else:
        console.print(f"sweep {result.name}: ran {result.ran} trial(s), skipped {result.skipped} already FINISHED",
                      markup=False)
    repeats = any(g.n > 1 for g in result.groups)
    title = f"{result.name}: per configuration" + (", mean ± std over seeds" if repeats else "")
    judged = any(g.standing for g in result.groups)
    table = Table(title=f"{title} ({spec.metric} chooses)")
    for col in ("#", "params", "seeds", spec.metric, "test_acc", *(["vs best"] if judged else []), "trials"):
        table.add_column(col)
    for i, g in enumerate(result.groups, 1):
        table.add_row(str(i), g.params or "(base)", str(g.n), mean_std(g.mean, g.std),
                      mean_std(g.test_mean, g.test_std), *([standing(g)] if judged else []), " ".join(g.ids))
    console.print(table)
    if judged:
        tied = [g.params or "(base)" for g in result.groups if g.standing == "tied"]
        console.print(f"tied with the best at {spec.confidence:.0%} (not separated by {spec.metric} over their "
                      f"seeds): {', '.join(tied) if tied else 'none'}", markup=False)
    pruned = sum(r.state == "PRUNED" for r in result.records)
    if pruned:
        console.print(f"{pruned} trial(s) pruned")
    for r in result.records:
        if r.state in ("FAILED", "KILLED"):
            console.print(f"{r.id} {r.state}: {r.reason or '-'}", markup=False)
    if result.groups:
        best = result.groups[0]
        test = "" if best.test_mean is None else f", test_acc {mean_std(best.test_mean, best.test_std)}"
        console.print(f"best: {' '.join(best.ids)} ({best.params or 'base'}) {spec.metric} "
                      f"{mean_std(best.mean, best.std)}{test}; parent run {result.parent_run_id}", markup=False)
