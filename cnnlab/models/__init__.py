"""The architecture registry.

Adding an architecture is one module in this package with a builder decorated by `@register`,
plus one `conf/arch/<name>.yaml` holding its training recipe. A builder takes the input shape
(`num_classes`, `in_channels`, `image_size`) and keyword-only knobs; its signature is the single
source of what the architecture accepts and of its defaults:

- keywords named like the common knobs (`dense_units`, `dropout`, `batch_norm`, `pool`,
  `activation`, `width`, `depth`) are the knobs it honours, set from top-level config keys;
- any other keyword is an architecture parameter, set as `arch.<name>=...`;
- `@register("resnet18", depth=18)` presets keywords: a preset is part of what the name means,
  so it is fixed (`arch=resnet18 depth=50` is refused and names resnet50 instead).

Hooks a model may offer (training.py and engine.py use them when present):

- `prepare(images)`: layers set from data before training (airbench's patch whitening); called
  once with up to 5,000 normalised training images.
- auxiliary outputs: in training mode `forward` may return `(logits, aux1, ...)`; each auxiliary
  loss is added with weight `model.aux_weight` (GoogLeNet). In eval mode it returns logits only.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import typing
from dataclasses import dataclass, field, make_dataclass
from typing import Any, Callable, Dict, Tuple

from ..errors import CnnlabError
from ..schema import KNOBS

INPUTS = ("num_classes", "in_channels", "image_size")
_REGISTRY: Dict[str, "ArchSpec"] = {}


def _shown(value: Any) -> str:
    """A value as the user typed it (enums by their value, booleans lower case)."""
    value = getattr(value, "value", value)
    return str(value).lower() if isinstance(value, bool) else str(value)


@dataclass(frozen=True)
class ArchSpec:
    name: str
    builder: Callable
    defaults: Dict[str, Any]  # every keyword the builder takes, with this arch's default (presets included)
    description: str
    fixed: Dict[str, Any] = field(default_factory=dict)  # the presets: part of the name, not knobs

    @property
    def knobs(self) -> Tuple[str, ...]:
        return tuple(k for k in KNOBS if k in self.defaults and k not in self.fixed)

    @property
    def params(self) -> Tuple[str, ...]:
        return tuple(k for k in self.defaults if k not in KNOBS and k not in self.fixed)

    @property
    def params_schema(self) -> type:
        """A dataclass of the architecture parameters, for OmegaConf to type-check `arch.*`."""
        hints = typing.get_type_hints(self.builder)
        fields = [(p, hints.get(p, Any), field(default=self.defaults[p])) for p in self.params]
        return make_dataclass(f"{self.name}_params", fields)

    def check_knob(self, knob: str, value: Any) -> None:
        """Refuse a knob this architecture has no part for, or a preset set to another value."""
        if knob in self.fixed:
            if value == self.fixed[knob]:
                return
            others = [s.name for s in registry().values() if s.builder is self.builder and s.fixed.get(knob) == value]
            siblings = ", ".join(f"{s.name} ({knob}={s.fixed[knob]})" for s in registry().values()
                                 if s.builder is self.builder and knob in s.fixed)
            instead = f"use arch={others[0]}" if others else f"no architecture has {knob}={_shown(value)}; the " \
                                                             f"family is: {siblings}"
            raise CnnlabError(f"arch={self.name} has {knob}={self.fixed[knob]} built in, so {knob}={_shown(value)} "
                              f"would build another model under its name: {instead}.")
        if knob not in self.knobs:
            takes = ", ".join(self.knobs) or "none"
            raise CnnlabError(f"arch={self.name} does not take {knob}={_shown(value)}: it has no such part. "
                              f"The knobs it takes are: {takes}.")

    def build(self, num_classes: int = 10, in_channels: int = 3, image_size: int = 32, **kwargs):
        unknown = set(kwargs) - set(self.defaults)
        if unknown:
            raise CnnlabError(f"arch={self.name} takes no {', '.join(sorted(unknown))}.")
        for key in set(kwargs) & set(self.fixed):
            self.check_knob(key, kwargs[key])
        return self.builder(
            num_classes=num_classes, in_channels=in_channels, image_size=image_size,
            **{**self.defaults, **kwargs},
        )


def register(name: str, description: str = "", **preset: Any) -> Callable:
    """Register `builder` as architecture `name`; `preset` fixes some of its keywords."""

    def decorate(builder: Callable) -> Callable:
        signature = inspect.signature(builder)
        defaults = {
            p.name: p.default
            for p in signature.parameters.values()
            if p.name not in INPUTS and p.default is not inspect.Parameter.empty
        }
        missing = set(preset) - set(defaults)
        if missing:
            raise TypeError(f"{builder.__name__} has no keyword(s) {sorted(missing)} to preset")
        doc = description or (builder.__doc__ or "").strip().splitlines()[0]
        _REGISTRY[name] = ArchSpec(name, builder, {**defaults, **preset}, doc, dict(preset))
        return builder

    return decorate


_loaded = False


def registry() -> Dict[str, ArchSpec]:
    """Every architecture: importing each module of this package registers its builders."""
    global _loaded
    if not _loaded:
        for module in pkgutil.iter_modules(__path__):
            importlib.import_module(f"{__name__}.{module.name}")
        _loaded = True
    return dict(sorted(_REGISTRY.items()))


def get_arch(name: str) -> ArchSpec:
    archs = registry()
    if name not in archs:
        raise CnnlabError(f"Unknown architecture {name!r}. Valid: {', '.join(archs)}.")
    return archs[name]


def build_model(cfg, num_classes: int = 10, in_channels: int = 3):
    """The model of a resolved config (see config.resolve)."""
    spec = get_arch(cfg.arch.name)
    kwargs = {k: cfg[k] for k in spec.knobs}
    # a parameter added after a checkpoint was written takes its default (its value then)
    kwargs.update({k: cfg.arch.get(k, spec.defaults[k]) for k in spec.params})
    kwargs = {k: (v.value if hasattr(v, "value") else v) for k, v in kwargs.items()}  # enums -> str
    return spec.build(num_classes=num_classes, in_channels=in_channels, image_size=cfg.image_size, **kwargs)
