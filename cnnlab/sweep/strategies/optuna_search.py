"""Optuna: a sampler (TPE by default) proposes each trial from the results so far; a pruner can stop a
trial early on its per-epoch objective. The study lives in a journal file in the sweep's run
directory, or in a database (`--storage postgresql://...`) that workers on other machines `--join`.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Callable, Dict, Iterator, List, Optional

from ...errors import CnnlabError
from ...config import identity
from ..spec import Outcome, Spec, Trial, format_value, merged, parse, resolved, short
from . import Context, Strategy, register

SAMPLERS = {"tpe": "TPESampler", "random": "RandomSampler", "cmaes": "CmaEsSampler", "gp": "GPSampler",
            "qmc": "QMCSampler"}
PRUNERS = ("none", "median", "hyperband")
DEFAULT_TRIALS = 10


def storage(url: str):
    """A journal file (local sweeps) or a database URL (workers on other machines); a database whose driver is
    missing or that does not answer is a clear error."""
    import optuna

    if "://" in url:
        try:
            return optuna.storages.RDBStorage(url)
        except ImportError as exc:
            raise CnnlabError(f"--storage {url}: its database driver is not installed ({exc}). For PostgreSQL "
                              "install it with `pip install 'cnnlab[team]'` (psycopg2).") from None
        except Exception as exc:
            if type(exc).__name__ not in ("OperationalError", "ArgumentError", "NoSuchModuleError"):
                raise
            raise CnnlabError(f"--storage {url}: cannot open the database ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0]}).") from None
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    return JournalStorage(JournalFileBackend(url))


def pruner(spec: Spec):
    """The Optuna pruner of `spec`. The median pruner judges a trial from its second epoch on: the first (a
    schedule's warm-up, as in one-cycle) says little about where a trial ends."""
    import optuna

    return {"none": optuna.pruners.NopPruner(),
            "median": optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=2),
            "hyperband": optuna.pruners.HyperbandPruner(min_resource=1)}[spec.pruner]


def distributions(spec: Spec) -> Dict[str, Any]:
    """Hydra sweep overrides as Optuna distributions (keyed by the override key)."""
    import optuna.distributions as D

    dists = {}
    for o in parse(spec.space):
        key, value = o.get_key_element(), o.value()
        if o.is_discrete_sweep():
            dists[key] = D.CategoricalDistribution(list(o.sweep_string_iterator()))
        else:
            log = "log" in value.tags
            if isinstance(value.start, int) and isinstance(value.end, int):
                dists[key] = D.IntDistribution(value.start, value.end, log=log)
            else:
                dists[key] = D.FloatDistribution(value.start, value.end, log=log)
    return dists


def load_joined_spec(name: str, storage_url: str) -> Spec:
    """The spec a sweep started elsewhere stored in its Optuna study (for --join)."""
    import optuna

    try:
        study = optuna.load_study(study_name=name, storage=storage(storage_url))
    except KeyError:
        raise CnnlabError(f"No Optuna study named {name!r} in {storage_url}: start it first with "
                          f"`cnnlab sweep ... --strategy optuna --name {name} --storage URL`.") from None
    return Spec(**study.user_attrs["cnnlab_spec"])


@register("optuna")
class Optuna(Strategy):
    prunes = True
    takes_repeats = False

    def check(self) -> None:
        super().check()
        if self.spec.sampler not in SAMPLERS:
            raise CnnlabError(f"Unknown Optuna sampler {self.spec.sampler!r}; valid: {', '.join(SAMPLERS)}.")
        if self.spec.pruner not in PRUNERS:
            raise CnnlabError(f"Unknown pruner {self.spec.pruner!r}; valid: {', '.join(PRUNERS)}.")

    @property
    def budget(self) -> int:
        return self.spec.trials or DEFAULT_TRIALS

    def plan(self) -> List[Trial]:
        """None ahead (Optuna proposes them as the sweep goes), but the space is checked: the base config is
        composed with each dimension's ends, so that a bad key or type fails before any training."""
        for key, dist in distributions(self.spec).items():
            values = dist.choices if hasattr(dist, "choices") else (dist.low, dist.high)
            for value in values:
                try:
                    cfg = resolved(merged([*self.spec.overrides, f"{key}={format_value(value)}",
                                           *self.spec.cli_overrides]))
                except CnnlabError as exc:
                    raise CnnlabError(f"Search space {key}: {exc}") from None
                self.check_objective(cfg, f"Search space {key}={format_value(value)}")
        return []

    def prepare(self, name: str, storage_url: str, join: bool) -> None:
        """Create the study (or load it, for --join) before the sweep records anything."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler_class = getattr(optuna.samplers, SAMPLERS[self.spec.sampler])
        kwargs = dict(study_name=name, storage=storage(storage_url), sampler=sampler_class(seed=self.spec.seed),
                      pruner=pruner(self.spec))
        if join:
            study = optuna.load_study(**kwargs)
        else:
            study = optuna.create_study(**kwargs, direction=self.spec.direction, load_if_exists=True)
            study.set_user_attr("cnnlab_spec", {**asdict(self.spec), "name": name})
        if study.trials:  # resuming: a sampler seeded as before would propose the same first points again
            study.sampler = sampler_class(seed=self.spec.seed + len(study.trials))
        self.study = study

    def trials(self, ctx: Context, planned: List[Trial]) -> Iterator[Trial]:
        """Trials asked one at a time while the budget lasts (counted over the whole study)."""
        from optuna.trial import TrialState

        study = self.study
        if not ctx.join:  # trials left RUNNING by a crash of ours will never report: fail them
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        dists = distributions(self.spec)
        while True:
            counted = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED,
                                                              TrialState.RUNNING))
            if len(counted) >= self.budget or ctx.stopping():
                return
            asked = study.ask(dists)
            values = {k: format_value(v) for k, v in asked.params.items()}
            trial = Trial(f"T{asked.number}", merged([*self.spec.overrides, *(f"{k}={v}" for k, v in values.items()),
                                                      *self.spec.cli_overrides]),
                          {k: short(v) for k, v in values.items()}, number=asked.number)
            trial.key, trial.group = identity(resolved(trial.overrides))
            if trial.key in ctx.done:  # this config already ran: reuse its result, train nothing
                record = ctx.done[trial.key]
                value = record.metrics.get(f"{self.spec.metric}_best", record.metrics.get(self.spec.metric))
                if record.state == "FINISHED" and value is not None:
                    study.tell(asked, value)
                else:
                    study.tell(asked, state=TrialState.PRUNED)
                continue
            yield trial

    def tell(self, trial: Trial, outcome: Outcome) -> None:
        from optuna.trial import TrialState

        if outcome.state == "FINISHED" and outcome.value is not None:
            self.study.tell(trial.number, outcome.value)
        elif outcome.state == "PRUNED":
            self.study.tell(trial.number, state=TrialState.PRUNED)
        else:
            self.study.tell(trial.number, state=TrialState.FAIL)

    def judge(self, trial: Trial, name: str, storage_url: str) -> Optional[Callable[[int, float], bool]]:
        import optuna

        # with the sweep's pruner: load_study's default would be a MedianPruner whatever --pruner said
        study = optuna.load_study(study_name=name, storage=storage(storage_url), pruner=pruner(self.spec))
        reported = optuna.trial.Trial(study, study._storage.get_trial_id_from_study_id_trial_number(
            study._study_id, trial.number))

        def should_stop(epoch: int, value: float) -> bool:
            reported.report(value, epoch)
            return reported.should_prune()

        return should_stop

    def describe(self) -> str:
        return (f"space: {' '.join(self.spec.space)}; budget {self.budget}; sampler {self.spec.sampler}; "
                f"pruner {self.spec.pruner}")

    def nothing_to_run(self, skipped: int) -> str:
        return f"nothing to run, the Optuna study already has its {self.budget} trial(s) (a larger --trials continues it)"
