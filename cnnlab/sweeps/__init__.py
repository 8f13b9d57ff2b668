"""Sweeps: many trainings of one base config, recorded as one MLflow parent run with a child per trial.

- spec.py: what a sweep is (Spec, Trial, Outcome) and how `cnnlab sweep ARGS` reads into one;
- strategies/: how trials are chosen (grid, random, list, optuna; a new one is one class in one file);
- runner.py: the trial pool (this process or N workers) and signals;
- parent.py: the parent run, what a resume finds in its children, the summary written onto it;
- trial.py: one trial's training, in this process or a worker;
- display.py: the live table, the dry-run list and the final summary on the terminal.
"""

from __future__ import annotations

from typing import Any, List

from .runner import Sweep, SweepResult
from .spec import Spec, Trial, read_spec


def load_spec(args: List[str], **options: Any) -> Spec:
    """The checked spec of `cnnlab sweep ARGS --options` (see spec.read_spec); a bad one raises CnnlabError."""
    from .strategies import check

    spec = read_spec(args, **options)
    check(spec)
    return spec


def expand(spec: Spec) -> List[Trial]:
    """The trials of a spec whose strategy plans ahead, every config checked."""
    from .strategies import get_strategy

    return get_strategy(spec.strategy)(spec).plan()
