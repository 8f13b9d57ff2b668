"""List: the configurations a sweep file names one by one (`configs:` in conf/sweep/exercise.yaml), as the
exercise's training log does."""

from __future__ import annotations

from typing import Dict, List

from ...errors import CnnlabError
from . import PlanAhead, register


@register("list")
class ConfigList(PlanAhead):
    def check(self) -> None:
        if self.spec.space:
            raise CnnlabError(f"strategy=list runs the listed configs; it takes no search space "
                              f"({', '.join(self.spec.space)}).")
        if not self.spec.configs:
            raise CnnlabError("strategy=list needs `configs:` (a list of override lists) in the sweep file.")

    def points(self) -> List[Dict[str, str]]:
        return [{o.split("=", 1)[0]: o.split("=", 1)[1] if "=" in o else "" for o in config}
                for config in self.spec.configs]
