"""What a sweep is: a `Spec` (fixed overrides, a search space in Hydra's grammar, a strategy, a budget,
an objective), the `Trial`s it expands to, and the `Outcome` of each.

Search spaces use Hydra's override grammar (`lr=0.1,0.01`, `choice()`, `range()`, `interval()`,
`tag(log, ...)`), parsed by Hydra's OverridesParser. Named sweeps live in `conf/sweep/*.yaml`.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional

from ..errors import CnnlabError


@dataclass
class Spec:
    name: Optional[str] = None  # stable sweep name; default: derived from the spec
    strategy: str = "grid"  # a name in sweeps/strategies/ (grid | random | optuna | list)
    trials: Optional[int] = None  # random/optuna: how many (default 10); grid/list: all of them
    repeats: int = 1  # seeds per configuration (seed, seed+1, ...)
    max_repeats: Optional[int] = None  # set: --repeats auto, more seeds while the best is not clear, up to this
    confidence: float = 0.95  # of the verdicts (--repeats auto's, and the standings the summary shows)
    metric: str = "val_acc"  # the objective: val_acc or val_loss, at the best epoch; the test set never chooses
    direction: Optional[str] = None  # maximize | minimize; default: maximize val_acc, minimize val_loss
    sampler: str = "tpe"  # optuna: tpe | random | cmaes | gp | qmc
    pruner: str = "none"  # optuna: none | median | hyperband
    seed: int = 0  # sampling seed (random, optuna)
    overrides: List[str] = field(default_factory=list)  # fixed, applied to every trial before its own values
    cli_overrides: List[str] = field(default_factory=list)  # fixed, from the command line: applied last, they win
    space: List[str] = field(default_factory=list)  # sweep overrides: "lr=0.1,0.01", "dropout=interval(0,0.5)"
    configs: List[List[str]] = field(default_factory=list)  # strategy=list: one override list per config

    @property
    def fixed(self) -> List[str]:
        return [*self.overrides, *self.cli_overrides]


@dataclass
class Trial:
    id: str  # T0, T1, ... within the sweep
    overrides: List[str]  # everything passed to compose: fixed + this trial's values
    params: Dict[str, str]  # the swept values, for tables
    key: str = ""  # hash of the resolved config (seed included): the identity used to resume
    group: str = ""  # hash without the seed: repeats of one configuration share it
    number: Optional[int] = None  # the strategy's own number for it (Optuna's trial number)


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


def parse(texts: List[str]):
    """Hydra override objects of `texts`; a syntax error is a CnnlabError."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        return OverridesParser.create().parse_overrides(list(texts))
    except HydraException as exc:
        raise CnnlabError(f"Bad sweep override in {' '.join(texts)}: {exc}") from None


def read_spec(args: List[str], **options: Any) -> Spec:
    """The spec of `cnnlab sweep ARGS --options`: `sweep=NAME` loads conf/sweep/NAME.yaml, other
    ARGS with sweep syntax join its space (replacing a dimension with the same key), the rest
    become fixed overrides; options that are not None win over the file."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from ..config import hydra_message
    from ..schema import conf_dirs

    spec = OmegaConf.structured(Spec)
    rest = []
    for arg in args:
        if arg.startswith("sweep="):
            name = arg[len("sweep="):]
            found = [d / "sweep" / f"{name}.yaml" for d in conf_dirs() if (d / "sweep" / f"{name}.yaml").is_file()]
            if not found:
                names = sorted({p.stem for d in conf_dirs() for p in (d / "sweep").glob("*.yaml")})
                where = ", ".join(str(d / "sweep") for d in conf_dirs())
                raise CnnlabError(f"No sweep named {name!r} in {where}. Valid: {', '.join(names) or 'none'}.")
            path = found[0]
            try:
                spec = OmegaConf.merge(spec, OmegaConf.load(path))
            except OmegaConfBaseException as exc:
                raise CnnlabError(f"{path}: {hydra_message(exc)}") from None
        else:
            rest.append(arg)
    spec = OmegaConf.to_object(spec)
    for override, text in zip(parse(rest), rest):
        if override.is_sweep_override():
            key = override.get_key_element()
            spec.space = [s for s in spec.space if parse([s])[0].get_key_element() != key] + [text]
        else:
            spec.cli_overrides.append(text)
    for name, value in options.items():
        if value is not None:
            setattr(spec, name, value)
    if spec.direction is None:
        spec.direction = "minimize" if str(spec.metric).endswith("loss") else "maximize"
    return spec


def sweep_name(spec: Spec) -> str:
    if spec.name:
        return spec.name
    defaults = {"max_repeats": None, "confidence": 0.95}  # added later: at their defaults, names stay as they were
    text = json.dumps({k: v for k, v in asdict(spec).items() if k != "name" and (k not in defaults or
                                                                               v != defaults[k])}, sort_keys=True)
    return f"{spec.strategy}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def format_value(value: Any) -> str:
    """An override value: floats in full (the trial's identity), the rest as written."""
    return repr(value) if isinstance(value, float) else str(value)


def short(value: str) -> str:
    """A swept value for tables: 0.0020547625125 -> 0.002055."""
    if len(value) <= 8:
        return value
    try:
        return f"{float(value):.4g}"
    except ValueError:
        return value


_composers: Dict[str, Any] = {}


def resolved(overrides: List[str]):
    """The resolved config of a trial with these overrides. Trials are composed through one config.Composer
    per set of config directories: a few ms each, not Hydra's ~50 ms."""
    from ..config import Composer, resolve
    from ..schema import conf_dirs

    composer = _composers.setdefault(str(conf_dirs()), Composer())
    return resolve(composer(overrides))


def override_key(text: str) -> str:
    return text.split("=", 1)[0].lstrip("+~")


def merged(overrides: List[str]) -> List[str]:
    """Each key once, its last value winning where it stood first (what Hydra would apply; a repeated
    config-group choice would be an error there)."""
    last = {override_key(o): o for o in overrides}
    return [last[k] for k in dict.fromkeys(override_key(o) for o in overrides)]


def base_seed(spec: Spec) -> int:
    from ..config import compose

    return int(compose(spec.fixed).seed)
