"""Grid: every combination of the listed values (`lr=0.1,0.01 dropout=0,0.5`: 4 configurations)."""

from __future__ import annotations

import itertools
from typing import Dict, List

from ...errors import CnnlabError
from ..spec import parse
from . import PlanAhead, register


@register("grid")
class Grid(PlanAhead):
    def check(self) -> None:
        if not self.spec.space and self.spec.repeats > 1:
            return  # one configuration, several seeds: the most common reason for repeats
        super().check()
        for override in parse(self.spec.space):
            if type(override.value()).__name__ == "IntervalSweep":
                raise CnnlabError(f"{override.input_line}: interval() is continuous and cannot be a grid; use "
                                  "--strategy random or optuna, or list values (a=1,2,3).")

    def points(self) -> List[Dict[str, str]]:
        dims = [(o.get_key_element(), list(o.sweep_string_iterator())) for o in parse(self.spec.space)]
        return [dict(zip([k for k, _ in dims], combo)) for combo in itertools.product(*[v for _, v in dims])]
