"""Configuration: composition of `conf/` with Hydra against the schema, and validation.

`compose(overrides)` gives the config Hydra builds from `conf/config.yaml` plus the user's
overrides, type-checked against `schema.Config`. `resolve(cfg)` then checks ranges and what the
chosen architecture accepts, and fills in the effective value of every knob, so that what is
logged is what ran.
"""

from __future__ import annotations

import re
from typing import List, Tuple

from .errors import CnnlabError, causes
from .schema import KNOBS, NOT_IN_KEY, RANGES, TORCH_NS_COEFFICIENTS, Config, conf_dir, conf_dirs

_schema_registered = False


def _register_schema() -> None:
    global _schema_registered
    if not _schema_registered:
        from hydra.core.config_store import ConfigStore

        ConfigStore.instance().store(name="cnnlab_schema", node=Config)
        _schema_registered = True


def hydra_message(exc: BaseException) -> str:
    """Hydra wraps the useful part ('could not be converted to Float') in a cause: keep both."""
    parts = []
    for exc in causes(exc):
        lines = [line.strip() for line in str(exc).splitlines()]
        # drop OmegaConf's bookkeeping lines (full_key, object_type) and unformatted templates
        text = " ".join(l for l in lines if l and not l.startswith(("full_key:", "object_type=", "reference_type=")))
        text = re.sub(r"\s*To append to your config use \S+", "", text)  # a typo needs fixing, not a `+`
        if text and "$VALUE" not in text and text not in parts:
            parts.append(text)
    return ": ".join(parts)


def schema_keys() -> List[str]:
    """Every key the schema knows, dotted (data.n_train, eval.targets, ...); `arch` holds free arch.* keys."""
    from dataclasses import fields, is_dataclass

    def walk(cls, prefix: str) -> List[str]:
        keys = []
        for f in fields(cls):
            default = f.default_factory() if callable(f.default_factory) else f.default
            if is_dataclass(default):
                keys += walk(type(default), f"{prefix}{f.name}.")
            else:
                keys.append(f"{prefix}{f.name}")
        return keys

    return walk(Config, "")


def config_groups() -> set:
    """The config groups (arch, data, recipe, ...): subdirectories of every config directory."""
    return {p.name for d in conf_dirs() for p in d.iterdir() if p.is_dir()}


def check_keys(overrides: List[str]) -> None:
    """Refuse an override of a key the schema does not know, with or without Hydra's `+` (which would record
    a param that does nothing), suggesting the closest valid key."""
    import difflib

    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException:
        return  # a syntax error: Hydra's own message says where
    groups = config_groups()
    valid = schema_keys()
    for override in parsed:
        key = override.get_key_element().lstrip("+~")
        if key in groups or key in valid or key.startswith("arch."):
            continue
        close = difflib.get_close_matches(key, valid + sorted(groups), n=1, cutoff=0.6)
        hint = f" Did you mean {close[0]}?" if close else ""
        top = sorted({k.split(".")[0] for k in valid} | groups)
        raise CnnlabError(f"Unknown config key {key!r} (in {override.input_line!r}).{hint} Valid keys: "
                          f"{', '.join(top)} (and data.*, eval.*, tracking.*, arch.<parameter>; see `cnnlab train "
                          "--cfg`).")


def compose(overrides: List[str]):
    """The config of `conf/config.yaml` with Hydra `overrides`; bad input raises CnnlabError."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    directory = conf_dir()
    check_keys(overrides)
    check_conflicts(overrides)
    _register_schema()
    # the project's configs are layered over cnnlab's own: Hydra looks in the primary directory, then these
    search = [d.as_uri() for d in conf_dirs() if d != directory]
    hydra_overrides = [f"hydra.searchpath=[{','.join(search)}]"] if search else []
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(directory), version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=[*overrides, *hydra_overrides])
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        raise CnnlabError(_compose_message(exc, overrides)) from None
    finally:
        GlobalHydra.instance().clear()
    return cfg


def _compose_message(exc: BaseException, overrides: List[str]) -> str:
    """One paragraph for what Hydra refused: a preset that does not exist with the valid ones, an arch.<p> the
    chosen architecture does not have with the ones it has; else Hydra's own words."""
    from hydra.errors import MissingConfigException

    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file and "/" in exc.missing_cfg_file:
        group, name = exc.missing_cfg_file.rsplit("/", 1)
        return (f"{group}={name} is not one of the {group} presets. Valid: {', '.join(exc.options or [])} "
                f"(a project adds its own as conf/{group}/<name>.yaml).")
    missing = re.search(r"Could not override '(arch\.\w+)'", str(exc))
    if missing:
        from .models import registry

        param = missing.group(1).split(".", 1)[1]
        # the architecture the other overrides choose (arch=, or a recipe's)
        others = [o for o in overrides if not o.lstrip("+~").startswith("arch.")]
        try:
            spec = registry().get(compose(others).arch.name)
        except CnnlabError:
            spec = None
        has = sorted(name for name, other in registry().items() if param in other.params)
        if spec is not None:
            valid = ", ".join(f"arch.{p}" for p in spec.params) or "none"
            where = f" It belongs to arch={' / arch='.join(has)}." if has else ""
            if param in spec.knobs:  # the knobs every architecture shares are top-level keys
                where = f" {param} is a key of its own ({param}=...)."
            return (f"arch={spec.name} has no parameter {param!r} (in {missing.group(1)}=...).{where} The "
                    f"parameters of arch={spec.name} are: {valid}.")
    return f"Bad config override(s) {' '.join(overrides)!s}: {hydra_message(exc)}"


def check_conflicts(overrides: List[str]) -> None:
    """budget= decides epochs and max_steps itself: giving either beside it would be silently dropped."""
    keys = {o.split("=", 1)[0].lstrip("+~") for o in overrides if "=" in o}
    clash = sorted(keys & {"epochs", "max_steps"})
    if "budget" in keys and clash:
        raise CnnlabError(f"budget= plans the run's length itself, so {' and '.join(f'{k}=' for k in clash)} would "
                          f"be ignored: give budget= alone to train for a time, or {clash[0]}= without budget= to "
                          "train for a fixed length.")


class Composer:
    """compose() for many override lists that differ in plain values (a sweep's trials): Hydra composes each
    distinct choice of config groups (arch=, data=, recipe=) once, and each list's plain key=value overrides
    are merged onto a copy with OmegaConf, type-checked by the schema as Hydra would. Anything else (`+`,
    `~`, a package) goes through compose() as it is."""

    def __init__(self):
        self.groups = config_groups()
        self.cache = {}

    def __call__(self, overrides: List[str]):
        import copy

        from hydra.core.override_parser.overrides_parser import OverridesParser
        from hydra.errors import HydraException
        from omegaconf import OmegaConf
        from omegaconf.errors import OmegaConfBaseException

        try:
            parsed = OverridesParser.create().parse_overrides(list(overrides))
        except HydraException:
            return compose(overrides)  # Hydra's own message
        if any(o.type.name != "CHANGE" or o.package is not None for o in parsed):
            return compose(overrides)
        check_keys(overrides)
        check_conflicts(overrides)
        chosen = tuple(o.input_line for o in parsed if o.key_or_group in self.groups)
        if chosen not in self.cache:
            self.cache[chosen] = compose(list(chosen))
        cfg = copy.deepcopy(self.cache[chosen])
        try:
            for o in parsed:
                if o.key_or_group not in self.groups:
                    OmegaConf.update(cfg, o.key_or_group, o.value(), merge=True)
        except OmegaConfBaseException as exc:
            raise CnnlabError(f"Bad config override(s) {' '.join(overrides)}: {hydra_message(exc)}") from None
        return cfg


def check_ranges(cfg) -> None:
    import math

    from omegaconf import OmegaConf

    for key, value in flatten(to_dict(cfg)).items():
        if isinstance(value, float) and not math.isfinite(value):
            raise CnnlabError(f"{key}={value} is not a finite number.")
    for key, (ok, valid) in RANGES.items():
        value = OmegaConf.select(cfg, key)
        if value is not None and not ok(value):
            shown = str(value) if len(str(value)) <= 60 else f"{str(value)[:40]}... ({len(str(value)):,} characters)"
            raise CnnlabError(f"{key}={shown} is out of range: it must be {valid}.")
    if not cfg.arch.get("name"):
        raise CnnlabError("No architecture chosen: pass arch=<name> (see `cnnlab models`).")


def resolve(cfg):
    """Check `cfg` fully and return a copy with every knob and arch parameter made explicit."""
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    from .models import get_arch
    from .target_data import check_names

    check_ranges(cfg)
    check_names(list(cfg.eval.targets), cfg.data.root, cfg.data.name)
    spec = get_arch(cfg.arch.name)
    cfg = cfg.copy()
    for knob in KNOBS:
        if cfg[knob] is not None:
            spec.check_knob(knob, cfg[knob])
    given = {k: v for k, v in cfg.arch.items() if k != "name"}
    try:
        params = OmegaConf.merge(OmegaConf.structured(spec.params_schema), given)
    except OmegaConfBaseException as exc:
        valid = ", ".join(f"arch.{p}" for p in spec.params) or "none"
        raise CnnlabError(
            f"Bad architecture parameter for arch={spec.name}: {hydra_message(exc)}. "
            f"Its parameters are: {valid}."
        ) from None
    with open_dict(cfg):
        for knob in spec.knobs:
            if cfg[knob] is None:
                cfg[knob] = spec.defaults[knob]
        cfg.arch = {"name": spec.name, **OmegaConf.to_container(params)}
    check_ranges(cfg)
    check_progressive(cfg)
    return cfg


def check_progressive(cfg) -> None:
    """Progressive resizing trains the early epochs smaller, then at least one at image_size, for a fixed length."""
    early, size = cfg.progressive_epochs, cfg.progressive_size
    if not early:
        return
    if cfg.budget:
        raise CnnlabError(f"progressive_epochs={early} cannot be combined with budget=: the budget plans with one step "
                          f"time for the whole run, and the epochs at progressive_size={size} are faster. Give epochs= "
                          "for a fixed length, or drop progressive_epochs=.")
    if early >= cfg.epochs:
        raise CnnlabError(f"progressive_epochs={early} leaves no epoch at image_size={cfg.image_size} (epochs="
                          f"{cfg.epochs}): the last epochs must train at the size the model is tested at. Give fewer "
                          "than epochs.")
    if size >= cfg.image_size:
        raise CnnlabError(f"progressive_size={size} is not smaller than image_size={cfg.image_size}: progressive "
                          "resizing trains the early epochs at a lower resolution. Give a smaller size, e.g. "
                          f"progressive_size={cfg.image_size * 3 // 4}.")


def to_dict(cfg) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


def flatten(tree: dict, prefix: str = "") -> dict:
    """{'data': {'name': 'x'}} -> {'data.name': 'x'}: how params are logged and compared."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# keys (or arch.<parameter>s) added after runs were recorded: (key, its off value, the keys that only matter
# beside it). A config with the key off leaves all of them out of its hash, so every earlier run keeps its identity.
ADDED_LATER = (
    ("init_from", None, ("transfer", "body_lr")),  # transfer learning
    ("tta_share", 1.0, ()),
    ("translate_fill", "zeros", ()),
    ("progressive_epochs", 0, ("progressive_size",)),
    ("arch.head_std", 0.0, ()),
    ("arch.whiten_bias_epochs", 0.0, ()),
    ("brightness", 0.0, ()),
    ("contrast", 0.0, ()),
    ("muon_norm_every", 1, ()),
    ("arch.bn_momentum", 0.4, ()),
    ("muon_ns_coefficients", list(TORCH_NS_COEFFICIENTS), ()),
    ("arch.stem_activation", "", ()),
)


def identity(cfg) -> Tuple[str, str]:
    """(trial key, config key) of a resolved config: hashes of what it computes, with and without the seed.
    Runs with the same trial key compute the same thing (a re-run is an attempt); runs with the same config
    key differ at most in their seed (repeats of one configuration)."""
    import hashlib
    import json

    tree = to_dict(cfg)
    for name in NOT_IN_KEY:
        tree.pop(name, None)
    for name, off, beside in ADDED_LATER:
        *parents, leaf = name.split(".")  # arch.<parameter>: a key of the arch node
        node = tree
        for parent in parents:
            node = node.get(parent) or {}
        if (node.get(leaf) == off) if off else not node.get(leaf):
            for key in (leaf, *beside):
                node.pop(key, None)
    if tree.get("budget"):  # a budget run is what its budget says, not the steps it planned on one machine
        tree.pop("max_steps")
        tree.pop("epochs")
    digest = lambda t: hashlib.sha1(json.dumps(t, sort_keys=True, default=str).encode()).hexdigest()[:16]  # noqa
    key = digest(tree)
    tree.pop("seed")
    return key, digest(tree)
