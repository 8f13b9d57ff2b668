"""Random search: `--trials N` points drawn with `--sampler-seed` (intervals uniform, or log-uniform with
`tag(log, ...)`; listed values with equal chance)."""

from __future__ import annotations

import math
import random
from typing import Dict, List

from ..spec import format_value, parse
from . import PlanAhead, register


@register("random")
class Random(PlanAhead):
    def points(self) -> List[Dict[str, str]]:
        rng = random.Random(self.spec.seed)
        points = []
        for _ in range(self.spec.trials or 10):
            point = {}
            for o in parse(self.spec.space):
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
                    point[o.get_key_element()] = str(int(round(x))) if ints else format_value(x)
            points.append(point)
        return points
