"""Configuration: composition of `conf/` with Hydra against the schema, and validation.

`compose(overrides)` gives the config Hydra builds from `conf/config.yaml` plus the user's
overrides, type-checked against `schema.Config`. `resolve(cfg)` then checks ranges and what the
chosen architecture accepts, and fills in the effective value of every knob, so that what is
logged is what ran.
"""

from __future__ import annotations

from typing import List, Tuple

from .errors import CnnlabError
from .schema import KNOBS, NOT_IN_KEY, RANGES, Config, conf_dir

_schema_registered = False


def _register_schema() -> None:
    global _schema_registered
    if not _schema_registered:
        from hydra.core.config_store import ConfigStore

        ConfigStore.instance().store(name="cnnlab_schema", node=Config)
        _schema_registered = True


def hydra_message(exc: BaseException) -> str:
    """Hydra wraps the useful part ('could not be converted to Float') in a cause: keep both."""
    parts, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        lines = [line.strip() for line in str(exc).splitlines()]
        # drop OmegaConf's bookkeeping lines (full_key, object_type) and unformatted templates
        text = " ".join(l for l in lines if l and not l.startswith(("full_key:", "object_type=", "reference_type=")))
        if text and "$VALUE" not in text and text not in parts:
            parts.append(text)
        exc = exc.__cause__ or exc.__context__
    return ": ".join(parts)


def compose(overrides: List[str]):
    """The config of `conf/config.yaml` with Hydra `overrides`; bad input raises CnnlabError."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    directory = conf_dir()
    if not (directory / "config.yaml").is_file():
        raise CnnlabError(f"No config.yaml in {directory}: set CNNLAB_CONF_DIR to cnnlab's conf/ directory.")
    _register_schema()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(directory), version_base="1.3"):
            cfg = hydra_compose(config_name="config", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        raise CnnlabError(f"Bad config override(s) {' '.join(overrides)!s}: {hydra_message(exc)}") from None
    finally:
        GlobalHydra.instance().clear()
    return cfg


def check_ranges(cfg) -> None:
    from omegaconf import OmegaConf

    for key, (ok, valid) in RANGES.items():
        value = OmegaConf.select(cfg, key)
        if value is not None and not ok(value):
            raise CnnlabError(f"{key}={value} is out of range: it must be {valid}.")
    if not cfg.arch.get("name"):
        raise CnnlabError("No architecture chosen: pass arch=<name> (see `cnnlab models`).")


def resolve(cfg):
    """Check `cfg` fully and return a copy with every knob and arch parameter made explicit."""
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    from . import corruptions
    from .models import get_arch

    check_ranges(cfg)
    corruptions.check(list(cfg.eval.targets))
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
    return cfg


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


def identity(cfg) -> Tuple[str, str]:
    """(trial key, config key) of a resolved config: hashes of what it computes, with and without the seed.
    Runs with the same trial key compute the same thing (a re-run is an attempt); runs with the same config
    key differ at most in their seed (repeats of one configuration)."""
    import hashlib
    import json

    tree = to_dict(cfg)
    for name in NOT_IN_KEY:
        tree.pop(name, None)
    digest = lambda t: hashlib.sha1(json.dumps(t, sort_keys=True, default=str).encode()).hexdigest()[:16]  # noqa
    key = digest(tree)
    tree.pop("seed")
    return key, digest(tree)
