"""Optuna: a sampler (TPE by default) proposes each trial from the results so far; a pruner can stop a
trial early on its per-epoch objective. The study lives in a journal file in the sweep's run
directory, or in a database (`--storage postgresql://...`) that workers on other machines `--join`.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any, Callable, Dict, List, Optional

from ...errors import CnnlabError
from ...config import identity
from ..spec import Outcome, Spec, Trial, format_value, merged, parse, resolved, short
from .. import optuna_private as private
from . import WAIT, Adaptive, Context, Shared, register

SAMPLERS = {"tpe": "TPESampler", "random": "RandomSampler", "cmaes": "CmaEsSampler", "gp": "GPSampler",
            "qmc": "QMCSampler"}
PRUNERS = ("none", "median", "hyperband")
DEFAULT_TRIALS = 10


HEARTBEAT = int(os.environ.get("CNNLAB_TRIAL_HEARTBEAT", "20"))  # seconds between a running trial's heartbeats
RETRIES = 3  # a trial whose worker died (no heartbeat for 3 beats) runs again this many times at most
PATIENCE = 300  # seconds a worker keeps retrying a database that does not answer before it gives up ...
FIRST_PATIENCE = 10  # ... once it has answered; a database that never answered is more likely a wrong URL
_answered = False  # whether the database answered once in this process
# what PostgreSQL answers at connect time to a client it will never let in: no use retrying
REFUSALS = ("password authentication failed", "no password supplied", "does not exist", "no pg_hba.conf entry")
TABLES_LOCK = 0x636E6E6C6162  # the PostgreSQL advisory lock under which a worker opens the study's database ("cnnlab")


def storage(url: str):
    """A journal file (local sweeps) or a database URL (workers on other machines); a database whose driver is
    missing or that does not answer is a clear error. In a database each running trial sends a heartbeat: one
    silent for 3 beats (its worker was killed, or its machine died) is failed and queued again with its values
    (Optuna's RetryHeartbeatStaleTrialCallback) for any worker to take."""
    import warnings

    import optuna
    import sqlalchemy.exc

    # heartbeats, fail_stale_trials and retried_trial_number are "experimental" in Optuna since 2.9: what they do
    # is what we need. Every process that reads a study opens its storage here, so this is said once for all
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if "://" in url:
        from ...record import redact_url

        _check_sqlite_dir(url)

        def open_it():
            with _one_opener_at_a_time(url):
                return optuna.storages.RDBStorage(
                    url, engine_kwargs={"pool_pre_ping": True}, heartbeat_interval=HEARTBEAT,
                    grace_period=3 * HEARTBEAT,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=RETRIES))

        try:
            try:
                return retrying(open_it, "opening the Optuna database")
            except sqlalchemy.exc.IntegrityError:  # a fresh database: another worker made Optuna's tables just now
                time.sleep(1)
                return retrying(open_it, "opening the Optuna database")
        except ImportError as exc:
            raise CnnlabError(f"--storage {redact_url(url)}: its database driver is not installed ({exc}). For "
                              "PostgreSQL install it with `pip install 'cnnlab[team]'` (psycopg).") from None
        except Exception as exc:
            if "incompatible with the table schema" in str(exc):
                raise CnnlabError(f"--storage {redact_url(url)}: the database holds tables Optuna did not make (is it "
                                  "MLflow's?). Optuna and MLflow each need a database of their own: give --storage "
                                  "another database (`cnnlab team up` makes both).") from None
            if type(exc).__name__ not in ("OperationalError", "ArgumentError", "NoSuchModuleError",
                                          "StorageInternalError"):
                raise
            raise CnnlabError(f"--storage {redact_url(url)}: cannot open the database ({type(exc).__name__}: "
                              f"{redact_url(str(exc).splitlines()[0])}). Its password goes in $PGPASSWORD (`cnnlab "
                              "team up` writes it, with the URL as $CNNLAB_STORAGE, into runs/team/secrets.env).") \
                from None
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    return JournalStorage(JournalFileBackend(url))


@contextmanager
def _one_opener_at_a_time(url: str):
    """Opening an Optuna storage makes its tables when they are missing. Two workers starting at once on a fresh
    PostgreSQL database both make them, and one fails ("type studydirection already exists", or a duplicate key in
    pg_type): there the openers take turns, under an advisory lock that ends with its connection. SQLite locks
    the whole file itself."""
    if not url.startswith("postgresql"):
        yield
        return
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    engine = sqlalchemy.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": TABLES_LOCK})
            yield
    finally:
        engine.dispose()


def _check_sqlite_dir(url: str) -> None:
    """A SQLite URL whose directory is missing would never answer: say so at once."""
    from pathlib import Path

    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        folder = Path(url[len("sqlite:///"):]).expanduser().parent
        if not folder.is_dir():
            raise CnnlabError(f"--storage {url}: the directory {folder} does not exist. Create it, or give a path "
                              "in an existing directory (sqlite:////abs/path/optuna.db).")


def _unreachable(exc: Optional[BaseException]) -> bool:
    """Is `exc` (or what caused it) a database that does not answer (restarting, network), not a mistake? A
    refused password or a missing database is an answer (its SQLSTATE says so); a connection that failed, was
    cut or is refused while the server starts or stops has SQLSTATE class 08 or 57P, or none."""
    import sqlalchemy.exc

    for _ in range(5):
        if exc is None:
            return False
        if isinstance(exc, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)) or (
                isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated):
            state = getattr(exc.orig, "sqlstate", None)
            if state is not None:
                return state.startswith(("08", "57P"))
            return not any(answer in str(exc.orig) for answer in REFUSALS)  # a failed connect has no SQLSTATE
        exc = exc.__cause__ or exc.__context__
    return False


def retrying(call: Callable[[], Any], what: str, patience: float = PATIENCE):
    """call(), again with backoff (1, 2, 4 ... 30 s) while the database does not answer, saying so once per
    wait; after `patience` seconds it gives up with a CnnlabError."""
    global _answered
    patience = patience if _answered else min(patience, FIRST_PATIENCE)
    deadline = time.time() + patience
    delay = 1.0
    while True:
        try:
            result = call()
            _answered = True
            return result
        except Exception as exc:
            if not _unreachable(exc):
                raise
            if time.time() + delay > deadline:
                if not _answered:
                    raise CnnlabError(f"The Optuna database does not answer ({type(exc).__name__} while {what}, "
                                      f"for {patience:.0f} s): check the --storage URL (host, port) and that the "
                                      "server is up (`cnnlab team status`).") from None
                raise CnnlabError(f"The Optuna database did not answer for {patience:.0f} s while {what} "
                                  f"({type(exc).__name__}). Check that PostgreSQL is up (`cnnlab team status`), "
                                  "then start the worker again: finished trials are kept.") from None
            print(f"note: the Optuna database does not answer while {what} ({type(exc).__name__}); "
                  f"retrying in {delay:.0f} s", file=sys.stderr, flush=True)
            time.sleep(delay)
            delay = min(delay * 2, 30)


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
    """The spec a sweep started elsewhere stored in its Optuna study (for --join); a study just being created
    is waited for a few seconds."""
    import optuna

    from ...record import redact_url

    db = storage(storage_url)
    for _ in range(10):
        try:
            study = retrying(lambda: optuna.load_study(study_name=name, storage=db), "loading the study")
        except KeyError:
            raise CnnlabError(f"No Optuna study named {name!r} in {redact_url(storage_url)}: start it first with "
                              f"`cnnlab sweep ... --strategy optuna --name {name} --storage URL`.") from None
        if "cnnlab_spec" in study.user_attrs:
            return Spec(**study.user_attrs["cnnlab_spec"])
        time.sleep(1)
    raise CnnlabError(f"The Optuna study {name!r} in {redact_url(storage_url)} was not made by `cnnlab sweep` (it "
                      "holds no cnnlab spec): give the name of a sweep cnnlab started.")


BEATING = "cnnlab_beating"  # a trial's system attr: its own number once a worker's heartbeat thread has it


def fail_orphans(study, running: List[Any]) -> None:
    """Fail the RUNNING trials no worker ever took: an ask that failed half-way (the database went down after
    it created the trial) leaves one with no heartbeat, which Optuna never finds stale. Past the grace period
    without the mark of a Heartbeat, nobody trains it (a retry copies its original's attrs: hence the number)."""
    from datetime import datetime, timedelta

    import optuna

    cutoff = datetime.now() - timedelta(seconds=3 * HEARTBEAT)
    for t in running:
        if t.system_attrs.get(BEATING) != t.number and t.datetime_start is not None and t.datetime_start < cutoff:
            try:
                retrying(lambda: private.fail(study, t), "failing a trial no worker took")
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # another worker failed it first


class Heartbeat:
    """Says every HEARTBEAT seconds, in a thread, that this process still trains an Optuna trial (Optuna's own
    heartbeat thread only runs inside study.optimize, and stops for good at the first database error)."""

    def __init__(self, study, number: int):
        self.study, self.number = study, number
        self.stop = threading.Event()
        # says "a worker has this trial" (Optuna keeps no public record of who beats): see fail_orphans
        retrying(lambda: private.mark(study, number, BEATING, number), "marking a trial")
        self.beat()
        threading.Thread(target=self.run, daemon=True, name=f"heartbeat-T{number}").start()

    def beat(self) -> None:
        try:
            private.beat(self.study, self.number)
        except Exception as exc:  # the database is restarting: the next beat tries again
            if not _unreachable(exc):
                raise
            print(f"note: the Optuna database does not answer ({type(exc).__name__}); the trial goes on and its "
                  f"heartbeat tries again in {HEARTBEAT} s", file=sys.stderr, flush=True)

    def run(self) -> None:
        while not self.stop.wait(HEARTBEAT):
            self.beat()


class Study(Shared):
    """The sweep's Optuna study: created by the first start (or loaded, for --join or a resume), the trials every
    worker asks from and tells, and the parent run's ID as a study attribute."""

    def __init__(self, spec: Spec):
        self.spec = spec
        self.beating: Dict[int, Heartbeat] = {}  # trial number -> its heartbeat, for the trials this process runs

    def prepare(self, name: str, storage_url: str, join: bool) -> None:
        """Create the study (or load it, for --join or a resume) before the sweep records anything. Of two first
        starts at once, exactly one creates it (the database refuses the second), and only that one makes the
        sweep's parent run; the other waits for it (`parent`)."""
        import optuna
        import warnings

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # ask/tell with heartbeats is what this module does on purpose (Optuna expects study.optimize)
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        sampler_class = getattr(optuna.samplers, SAMPLERS[self.spec.sampler])
        kwargs = dict(study_name=name, storage=storage(storage_url), sampler=sampler_class(seed=self.spec.seed),
                      pruner=pruner(self.spec))
        self.created = False
        if join:
            study = retrying(lambda: optuna.load_study(**kwargs), "loading the study")
        else:
            try:
                study = retrying(lambda: optuna.create_study(**kwargs, direction=self.spec.direction),
                                 "creating the study")
                study.set_user_attr("cnnlab_spec", {**asdict(self.spec), "name": name})
                self.created = True
            except optuna.exceptions.DuplicatedStudyError:
                study = retrying(lambda: optuna.load_study(**kwargs), "loading the study")
        if study.trials:  # resuming: a sampler seeded as before would propose the same first points again
            study.sampler = sampler_class(seed=self.spec.seed + len(study.trials))
        self.study = study

    def parent(self) -> Optional[str]:
        """The parent run's ID as the study holds it; a study another process has just created is given half
        a minute to get one (its creator makes the parent run right after the study)."""
        deadline = time.time() + (0 if self.created else 30)
        while True:
            attrs = retrying(lambda: self.study.user_attrs, "reading the study")
            if attrs.get("cnnlab_parent") or time.time() > deadline:
                return attrs.get("cnnlab_parent")
            time.sleep(0.5)

    def set_parent(self, run_id: str) -> None:
        retrying(lambda: self.study.set_user_attr("cnnlab_parent", run_id), "writing the study")

    def running_elsewhere(self) -> int:
        from optuna.trial import TrialState

        return len(self.states(TrialState.RUNNING)) - len(self.beating)

    def states(self, *states) -> List[Any]:
        return retrying(lambda: self.study.get_trials(deepcopy=False, states=states), "reading the study")


@register("optuna")
class Optuna(Adaptive):
    prunes = True
    takes_repeats = False

    def __init__(self, spec: Spec):
        super().__init__(spec)
        self.shared = Study(spec)

    @property
    def study(self):
        return self.shared.study

    @property
    def beating(self) -> Dict[int, Heartbeat]:
        return self.shared.beating

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

    def start(self, ctx: Context) -> None:
        """A journal keeps no heartbeats: trials a crash of this sweep left RUNNING would never report; fail them."""
        from optuna.trial import TrialState

        self.heartbeats = private.has_heartbeats(self.study)
        if not ctx.join and not self.heartbeats:
            for t in self.shared.states(TrialState.RUNNING):
                private.fail(self.study, t)

    def ask(self, ctx: Context) -> Optional[Trial]:
        """Trials asked one at a time while the budget lasts (counted over the whole study, every worker's).
        While the study's running trials fill the budget this says WAIT: a worker that died mid-trial stops its
        heartbeat, and its trial comes back (failed, then queued again with its values) for one of those still
        here to run. A config that already ran is told its result and not trained again."""
        from optuna.trial import TrialState

        while True:
            state = self._budget_left()
            if state is not True:
                return state
            asked, retry_of = self._ask()
            trial = self._trial(asked)
            if retry_of is not None:  # its worker died: its MLflow run must not stay RUNNING
                ctx.abandoned(f"T{retry_of}")
            elif trial.key in ctx.done:  # this config already ran: reuse its result, train nothing
                record = ctx.done[trial.key]
                value = record.metrics.get(f"{self.spec.metric}_best", record.metrics.get(self.spec.metric))
                if record.state == "FINISHED" and value is not None:
                    self._tell(asked.number, value)
                else:
                    self._tell(asked.number, state=TrialState.PRUNED)
                continue
            return trial

    def _budget_left(self):
        """True while a trial may be asked; else None (the study has its trials) or WAIT (others' may yet fail)."""
        import optuna
        from optuna.trial import TrialState

        study = self.study
        if self.heartbeats:
            retrying(lambda: optuna.storages.fail_stale_trials(study), "failing trials of dead workers")
            fail_orphans(study, self.shared.states(TrialState.RUNNING))
        states = [t.state for t in self.shared.states(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING,
                                                      TrialState.WAITING)]  # one read of the study per ask
        ended = states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED)
        running, waiting = states.count(TrialState.RUNNING), states.count(TrialState.WAITING)
        if ended >= self.budget:
            return None
        if ended + running >= self.budget and not waiting:
            if not self.heartbeats or running <= len(self.beating):
                return None  # the rest runs here: this process reports it
            return WAIT
        return True

    def _ask(self):
        """(a new trial of the study, the number of the trial it retries (its worker died) or None)."""
        import optuna
        from optuna.trial import TrialState

        study = self.study
        asked = retrying(lambda: study.ask(distributions(self.spec)), "asking for a trial")
        frozen = next((t for t in self.shared.states(TrialState.RUNNING) if t.number == asked.number), None)
        retry_of = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen) \
            if frozen is not None else None
        if self.heartbeats:
            self.beating[asked.number] = Heartbeat(study, asked.number)
        return asked, retry_of

    def _trial(self, asked) -> Trial:
        values = {k: format_value(v) for k, v in asked.params.items()}
        trial = Trial(f"T{asked.number}", merged([*self.spec.overrides, *(f"{k}={v}" for k, v in values.items()),
                                                  *self.spec.cli_overrides]),
                      {k: short(v) for k, v in values.items()}, number=asked.number)
        trial.key, trial.group = identity(resolved(trial.overrides))
        return trial

    def _tell(self, number: int, value: Optional[float] = None, state=None) -> None:
        beat = self.beating.pop(number, None)
        if beat is not None:
            beat.stop.set()
        try:
            retrying(lambda: self.study.tell(number, value, state=state), f"reporting T{number}")
        except (ValueError, RuntimeError) as exc:  # failed meanwhile as stale (a long outage): the result stays
            print(f"note: T{number} was given up by the study meanwhile ({exc}); its run keeps its result",
                  file=sys.stderr, flush=True)

    def tell(self, trial: Trial, outcome: Outcome) -> None:
        from optuna.trial import TrialState

        if outcome.state == "FINISHED" and outcome.value is not None:
            self._tell(trial.number, outcome.value)
        elif outcome.state == "PRUNED":
            self._tell(trial.number, state=TrialState.PRUNED)
        else:
            self._tell(trial.number, state=TrialState.FAIL)

    def judge(self, trial: Trial, name: str, storage_url: str) -> Optional[Callable[[int, float], bool]]:
        import optuna

        # with the sweep's pruner: load_study's default would be a MedianPruner whatever --pruner said
        study = retrying(lambda: optuna.load_study(study_name=name, storage=storage(storage_url),
                                                   pruner=pruner(self.spec)), "loading the study")
        # (Trial() reads the trial from the database too: the whole of it is retried, not only the id lookup)
        reported = retrying(lambda: private.live_trial(study, trial.number), "loading the study")

        def should_stop(epoch: int, value: float) -> bool:
            retrying(lambda: reported.report(value, epoch), f"reporting epoch {epoch} of {trial.id}")
            return retrying(reported.should_prune, f"asking the pruner about {trial.id}")

        return should_stop

    def describe(self) -> str:
        return (f"space: {' '.join(self.spec.space)}; budget {self.budget}; sampler {self.spec.sampler}; "
                f"pruner {self.spec.pruner}")

    def nothing_to_run(self, skipped: int) -> str:
        return f"nothing to run, the Optuna study already has its {self.budget} trial(s) (a larger --trials continues it)"
