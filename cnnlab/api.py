"""cnnlab from Python, with the command line's meaning: for notebooks (Jupyter, Colab) and scripts.

    import cnnlab
    run = cnnlab.train("arch=vgg_small", "dropout=0.5")  # a Result: run.id, run.metrics, run.run_dir, run.history
    cnnlab.sweep("lr=0.01,0.001", "dropout=0,0.5", workers=2)
    cnnlab.runs()                                         # the training log, a pandas DataFrame
    cnnlab.report(run)                                    # the run's page, shown inline in a notebook
    cnnlab.compare("dropout=0", "dropout=0.5")            # is it really better? the verdict over seeds
    cnnlab.reproduce(run)                                 # run it again: identical, or what differs

Arguments are the command line's overrides, one per string or several in one string ("arch=vgg_small
dropout=0.5"). A bad one raises CnnlabError with the paragraph the command prints. Stopping a cell (the
notebook's interrupt) ends the run KILLED, as Ctrl-C does, and raises KeyboardInterrupt; `cnnlab.train("resume=T3")`
continues it.
"""

from __future__ import annotations

import html
import shlex
from pathlib import Path
from typing import List, Optional, Sequence, Union

from .errors import Interrupted, signals_unwrapped


def _overrides(args: Sequence[str]) -> List[str]:
    return [part for arg in args for part in shlex.split(str(arg))]


def _listed(value: Union[None, str, Sequence[str]]) -> Optional[List[str]]:
    return [value] if isinstance(value, str) else list(value) if value else None


def _interruptible(fn):
    try:
        with signals_unwrapped():
            return fn()
    except Interrupted as exc:  # recorded KILLED; in a notebook an interrupt is a KeyboardInterrupt
        raise KeyboardInterrupt(f"{exc}: the run is recorded KILLED; cnnlab.train('resume=<its ID>') continues "
                                "it") from None


def train(*overrides: str, quiet: bool = False):
    """Train one model, as `cnnlab train OVERRIDES` does; returns its Result (id, run_id, run_dir, status, metrics,
    history, experiment). quiet: no progress (the run's log file still gets it)."""
    from .training import from_overrides

    return _interruptible(lambda: from_overrides(_overrides(overrides), quiet=quiet))


def sweep(*overrides: str, strategy: Optional[str] = None, trials: Optional[int] = None,
          repeats: Union[None, int, str] = None, max_repeats: Optional[int] = None, confidence: Optional[float] = None,
          workers: int = 1, sampler: Optional[str] = None, pruner: Optional[str] = None,
          metric: Optional[str] = None, direction: Optional[str] = None, sampler_seed: Optional[int] = None,
          name: Optional[str] = None, storage: Optional[str] = None, force: bool = False, quiet: bool = True):
    """Run a sweep, as `cnnlab sweep OVERRIDES --options` does (the same keywords; repeats="auto"); prints its
    summary and returns its SweepResult (name, outcomes, records, groups: the configurations, best first)."""
    from .sweeps import Sweep, load_spec
    from .sweeps.display import print_summary
    from .sweeps.repeats import parse_repeats

    repeats, max_repeats = parse_repeats(repeats, max_repeats)
    spec = load_spec(_overrides(overrides), strategy=strategy, trials=trials, repeats=repeats, sampler=sampler,
                     max_repeats=max_repeats, confidence=confidence, pruner=pruner, metric=metric,
                     direction=direction, seed=sampler_seed, name=name)
    result = _interruptible(Sweep(spec, workers=workers, storage=storage, force=force, quiet=quiet).run)
    print_summary(spec, result)
    return result


def runs(experiment: Union[None, str, Sequence[str]] = None, sweep: Optional[str] = None,
         status: Union[None, str, Sequence[str]] = None, arch: Union[None, str, Sequence[str]] = None,
         since: Optional[str] = None, until: Optional[str] = None, baseline: Optional[str] = None,
         sort: Optional[str] = None, top: Optional[int] = None):
    """The training log as a pandas DataFrame, one row per run, with the filters of `cnnlab runs` (by default the
    latest run's experiment)."""
    from .log import select

    return select(_listed(experiment), sweep, _listed(status), since, until, _listed(arch), baseline, sort, top,
                  curves=False).table


class Page:
    """A written HTML page (cnnlab report): shown inline in a notebook, in a frame of its own, since the MLflow UI
    cannot be reached from Colab. `path` is the file."""

    def __init__(self, path: Path, title: str):
        self.path, self.title = Path(path), title

    def _repr_html_(self) -> str:
        page = html.escape(self.path.read_text(), quote=True)
        return (f'<iframe srcdoc="{page}" title="{html.escape(self.title)}" '
                'style="width: 100%; height: 900px; border: 1px solid #ddd"></iframe>')

    def __repr__(self) -> str:
        return f"<report of {self.title}: {self.path}>"


def report(target, out: Optional[Union[str, Path]] = None, experiment: Union[None, str, Sequence[str]] = None) -> Page:
    """The page of a run (a Result from cnnlab.train, or a log ID, run name or run-ID prefix), a sweep or an
    experiment, as `cnnlab report` writes it; a notebook shows it inline."""
    from .reporting import report as write_report

    if hasattr(target, "run_id") and hasattr(target, "id"):  # a Result
        experiment = experiment or getattr(target, "experiment", None) or None
        target = target.id
    found, path = write_report(str(target), Path(out) if out else None, _listed(experiment))
    title = f"{found.record.experiment} {found.record.id}" if found.kind == "run" else f"{found.kind} {found.name}"
    return Page(path, title)


def compare(*refs: str, experiment: Union[None, str, Sequence[str]] = None, sweep: Optional[str] = None,
            confidence: float = 0.95):
    """Runs or configurations side by side, as `cnnlab compare` prints them, with the verdict of each against the
    first; returns the Comparison (its `verdicts`: summary.Verdict, with diff, low, high, p, words())."""
    from . import comparison as comparing
    from .record import Store

    found = comparing.gather(Store(create=False), [getattr(r, "id", r) for r in refs], _listed(experiment), sweep,
                             confidence)
    comparing.print_terminal(found)
    return found


def reproduce(run, experiment: Union[None, str, Sequence[str]] = None, quiet: bool = True):
    """Train a FINISHED run again (a Result or a reference), as `cnnlab reproduce` does; prints and returns the
    Reproduction (identical, and what differs)."""
    from .reproduction import reproduce as again

    if hasattr(run, "run_id") and hasattr(run, "id"):
        experiment = experiment or getattr(run, "experiment", None) or None
        run = run.id
    found = _interruptible(lambda: again(str(run), _listed(experiment), quiet=quiet))
    print("\n".join(found.words()))
    return found
