"""Sweep strategies: how a sweep chooses its trials.

A new strategy is one class in one module of this package, decorated with `@register("name")`;
`--strategy name` and `strategy: name` in a sweep file then find it. Two kinds:

- `PlanAhead` lists its configurations ahead: it writes `points()` only (grid, random, list).
- `Adaptive` chooses as it goes: `ask()` and `tell()` (Optuna), with optional state shared by
  workers on other machines (`Shared`: Optuna's study) and optional pruning (`judge()`).

Everything else (the parent run, resume, workers, the summary) is the runner's and the same for all.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional

from ...errors import CnnlabError
from ...config import identity
from ..spec import Outcome, Spec, Trial, base_seed, merged, override_key, parse, resolved, short

_STRATEGIES: Dict[str, type] = {}
HUGE = 1000  # more trials than this: say so before checking them all


def register(name: str) -> Callable[[type], type]:
    def decorate(cls: type) -> type:
        cls.name = name
        _STRATEGIES[name] = cls
        return cls

    return decorate


def strategies() -> Dict[str, type]:
    """Every strategy: importing each module of this package registers its class (all of them, even when one
    was imported directly before, as `--join` imports optuna_search)."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")  # once each: Python caches modules
    return dict(sorted(_STRATEGIES.items()))


def get_strategy(name: str) -> type:
    found = strategies()
    if name not in found:
        raise CnnlabError(f"Unknown sweep strategy {name!r}; valid: {', '.join(found)}.")
    return found[name]


@dataclass
class Context:
    """What a running sweep tells its strategy."""

    name: str  # the sweep's name
    storage: str  # where a strategy keeps its own state (Optuna's study), a file or a database URL
    join: bool  # this process joins a sweep another one started
    done: Dict[str, object]  # trial key -> the FINISHED or PRUNED run of that config, not to be run again
    stopping: Callable[[], bool]  # a signal came: start nothing new
    abandoned: Callable[[str], None] = lambda trial_id: None  # a trial whose worker died: end its run if RUNNING


WAIT = Trial("(wait)", [], {})  # yielded by trials(): nothing to start now, ask again in a moment


class Shared:
    """What an adaptive strategy keeps where every worker of a sweep sees it (Optuna's study, in a file or a
    database): opened before the sweep records anything, and the sweep's parent run named there."""

    def prepare(self, name: str, storage: str, join: bool) -> None:
        """Open (or create) the shared state of sweep `name` in `storage`; join: another process started it."""
        raise NotImplementedError

    def parent(self) -> Optional[str]:
        """The sweep's parent run as the shared state names it, or None: the runner then looks in the record."""
        raise NotImplementedError

    def set_parent(self, run_id: str) -> None:
        """Name the parent run where other workers will look."""
        raise NotImplementedError

    def running_elsewhere(self) -> int:
        """Trials other processes (workers that joined) are running now."""
        raise NotImplementedError


class Strategy:
    """What the runner asks of every strategy; subclass PlanAhead or Adaptive."""

    name = ""
    prunes = False  # takes --pruner
    takes_repeats = True  # takes --repeats
    shared: Optional[Shared] = None  # state that workers on other machines see (an adaptive strategy's)

    def __init__(self, spec: Spec):
        self.spec = spec

    def check(self) -> None:
        """Refuse a spec this strategy cannot run; called before anything runs."""
        if not self.spec.space:
            raise CnnlabError("Nothing to sweep: give at least one override with sweep syntax "
                              "(lr=0.1,0.01 or dropout=interval(0,0.5)) or sweep=NAME (see conf/sweep/).")
        if (self.spec.repeats > 1 or self.spec.max_repeats) and not self.takes_repeats:
            raise CnnlabError(f"--repeats applies to grid, random and list sweeps; a {self.name} trial is one run.")

    def check_objective(self, cfg, label: str) -> None:
        """Refuse a trial whose objective cannot be computed: a validation metric needs a validation split."""
        if self.spec.metric.startswith("val_") and not cfg.val_split:
            raise CnnlabError(f"{label} has val_split=0 (recipe=fast94 sets it so): it holds out no validation "
                              f"images, so the sweep's objective {self.spec.metric} cannot be computed and would "
                              "rank its trials on nothing. Add val_split=0.1 to the sweep's overrides.")

    def plan(self) -> List[Trial]:
        """The trials known ahead of time, each config checked (a bad one raises CnnlabError naming it)."""
        raise NotImplementedError

    def trials(self, ctx: Context, planned: List[Trial]) -> Iterator[Trial]:
        """The trials to run now, one at a time (WAIT: nothing to start now, ask again in a moment)."""
        raise NotImplementedError

    def tell(self, trial: Trial, outcome: Outcome) -> None:
        """A trial ended."""

    def judge(self, trial: Trial, ctx_name: str, storage: str) -> Optional[Callable[[int, float], bool]]:
        """In the process that trains `trial`: a function of (epoch, objective) that says whether to stop it
        early, or None when this strategy never prunes."""
        return None

    def describe(self) -> str:
        """A line for --dry-run about what is not in the trial list."""
        return ""

    def nothing_to_run(self, skipped: int) -> str:
        return f"nothing to run, {skipped} trial(s) already FINISHED (--force runs them again)"


class PlanAhead(Strategy):
    """A strategy that lists its configurations ahead: `points()` is all it writes."""

    def points(self) -> List[Dict[str, str]]:
        """The configurations to run, as swept key -> value (an empty value: a bare override)."""
        raise NotImplementedError

    def plan(self) -> List[Trial]:
        """Every trial ahead of time (each point once per seed), each config checked: a bad one raises
        CnnlabError naming the trial."""
        seed0 = base_seed(self.spec) if self.spec.repeats > 1 else None
        fixed = {override_key(o) for o in self.spec.cli_overrides}  # the command line's values win
        trials = []
        for point in self.points():
            for r in range(self.spec.repeats):
                extra = [f"seed={seed0 + r}"] if seed0 is not None else []
                overrides = merged([*self.spec.overrides, *(f"{k}={v}" if v != "" else k for k, v in point.items()),
                                    *self.spec.cli_overrides, *extra])
                params = {**{k: short(v) for k, v in point.items() if k not in fixed},
                          **({"seed": str(seed0 + r)} if extra else {})}
                trials.append(Trial(f"T{len(trials)}", overrides, params))
        if len(trials) > HUGE:
            print(f"note: {len(trials):,} trials; checking every config first takes a few ms each "
                  f"(~{len(trials) * 0.007:.0f} s)", file=sys.stderr, flush=True)
        for trial in trials:
            label = f"Trial {trial.id}" + (f" ({' '.join(f'{k}={v}' for k, v in trial.params.items())})"
                                           if trial.params else "")
            try:
                cfg = resolved(trial.overrides)
            except CnnlabError as exc:
                raise CnnlabError(f"{label} is not a valid config: {exc}") from None
            self.check_objective(cfg, label)
            trial.key, trial.group = identity(cfg)
        return trials

    def trials(self, ctx: Context, planned: List[Trial]) -> Iterator[Trial]:
        """The planned trials not done yet."""
        return (t for t in planned if t.key not in ctx.done)


class Adaptive(Strategy):
    """A strategy that chooses each trial from the results so far: `ask()` the next one, `tell()` it how one ended.
    Its `plan()` checks the search space and lists nothing."""

    def start(self, ctx: Context) -> None:
        """Before the first ask (e.g. fail what a crash of this sweep left running)."""

    def ask(self, ctx: Context) -> Optional[Trial]:
        """The next trial to run, WAIT (nothing to start now, ask again in a moment) or None (the sweep is done)."""
        raise NotImplementedError

    def tell(self, trial: Trial, outcome: Outcome) -> None:
        raise NotImplementedError

    def trials(self, ctx: Context, planned: List[Trial]) -> Iterator[Trial]:
        self.start(ctx)
        while not ctx.stopping():
            trial = self.ask(ctx)
            if trial is None:
                return
            yield trial


def check(spec: Spec) -> None:
    """Refuse a spec that cannot run, before anything runs; its strategy checks what is its own."""
    from ...summary import OBJECTIVES

    strategy = get_strategy(spec.strategy)  # refuses an unknown one, naming the valid ones
    if spec.direction not in ("maximize", "minimize"):
        raise CnnlabError(f"Unknown direction {spec.direction!r}; valid: maximize, minimize.")
    if spec.metric not in OBJECTIVES:
        raise CnnlabError(f"metric={spec.metric}: the objective must be a validation metric ({', '.join(OBJECTIVES)}); "
                          "the test set is never used to choose.")
    if spec.repeats < 1 or (spec.trials is not None and spec.trials < 1):
        raise CnnlabError("--repeats and --trials must be >= 1.")
    if spec.max_repeats is not None and (spec.repeats < 2 or spec.max_repeats < spec.repeats):
        raise CnnlabError(f"--max-repeats {spec.max_repeats} with {spec.repeats} seeds to start: repeats auto starts "
                          "with 2 seeds or more and adds up to --max-repeats (>= the start).")
    if not 0.5 <= spec.confidence < 1:
        raise CnnlabError(f"--confidence {spec.confidence}: give a level between 0.5 and 1 (0.95: 95%).")
    if spec.pruner != "none" and not strategy.prunes:
        raise CnnlabError(f"--pruner {spec.pruner} needs --strategy optuna (pruning is Optuna's).")
    fixed = {o.get_key_element() for o in parse(spec.fixed)}
    for override in parse(spec.space):
        if override.get_key_element() in fixed:
            raise CnnlabError(f"{override.get_key_element()} is both fixed and swept; give it once.")
        if override.is_discrete_sweep() and not list(override.sweep_string_iterator()):
            raise CnnlabError(f"{override.input_line}: the sweep has no values.")
        if not override.is_discrete_sweep():
            interval = override.value()
            if not interval.start < interval.end:
                raise CnnlabError(f"{override.input_line}: an interval needs low < high "
                                  f"(got {interval.start}, {interval.end}).")
            if "log" in interval.tags and interval.start <= 0:
                raise CnnlabError(f"{override.input_line}: a log interval needs low > 0 (got {interval.start}); "
                                  f"use e.g. tag(log,interval(1e-5,{interval.end})).")
    strategy(spec).check()
