"""What architectures cost: `cnnlab models` (one line each) and `cnnlab describe` (the lectures' per-layer table).

Both describe an architecture as its builder defines it (the lecture's version), changed only by the
knobs given on the command line; the training recipes in conf/arch/ do not apply here. Parameters and
FLOPs come from torch itself (parameter tensors, torch.utils.flop_counter), not from hand formulas.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from .errors import CnnlabError
from .schema import RANGES

INPUTS = {"image_size": (8, 1024), "num_classes": (1, 100_000), "in_channels": (1, 64)}  # describe's own inputs

LAYER_TYPES = ("Conv2d", "Linear", "MaxPool2d", "AvgPool2d", "MinPool2d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d",
               "LocalResponseNorm")
BYTES = 4  # fp32


@dataclass
class Row:
    name: str
    kind: str
    shape: Tuple[int, ...]
    activations: int
    params: int
    flops: int
    folded: List[str] = field(default_factory=list)  # BN, activation, dropout applied to this layer's output

    @property
    def label(self) -> str:
        return self.kind + (f" + {', '.join(self.folded)}" if self.folded else "")


def parse_args(args: Sequence[str]) -> Tuple[str, Dict[str, Any], Dict[str, Any]]:
    """`arch=vgg16 image_size=224 num_classes=1000 dropout=0.3 arch.growth_rate=24` -> (arch, inputs, knobs)."""
    import yaml

    from .models import get_arch

    values = {}
    for arg in args:
        key, sep, text = arg.partition("=")
        if not sep or not key:
            raise CnnlabError(f"Bad argument {arg!r}: expected key=value (arch=vgg16 image_size=224 num_classes=1000).")
        values[key] = yaml.safe_load(text)
    spec = get_arch(str(values.pop("arch", "tf_cnn")))
    inputs = {}
    for key, (low, high) in INPUTS.items():
        if key in values:
            value = values.pop(key)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise CnnlabError(f"{key}={value}: expected an integer from {low} to {high}.")
            inputs[key] = value
    knobs = {}
    for key, value in values.items():
        name = key[len("arch."):] if key.startswith("arch.") else key
        if name not in spec.defaults:
            valid = [*spec.knobs, *(f"arch.{p}" for p in spec.params), *INPUTS]
            raise CnnlabError(f"arch={spec.name} takes no {key}. Valid: {', '.join(valid)}.")
        if name in RANGES:
            ok, valid = RANGES[name]
            try:
                fine = not isinstance(value, str) and math.isfinite(value) and ok(value)
            except TypeError:
                fine = False
            if not fine:
                raise CnnlabError(f"{key}={value} is out of range: it must be {valid}.")
        knobs[name] = value
    return spec.name, inputs, knobs


def build(name: str, inputs: Dict[str, Any], knobs: Dict[str, Any]):
    from .models import get_arch

    try:
        return get_arch(name).build(**inputs, **knobs).eval()
    except (ValueError, RuntimeError, TypeError) as exc:
        raise CnnlabError(f"arch={name} cannot be built with {inputs or ''} {knobs or ''}: {exc}") from None


def layers(model, in_channels: int, image_size: int) -> List[Row]:
    """One row per layer (conv, dense, pool) in execution order; BN/activation/dropout fold into the layer before."""
    from .engine import leaf_calls

    names = {m: n for n, m in model.named_modules()}
    rows = [Row("input", "", (in_channels, image_size, image_size), in_channels * image_size ** 2, 0, 0)]
    for module, shape, f in leaf_calls(model, in_channels, image_size, "cpu"):
        name = names[module]
        params = sum(p.numel() for p in module.parameters(recurse=False))
        kind = type(module).__name__
        if kind in LAYER_TYPES or len(rows) == 1:
            if kind == "Conv2d":
                k, stride, groups = module.kernel_size, module.stride[0], module.groups
                kind += f" {k[0]}x{k[1]}" + (f" /{stride}" if stride > 1 else "") + (f" g{groups}" if groups > 1 else "")
            rows.append(Row(name, kind, shape, math.prod(shape), params, f))
        else:  # folded into the layer it follows (computed in place: the lectures count no activations for it)
            rows[-1].params += params
            rows[-1].flops += f
            if kind not in ("Flatten", "Identity", "Sequential"):
                rows[-1].folded.append(kind)
    return lecture_names(rows)


def lecture_names(rows: List[Row]) -> List[Row]:
    """Rows named by position in a plain stack of layers (0.1.0) get the lectures' names instead: conv1_1,
    conv1_2, pool1, conv2_1, ..., then fc6, fc7, fc8 after VGG-16's five stages. Named layers keep theirs."""
    stage, index, dense = 1, 0, 0
    for row in rows[1:]:
        kind = row.kind.split()[0]
        numbered = re.fullmatch(r"[\d.]+", row.name) is not None
        if kind == "Conv2d":
            index += 1
            new = f"conv{stage}_{index}"
        elif "Pool" in kind and dense == 0:
            new = f"pool{stage}"
            stage, index = stage + 1, 0
        elif kind == "Linear":
            dense += 1
            new = f"fc{stage + (1 if index else 0) + dense - 1}"
        else:
            new = row.name
        if numbered:
            row.name = new
    return rows


def model_table() -> List[Dict[str, Any]]:
    """Every registered architecture at 3x32x32 input and 10 classes."""
    from .models import registry

    costs = _costs()
    return [{"arch": name, **costs[name], "knobs": list(spec.knobs), "arch_params": list(spec.params),
             "description": spec.description} for name, spec in registry().items()]


def _costs() -> Dict[str, Dict[str, int]]:
    """arch -> parameters and FLOPs at 3x32x32 and 10 classes. Building all the models takes seconds and the
    figures change only with the models' source, engine.py (count_flops) or torch, so they are kept in the cache
    directory under a key of all three; a new architecture or an edited one is measured again."""
    import hashlib
    import json

    import torch

    from .data import data_root
    from .engine import count_flops
    from .models import registry

    here = Path(__file__).parent
    digest = hashlib.sha256(torch.__version__.encode())
    for source in [here / "engine.py", *sorted((here / "models").glob("*.py"))]:  # the models and how FLOPs count
        digest.update(source.name.encode() + source.read_bytes())
    path = data_root() / f"model-costs-{digest.hexdigest()[:16]}.json"
    try:
        costs = json.loads(path.read_text())
        if set(costs) == set(registry()):
            return costs
    except (OSError, ValueError):
        pass
    costs = {}
    for name, spec in registry().items():
        model = spec.build()
        costs[name] = {"params": sum(p.numel() for p in model.parameters()), "flops": count_flops(model, 3, 32, "cpu")}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.{os.getpid()}")
        temp.write_text(json.dumps(costs))
        temp.replace(path)
    except OSError:  # a read-only cache: measured again next time
        pass
    return costs


def human(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n:.0f}"
