"""Sweeps: many trainings of one base config, recorded as one MLflow parent run with a child per trial.

A sweep is a `Spec`: fixed overrides for every trial, a search space in Hydra's override grammar
(`lr=0.1,0.01`, `choice()`, `range()`, `interval()`, `tag(log, ...)`, parsed by Hydra's
OverridesParser), a strategy (grid, random, optuna, or an explicit list of configs), a budget
and an objective. Named sweeps live in `conf/sweep/*.yaml`.

Running a sweep:
1. expand the spec into trials (each: ID T<n>, overrides, a key = hash of its resolved config
   and seed), checking every config before anything runs;
2. find or create the parent run (a stable sweep name) and read the children already there:
   FINISHED keys are skipped, FAILED/KILLED ones run again, an Optuna study continues;
3. run the trials in this process or in N worker processes (data loaded once per worker),
   each trial one `train()` with the parent's id; a live table shows them;
4. summarise every child (mean +- std per config over seeds) on the terminal and on the parent.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random as random_mod
import signal
import statistics
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

from .errors import CnnlabError, Interrupted

STRATEGIES = ("grid", "random", "optuna", "list")
SAMPLERS = {"tpe": "TPESampler", "random": "RandomSampler", "cmaes": "CmaEsSampler", "gp": "GPSampler",
            "qmc": "QMCSampler"}
PRUNERS = ("none", "median", "hyperband")
OBJECTIVES = ("val_acc", "val_loss")  # train() logs each one's best epoch value as <metric>_best
NOT_IN_KEY = ("experiment", "run_name", "threads", "tracking")  # do not change what a trial computes


@dataclass
class Spec:
    name: Optional[str] = None  # stable sweep name; default: derived from the spec
    strategy: str = "grid"  # grid | random | optuna | list
    trials: Optional[int] = None  # random/optuna: how many (default 10); grid/list: all of them
    repeats: int = 1  # seeds per configuration (seed, seed+1, ...)
    metric: str = "val_acc"  # the objective: val_acc or val_loss, at the best epoch; the test set never chooses
    direction: Optional[str] = None  # maximize | minimize; default: maximize val_acc, minimize val_loss
    sampler: str = "tpe"  # optuna: tpe | random | cmaes | gp | qmc
    pruner: str = "none"  # optuna: none | median | hyperband
    seed: int = 0  # sampling seed (random, optuna)
    overrides: List[str] = field(default_factory=list)  # fixed, applied to every trial before its own values
    cli_overrides: List[str] = field(default_factory=list)  # fixed, from the command line: applied last, they win
    space: List[str] = field(default_factory=list)  # sweep overrides: "lr=0.1,0.01", "dropout=interval(0,0.5)"
    configs: List[List[str]] = field(default_factory=list)  # strategy=list: one override list per config


@dataclass
class Trial:
    id: str  # T0, T1, ...
    overrides: List[str]  # everything passed to compose: fixed + this trial's values
    params: Dict[str, str]  # the swept values, for tables
    key: str = ""  # hash of the resolved config (seed included): the identity used to resume
    group: str = ""  # hash without the seed: repeats of one configuration share it
    optuna_number: Optional[int] = None


@dataclass
class Outcome:
    trial_id: str
    state: str  # FINISHED | FAILED | KILLED | PRUNED
    value: Optional[float] = None  # the objective (best epoch's metric)
    test_acc: Optional[float] = None
    seconds: float = 0.0
    run_id: Optional[str] = None
    reason: str = ""
    history: List[float] = field(default_factory=list)  # the metric per epoch


# ---------------------------------------------------------------- the spec


def _parser():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


def _parse(texts: List[str]):
    from hydra.errors import HydraException

    try:
        return _parser().parse_overrides(list(texts))
    except HydraException as exc:
        raise CnnlabError(f"Bad sweep override in {' '.join(texts)}: {exc}") from None


def load_spec(args: List[str], **options: Any) -> Spec:
    """The spec of `cnnlab sweep ARGS --options`: `sweep=NAME` loads conf/sweep/NAME.yaml, other
    ARGS with sweep syntax join its space (replacing a dimension with the same key), the rest
    become fixed overrides; options that are not None win over the file."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from .config import _hydra_message, conf_dir

    spec = OmegaConf.structured(Spec)
    rest = []
    for arg in args:
        if arg.startswith("sweep="):
            path = conf_dir() / "sweep" / f"{arg[len('sweep='):]}.yaml"
            if not path.is_file():
                names = sorted(p.stem for p in (conf_dir() / "sweep").glob("*.yaml"))
                raise CnnlabError(f"No sweep named {arg[6:]!r} in {path.parent}. Valid: {', '.join(names) or 'none'}.")
            try:
                spec = OmegaConf.merge(spec, OmegaConf.load(path))
            except OmegaConfBaseException as exc:
                raise CnnlabError(f"{path}: {_hydra_message(exc)}") from None
        else:
            rest.append(arg)
    spec = OmegaConf.to_object(spec)
    for override, text in zip(_parse(rest), rest):
        if override.is_sweep_override():
            key = override.get_key_element()
            spec.space = [s for s in spec.space if _parse([s])[0].get_key_element() != key] + [text]
        else:
            spec.cli_overrides.append(text)
    for name, value in options.items():
        if value is not None:
            setattr(spec, name, value)
    if spec.direction is None:
        spec.direction = "minimize" if spec.metric.endswith("loss") else "maximize"
    check_spec(spec)
    return spec


def check_spec(spec: Spec) -> None:
    def bad(what: str, valid) -> None:
        raise CnnlabError(f"{what}; valid: {', '.join(valid)}.")

    if spec.strategy not in STRATEGIES:
        bad(f"Unknown sweep strategy {spec.strategy!r}", STRATEGIES)
    if spec.sampler not in SAMPLERS:
        bad(f"Unknown Optuna sampler {spec.sampler!r}", SAMPLERS)
    if spec.pruner not in PRUNERS:
        bad(f"Unknown pruner {spec.pruner!r}", PRUNERS)
    if spec.direction not in ("maximize", "minimize"):
        bad(f"Unknown direction {spec.direction!r}", ("maximize", "minimize"))
    if spec.metric not in OBJECTIVES:
        raise CnnlabError(f"metric={spec.metric}: the objective must be a validation metric ({', '.join(OBJECTIVES)}); "
                          "the test set is never used to choose.")
    if spec.repeats < 1 or (spec.trials is not None and spec.trials < 1):
        raise CnnlabError("--repeats and --trials must be >= 1.")
    if spec.pruner != "none" and spec.strategy != "optuna":
        raise CnnlabError(f"--pruner {spec.pruner} needs --strategy optuna (pruning is Optuna's).")
    if spec.strategy == "list":
        if spec.space:
            raise CnnlabError(f"strategy=list runs the listed configs; it takes no search space ({', '.join(spec.space)}).")
        if not spec.configs:
            raise CnnlabError("strategy=list needs `configs:` (a list of override lists) in the sweep file.")
    elif not spec.space:
        raise CnnlabError("Nothing to sweep: give at least one override with sweep syntax "
                          "(lr=0.1,0.01 or dropout=interval(0,0.5)) or sweep=NAME (see conf/sweep/).")
    fixed = {o.get_key_element() for o in _parse(spec.overrides + spec.cli_overrides)}
    for override in _parse(spec.space):
        if override.get_key_element() in fixed:
            raise CnnlabError(f"{override.get_key_element()} is both fixed and swept; give it once.")
        value = override.value()
        kind = type(value).__name__
        if spec.strategy == "grid" and kind == "IntervalSweep":
            raise CnnlabError(f"{override.input_line}: interval() is continuous and cannot be a grid; use "
                              "--strategy random or optuna, or list values (a=1,2,3).")
        if override.is_discrete_sweep() and not list(override.sweep_string_iterator()):
            raise CnnlabError(f"{override.input_line}: the sweep has no values.")
    if spec.strategy == "optuna" and spec.repeats > 1:
        raise CnnlabError("--repeats applies to grid, random and list sweeps; an Optuna trial is one run.")


def sweep_name(spec: Spec) -> str:
    if spec.name:
        return spec.name
    text = json.dumps({k: v for k, v in asdict(spec).items() if k != "name"}, sort_keys=True)
    return f"{spec.strategy}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


# ---------------------------------------------------------------- trials


def _format(value: Any) -> str:
    """An override value: floats in full (the trial's identity), the rest as written."""
    return repr(value) if isinstance(value, float) else str(value)


def _short(value: str) -> str:
    """A swept value for tables: 0.0020547625125 -> 0.002055."""
    if len(value) <= 8:
        return value
    try:
        return f"{float(value):.4g}"
    except ValueError:
        return value


def _grid(spec: Spec) -> List[Dict[str, str]]:
    import itertools

    dims = [(o.get_key_element(), list(o.sweep_string_iterator())) for o in _parse(spec.space)]
    return [dict(zip([k for k, _ in dims], combo)) for combo in itertools.product(*[v for _, v in dims])]


def _random(spec: Spec, n: int) -> List[Dict[str, str]]:
    rng = random_mod.Random(spec.seed)
    points = []
    for _ in range(n):
        point = {}
        for o in _parse(spec.space):
            value = o.value()
            if o.is_discrete_sweep():
                point[o.get_key_element()] = rng.choice(list(o.sweep_string_iterator()))
            else:  # interval
                lo, hi = value.start, value.end
                if "log" in value.tags:
                    x = math.exp(rng.uniform(math.log(lo), math.log(hi)))
                else:
                    x = rng.uniform(lo, hi)
                ints = isinstance(lo, int) and isinstance(hi, int)
                point[o.get_key_element()] = str(int(round(x))) if ints else _format(x)
        points.append(point)
    return points


def _identity(overrides: List[str]) -> tuple:
    """(key, group) of a trial: hashes of its resolved config with and without the seed."""
    from .config import compose, resolve, to_dict

    cfg = to_dict(resolve(compose(overrides)))
    for name in NOT_IN_KEY:
        cfg.pop(name, None)
    key = hashlib.sha1(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]
    cfg.pop("seed")
    group = hashlib.sha1(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return key, group


def base_seed(spec: Spec) -> int:
    from .config import compose

    return int(compose(spec.overrides + spec.cli_overrides).seed)


def expand(spec: Spec) -> List[Trial]:
    """The trials of a grid, random or list sweep, every config checked (a bad one raises CnnlabError)."""
    if spec.strategy == "grid":
        points = _grid(spec)
    elif spec.strategy == "random":
        points = _random(spec, spec.trials or 10)
    elif spec.strategy == "list":
        points = [{o.split("=", 1)[0]: o.split("=", 1)[1] if "=" in o else "" for o in config}
                  for config in spec.configs]
    else:
        raise ValueError(spec.strategy)
    seed0 = base_seed(spec)
    trials = []
    for point in points:
        for r in range(spec.repeats):
            extra = [f"seed={seed0 + r}"] if spec.repeats > 1 else []
            overrides = [*spec.overrides, *(f"{k}={v}" if v != "" else k for k, v in point.items()),
                         *spec.cli_overrides, *extra]
            params = {**{k: _short(v) for k, v in point.items()}, **({"seed": str(seed0 + r)} if extra else {})}
            trials.append(Trial(f"T{len(trials)}", overrides, params))
    for trial in trials:
        try:
            trial.key, trial.group = _identity(trial.overrides)
        except CnnlabError as exc:
            raise CnnlabError(f"Trial {trial.id} ({' '.join(f'{k}={v}' for k, v in trial.params.items())}) "
                              f"is not a valid config: {exc}") from None
    return trials


def optuna_distributions(spec: Spec) -> Dict[str, Any]:
    """Hydra sweep overrides as Optuna distributions (keyed by the override key)."""
    import optuna.distributions as D

    dists = {}
    for o in _parse(spec.space):
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


def check_optuna_space(spec: Spec) -> None:
    """Compose the base with each dimension's ends so that a bad key or type fails before any training."""
    for key, dist in optuna_distributions(spec).items():
        values = dist.choices if hasattr(dist, "choices") else (dist.low, dist.high)
        for value in values:
            overrides = [*spec.overrides, f"{key}={_format(value)}", *spec.cli_overrides]
            try:
                _identity(overrides)
            except CnnlabError as exc:
                raise CnnlabError(f"Search space {key}: {exc}") from None


# ---------------------------------------------------------------- running one trial (here or in a worker)

_WORKER: Dict[str, Any] = {}


def _dataset(cfg):
    """The data set of `cfg`, loaded once per process and reused by every trial that asks for it; on a GPU
    it is moved there once, so trials start without copying it."""
    from . import data
    from .train import pick_device

    d = cfg.data
    device = pick_device(cfg.device.value)
    key = (d.name, d.root, d.n_train, d.n_test, cfg.seed if d.name == "synthetic" else None, str(device))
    cache = _WORKER.setdefault("datasets", {})
    if key not in cache:
        ds = data.load(d, seed=cfg.seed)
        cache[key] = ds.to(device) if device.type == "cuda" else ds
    return cache[key]


def run_trial(trial: Trial, spec: Spec, sweep: str, parent_run_id: str, run_root: str,
              optuna_storage: Optional[str] = None, progress=None) -> Outcome:
    """Train one trial as a child run. Failures become an Outcome; a signal propagates as Interrupted."""
    from .config import compose
    from .errors import Pruned
    from .train import train

    start = time.perf_counter()
    curve: List[float] = []
    optuna_trial = None
    if optuna_storage is not None and trial.optuna_number is not None:
        import optuna

        # with the sweep's pruner: load_study's default would be a MedianPruner whatever --pruner said
        study = optuna.load_study(study_name=sweep, storage=_optuna_storage(optuna_storage), pruner=_pruner(spec))
        optuna_trial = optuna.trial.Trial(study, study._storage.get_trial_id_from_study_id_trial_number(
            study._study_id, trial.optuna_number))

    def on_epoch(epoch: int, metrics: Dict[str, float]) -> None:
        value = metrics.get(spec.metric)
        if value is not None:
            curve.append(value)
        if progress is not None:
            progress(("epoch", trial.id, epoch, value))
        if optuna_trial is not None and value is not None:
            optuna_trial.report(value, epoch)
            if optuna_trial.should_prune():
                raise Pruned(f"{spec.metric}={value:.4f} at epoch {epoch}")

    if progress is not None:
        progress(("start", trial.id))
    tags = {"cnnlab.sweep": sweep, "cnnlab.trial": trial.id, "cnnlab.trial_key": trial.key,
            "cnnlab.config_key": trial.group, "cnnlab.swept": json.dumps(trial.params)}
    try:
        cfg = compose(trial.overrides + [f"run_name={trial.id}"])
        result = train(cfg, trial.overrides, dataset=_dataset(cfg), on_epoch=on_epoch, parent_run_id=parent_run_id,
                       tags=tags, run_root=Path(run_root), quiet=True)
    except Interrupted:
        raise
    except BaseException as exc:  # the trial failed; the sweep goes on
        return Outcome(trial.id, "FAILED", seconds=time.perf_counter() - start,
                       reason=f"{type(exc).__name__}: {exc}"[:500], history=curve)
    best = _best(curve, spec.direction)
    return Outcome(trial.id, result.status, best, result.metrics.get("test_acc") if result.status == "FINISHED" else None,
                   time.perf_counter() - start, result.run_id, history=curve)


def _best(curve: List[float], direction: str) -> Optional[float]:
    if not curve:
        return None
    return max(curve) if direction == "maximize" else min(curve)


def _init_worker(threads: int, devices: "Any", progress_queue) -> None:
    """Worker start-up: its share of CPU threads (or its GPU), signals left to train(), torch imported once."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # train() installs its own handlers during a trial
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if devices is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(devices.get())
    import torch

    torch.set_num_threads(threads)
    _WORKER["progress"] = progress_queue


def _work(trial: Trial, spec: Spec, sweep: str, parent_run_id: str, run_root: str,
          optuna_storage: Optional[str]) -> Outcome:
    queue = _WORKER.get("progress")
    try:
        return run_trial(trial, spec, sweep, parent_run_id, run_root, optuna_storage,
                         progress=queue.put if queue is not None else None)
    except Interrupted:
        return Outcome(trial.id, "KILLED", reason="interrupted")


class _Inline:
    """The executor for --workers 1: runs each trial at submit time, in this process."""

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        future.set_result(fn(*args))
        return future

    def shutdown(self, **kwargs) -> None:
        pass


# ---------------------------------------------------------------- Optuna


def _optuna_storage(url: str):
    """A journal file (local sweeps) or a database URL (workers on other machines)."""
    import optuna

    if "://" in url:
        return optuna.storages.RDBStorage(url)
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    return JournalStorage(JournalFileBackend(url))


def _pruner(spec: Spec):
    """The Optuna pruner of `spec`. The median pruner judges a trial from its second epoch on: the first (a
    schedule's warm-up, as in one-cycle) says little about where a trial ends."""
    import optuna

    return {"none": optuna.pruners.NopPruner(),
            "median": optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=2),
            "hyperband": optuna.pruners.HyperbandPruner(min_resource=1)}[spec.pruner]


def _study(spec: Spec, sweep: str, storage_url: str, create: bool = True):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = getattr(optuna.samplers, SAMPLERS[spec.sampler])(seed=spec.seed)
    pruner = _pruner(spec)
    storage = _optuna_storage(storage_url)
    if create:
        study = optuna.create_study(study_name=sweep, storage=storage, sampler=sampler, pruner=pruner,
                                    direction=spec.direction, load_if_exists=True)
        study.set_user_attr("cnnlab_spec", {**asdict(spec), "name": sweep})
    else:
        study = optuna.load_study(study_name=sweep, storage=storage, sampler=sampler, pruner=pruner)
    if study.trials:  # resuming: a sampler seeded as before would propose the same first points again
        study.sampler = getattr(optuna.samplers, SAMPLERS[spec.sampler])(seed=spec.seed + len(study.trials))
    return study


def load_joined_spec(name: str, storage_url: str) -> Spec:
    """The spec a sweep started elsewhere stored in its Optuna study (for --join)."""
    import optuna

    try:
        study = optuna.load_study(study_name=name, storage=_optuna_storage(storage_url))
    except KeyError:
        raise CnnlabError(f"No Optuna study named {name!r} in {storage_url}: start it first with "
                          f"`cnnlab sweep ... --strategy optuna --name {name} --storage URL`.") from None
    return Spec(**study.user_attrs["cnnlab_spec"])


# ---------------------------------------------------------------- the sweep


class Sweep:
    def __init__(self, spec: Spec, workers: int = 1, storage: Optional[str] = None, force: bool = False,
                 join: bool = False, gpus_per_worker: Optional[float] = None, quiet: bool = False):
        from .config import compose, runs_dir

        self.spec, self.workers, self.force, self.join, self.quiet = spec, max(1, workers), force, join, quiet
        self.name = sweep_name(spec)
        base = compose(spec.overrides + spec.cli_overrides)
        self.experiment = base.experiment
        self.tracking_uri = base.tracking.uri
        self.root = runs_dir() / self.experiment / self.name
        self.storage = storage or str(self.root / "optuna.journal")
        self.outcomes: Dict[str, Outcome] = {}
        self.trials: Dict[str, Trial] = {}
        self.running: Dict[str, Dict[str, Any]] = {}
        self.stop_signal: Optional[int] = None
        self.live = None
        self.notes: List[str] = []

    # ---- MLflow: the parent run and what its children already hold

    def _open_parent(self):
        from . import tracking

        self.client = tracking.client(self.tracking_uri)  # creates the store once, before any worker
        exp_id = tracking.experiment_id(self.client, self.experiment)
        found = self.client.search_runs([exp_id], f"tags.`cnnlab.sweep_parent` = '{self.name}'", max_results=1)
        if found:
            self.parent_id = found[0].info.run_id
            self.client.update_run(self.parent_id, status="RUNNING")
        else:
            tags = {"cnnlab.sweep_parent": self.name, "cnnlab.sweep": self.name, "mlflow.source.name": "cnnlab sweep"}
            self.parent_id = self.client.create_run(exp_id, run_name=self.name, tags=tags).info.run_id
            spec = asdict(self.spec)
            params = {"strategy": spec["strategy"], "metric": spec["metric"], "direction": spec["direction"],
                      "trials": spec["trials"], "repeats": spec["repeats"], "sampler": spec["sampler"],
                      "pruner": spec["pruner"], "seed": spec["seed"], "space": " ".join(spec["space"]),
                      "overrides": " ".join(spec["overrides"]), "configs": json.dumps(spec["configs"])[:6000]}
            from mlflow.entities import Param

            from .config import compose, flatten, resolve, to_dict

            base = flatten(to_dict(resolve(compose(self.spec.overrides + self.spec.cli_overrides))))
            params.update({f"base.{k}": v for k, v in base.items()})  # what ARCHITECTURE CHANGES compares with
            params["cli_overrides"] = " ".join(spec["cli_overrides"])
            items = [Param(k, str(v)) for k, v in params.items()]
            for i in range(0, len(items), 100):
                self.client.log_batch(self.parent_id, params=items[i:i + 100])
        self.exp_id = exp_id
        self.root.mkdir(parents=True, exist_ok=True)
        from omegaconf import OmegaConf

        (self.root / "sweep.yaml").write_text(OmegaConf.to_yaml(asdict(self.spec)))

    def children(self) -> list:
        return self.client.search_runs([self.exp_id], f"tags.mlflow.parentRunId = '{self.parent_id}'",
                                       max_results=50000, order_by=["attributes.start_time ASC"])

    def _done_keys(self) -> Dict[str, Any]:
        """trial key -> FINISHED (or PRUNED) child run; RUNNING leftovers of a crash are marked KILLED."""
        done = {}
        for run in self.children():
            state = run.data.tags.get("cnnlab.state", run.info.status)
            if run.info.status == "RUNNING" and not self.join:
                self.client.set_terminated(run.info.run_id, "KILLED")
                self.client.set_tag(run.info.run_id, "cnnlab.state", "KILLED")
                continue
            if state in ("FINISHED", "PRUNED"):
                done[run.data.tags.get("cnnlab.trial_key")] = run
        return {} if self.force else done

    # ---- the live table

    def _table(self):
        from rich.table import Table

        table = Table(title=f"sweep {self.name} ({self.spec.strategy}, {self.spec.metric})", expand=False)
        for col in ("trial", "state", "params", "epoch", self.spec.metric, "test_acc", "time"):
            table.add_column(col, justify="right" if col not in ("params", "state", "trial") else "left")
        best = self._best_outcome()
        for tid, trial in self.trials.items():
            out = self.outcomes.get(tid)
            live = self.running.get(tid)
            if out is None and live is None:
                continue
            params = " ".join(f"{k}={v}" for k, v in trial.params.items())
            if out is not None:
                state = out.state + (" *" if best is out else "")
                table.add_row(tid, state, params, str(len(out.history)), _fmt(out.value), _fmt(out.test_acc),
                              f"{out.seconds:.0f}s")
            else:
                table.add_row(tid, "RUNNING", params, str(live.get("epoch", 0)), _fmt(live.get("value")), "",
                              f"{time.perf_counter() - live['start']:.0f}s")
        if best is not None:
            table.caption = f"best so far: {best.trial_id} {self.spec.metric}={best.value:.4f}"
        return table

    def _best_outcome(self) -> Optional[Outcome]:
        scored = [o for o in self.outcomes.values() if o.state == "FINISHED" and o.value is not None]
        if not scored:
            return None
        pick = max if self.spec.direction == "maximize" else min
        return pick(scored, key=lambda o: o.value)

    def _on_progress(self, message) -> None:
        kind, tid = message[0], message[1]
        if kind == "start":
            self.running[tid] = {"start": time.perf_counter(), "epoch": 0}
        elif kind == "epoch" and tid in self.running:
            self.running[tid].update(epoch=message[2], value=message[3])

    def _on_outcome(self, trial: Trial, outcome: Outcome) -> None:
        self.outcomes[trial.id] = outcome
        self.running.pop(trial.id, None)
        if self.live is None:
            params = " ".join(f"{k}={v}" for k, v in trial.params.items())
            extra = f" ({outcome.reason})" if outcome.reason else ""
            print(f"{trial.id} {outcome.state} {params} {self.spec.metric}={_fmt(outcome.value)} "
                  f"test_acc={_fmt(outcome.test_acc)} {outcome.seconds:.0f}s{extra}", flush=True)

    # ---- running

    def plan(self) -> List[Trial]:
        """Grid/random/list: every trial, checked. Optuna: none ahead (they are asked as we go)."""
        if self.spec.strategy == "optuna":
            check_optuna_space(self.spec)
            return []
        return expand(self.spec)

    def _lock(self) -> None:
        """One process drives a sweep; more machines join through --join/--storage instead."""
        import fcntl

        self.root.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(self.root / ".lock", "a+")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise CnnlabError(f"Sweep {self.name} is already running (lock {self.root / '.lock'}). Wait for it, or "
                              "add workers from elsewhere with --join NAME --storage URL.") from None

    def run(self, dry_run: bool = False) -> Dict[str, Any]:
        planned = self.plan()
        if dry_run:
            return {"name": self.name, "trials": planned}
        if not self.join:
            self._lock()
        try:
            return self._run(planned)
        finally:
            if not self.join:
                self._lock_file.close()

    def _run(self, planned: List[Trial]) -> Dict[str, Any]:
        self._open_parent()
        done = self._done_keys()
        planned = self._drop_duplicates(planned)
        for t in planned:
            self.trials[t.id] = t
        todo = [t for t in planned if t.key not in done]
        skipped = len(planned) - len(todo)
        study = None
        if self.spec.strategy == "optuna":
            study = _study(self.spec, self.name, self.storage, create=not self.join)
            todo_iter = self._ask(study, done)
        else:
            todo_iter = iter(todo)
        if self.spec.strategy != "optuna" and not todo:
            self._finish("FINISHED")
            return {"name": self.name, "ran": 0, "skipped": skipped, "summary": self.summary(), "notes": self.notes}

        self.live = None
        executor, queue = self._executor()
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            if not self.quiet and _is_tty():
                from rich.console import Console
                from rich.live import Live

                self.live = Live(self._table(), console=Console(stderr=True), refresh_per_second=2, transient=False)
                self.live.start()
            self._loop(executor, queue, todo_iter, study)
        except Interrupted as exc:  # --workers 1: the signal reached train() in this process
            self.stop_signal = exc.exit_code - 128
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
            if self.live is not None:
                self.live.update(self._table())
                self.live.stop()
            for s, h in old.items():
                signal.signal(s, h)
        ran = len(self.outcomes)
        if self.stop_signal is not None:
            self._finish("KILLED")
            raise Interrupted(self.stop_signal)
        self._finish("FINISHED")
        return {"name": self.name, "ran": ran, "skipped": skipped, "summary": self.summary(), "notes": self.notes,
                "outcomes": list(self.outcomes.values())}

    def _drop_duplicates(self, planned: List[Trial]) -> List[Trial]:
        """A trial whose config another trial of the plan already has (an override made them equal) runs once."""
        first: Dict[str, str] = {}
        kept = []
        for t in planned:
            if t.key in first:
                self.notes.append(f"{t.id} is the same config as {first[t.key]} after overrides: run once")
            else:
                first[t.key] = t.id
                kept.append(t)
        return kept

    def _ask(self, study, done: Dict[str, Any]) -> Iterator[Trial]:
        """Optuna trials, asked one at a time while the budget lasts (counted over the whole study)."""
        import optuna
        from optuna.trial import TrialState

        if not self.join:  # trials left RUNNING by a crash of ours will never report: fail them
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        dists = optuna_distributions(self.spec)
        budget = self.spec.trials or 10
        while True:
            counted = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED,
                                                              TrialState.RUNNING))
            if len(counted) >= budget or self.stop_signal is not None:
                return
            ot = study.ask(dists)
            values = {k: _format(v) for k, v in ot.params.items()}
            overrides = [*self.spec.overrides, *(f"{k}={v}" for k, v in values.items()), *self.spec.cli_overrides]
            trial = Trial(f"T{ot.number}", overrides, {k: _short(v) for k, v in values.items()},
                          optuna_number=ot.number)
            trial.key, trial.group = _identity(trial.overrides)
            self.trials[trial.id] = trial
            if trial.key in done:  # this config already ran: reuse its result, train nothing
                run = done[trial.key]
                value = run.data.metrics.get(f"{self.spec.metric}_best", run.data.metrics.get(self.spec.metric))
                if run.data.tags.get("cnnlab.state") == "FINISHED" and value is not None:
                    study.tell(ot, value)
                else:
                    study.tell(ot, state=TrialState.PRUNED)
                self.trials.pop(trial.id)
                continue
            yield trial

    def _tell(self, study, trial: Trial, outcome: Outcome) -> None:
        from optuna.trial import TrialState

        if study is None or trial.optuna_number is None:
            return
        if outcome.state == "FINISHED" and outcome.value is not None:
            study.tell(trial.optuna_number, outcome.value)
        elif outcome.state == "PRUNED":
            study.tell(trial.optuna_number, state=TrialState.PRUNED)
        else:
            study.tell(trial.optuna_number, state=TrialState.FAIL)

    def _executor(self):
        if self.workers == 1:
            self.progress_queue = None
            return _Inline(), None
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        queue = ctx.Queue()
        devices = None
        n_gpus = _cuda_device_count()
        if n_gpus > 0:
            devices = ctx.Queue()
            for i in range(self.workers):
                devices.put(i % n_gpus)
        threads = max(1, (os.cpu_count() or 1) // self.workers)
        executor = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_worker,
                                       initargs=(threads, devices, queue))
        return executor, queue

    def _submit(self, executor, trial: Trial, study) -> Future:
        storage = self.storage if study is not None else None
        if isinstance(executor, _Inline):
            progress = self._inline_progress
            return executor.submit(run_trial, trial, self.spec, self.name, self.parent_id, str(self.root), storage,
                                   progress)
        return executor.submit(_work, trial, self.spec, self.name, self.parent_id, str(self.root), storage)

    def _inline_progress(self, message) -> None:
        self._on_progress(message)
        if self.live is not None:
            self.live.update(self._table())

    def _loop(self, executor, queue, todo: Iterator[Trial], study) -> None:
        in_flight: Dict[Future, Trial] = {}
        exhausted = False
        while True:
            while not exhausted and len(in_flight) < self.workers and self.stop_signal is None:
                trial = next(todo, None)
                if trial is None:
                    exhausted = True
                    break
                future = self._submit(executor, trial, study)
                in_flight[future] = trial
                if isinstance(executor, _Inline):
                    break  # already done: collect it before asking for the next
            if not in_flight:
                return
            done, _ = wait(list(in_flight), timeout=0.5, return_when=FIRST_COMPLETED)
            if queue is not None:
                while not queue.empty():
                    self._on_progress(queue.get())
            for future in done:
                trial = in_flight.pop(future)
                try:
                    outcome = future.result()
                except Exception as exc:  # the worker process itself died (killed, out of memory)
                    outcome = Outcome(trial.id, "FAILED", reason=f"worker died: {type(exc).__name__}: {exc}")
                self._on_outcome(trial, outcome)
                self._tell(study, trial, outcome)
            if self.live is not None:
                self.live.update(self._table())
            if self.stop_signal is not None and in_flight:
                self._forward_signal()

    def _on_signal(self, signum, frame) -> None:
        """Parent of workers: stop starting trials and pass the signal on; train() in each ends its run KILLED."""
        first = self.stop_signal is None
        if first:
            self.stop_signal = signum
        if self.workers == 1:
            if first:
                raise Interrupted(signum)
            return
        self._forward_signal()

    def _forward_signal(self) -> None:
        import multiprocessing

        for child in multiprocessing.active_children():
            try:
                os.kill(child.pid, signal.SIGTERM)
            except OSError:
                pass

    # ---- the summary

    def _finish(self, status: str) -> None:
        from mlflow.entities import Metric, RunTag

        runs = self.children()
        # RUNNING children whose worker died never ended: end them now
        for run in runs:
            if run.info.status == "RUNNING" and not self.join:
                self.client.set_terminated(run.info.run_id, "KILLED" if status == "KILLED" else "FAILED")
        rows = self._rows(self.children())
        csv = self.root / "summary.csv"
        import csv as csv_mod

        keys = ["trial", "state", "run_id", "config_key", "params", self.spec.metric, "test_acc", "wall_time", "reason"]
        with open(csv, "w", newline="") as f:
            writer = csv_mod.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: row.get(k) for k in keys})
        self.client.log_artifact(self.parent_id, str(csv))
        self.client.log_artifact(self.parent_id, str(self.root / "sweep.yaml"))
        groups = self._groups(rows)
        best = groups[0] if groups else None
        now = int(time.time() * 1000)
        counts = {s: sum(r["state"] == s for r in rows) for s in ("FINISHED", "FAILED", "KILLED", "PRUNED")}
        metrics = [Metric(f"n_{s.lower()}", n, now, 0) for s, n in counts.items()]
        tags = []
        if best is not None:
            metrics += [Metric(f"best_{self.spec.metric}", best["mean"], now, 0)]
            if best["test_mean"] is not None:
                metrics.append(Metric("best_test_acc", best["test_mean"], now, 0))
            tags += [RunTag("cnnlab.best_trials", " ".join(best["trials"])),
                     RunTag("cnnlab.best_params", best["params"])]
        self.client.log_batch(self.parent_id, metrics=metrics, tags=tags)
        self.client.set_terminated(self.parent_id, status)

    def _rows(self, runs) -> List[Dict[str, Any]]:
        """One row per trial key: its latest run (a re-run replaces a FAILED or KILLED attempt)."""
        latest = {run.data.tags.get("cnnlab.trial_key", run.info.run_id): run for run in runs}  # runs: oldest first
        rows = []
        for run in latest.values():
            tags, m = run.data.tags, run.data.metrics
            state = tags.get("cnnlab.state", run.info.status)
            value = m.get(f"{self.spec.metric}_best", m.get(self.spec.metric))
            swept = json.loads(tags.get("cnnlab.swept", "{}"))
            rows.append({
                "trial": tags.get("cnnlab.trial", run.info.run_name), "state": state, "run_id": run.info.run_id,
                "config_key": tags.get("cnnlab.config_key", ""),
                "params": " ".join(f"{k}={v}" for k, v in swept.items() if k != "seed"),
                self.spec.metric: value, "test_acc": m.get("test_acc") if state == "FINISHED" else None,
                "wall_time": m.get("wall_time"), "reason": tags.get("cnnlab.end_reason", ""),
            })
        return rows

    def _groups(self, rows) -> List[Dict[str, Any]]:
        """Per configuration over its FINISHED seeds: mean +- std of the objective and test_acc, best first."""
        by_key: Dict[str, List[Dict[str, Any]]] = {}
        for row in rows:
            if row["state"] == "FINISHED" and row[self.spec.metric] is not None:
                by_key.setdefault(row["config_key"], []).append(row)
        groups = []
        for key, members in by_key.items():
            values = [r[self.spec.metric] for r in members]
            tests = [r["test_acc"] for r in members if r["test_acc"] is not None]
            groups.append({
                "params": members[0]["params"], "trials": [r["trial"] for r in members], "n": len(members),
                "mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "test_mean": statistics.fmean(tests) if tests else None,
                "test_std": statistics.stdev(tests) if len(tests) > 1 else 0.0,
            })
        groups.sort(key=lambda g: g["mean"], reverse=self.spec.direction == "maximize")
        return groups

    def summary(self) -> Dict[str, Any]:
        rows = self._rows(self.children())
        return {"rows": rows, "groups": self._groups(rows), "parent_run_id": self.parent_id}


def _fmt(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.4f}"


def _is_tty() -> bool:
    import sys

    return sys.stderr.isatty()


def _cuda_device_count() -> int:
    """GPUs visible, asked in a child process so that this one never initialises CUDA before forking workers."""
    import subprocess
    import sys

    try:
        out = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.device_count())"],
                             capture_output=True, text=True, timeout=60)
        return int(out.stdout.strip() or 0)
    except (OSError, ValueError, subprocess.SubprocessError):
        return 0
