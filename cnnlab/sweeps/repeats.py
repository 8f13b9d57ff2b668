"""`--repeats auto`: seeds until it is clear which configuration is best.

After the planned seeds (2 per configuration unless the spec says more), each round gives one more seed to the
best configuration and to every one not separated from it (summary.groups' standing: tied, or not yet tested),
until the best is separated from the runner-up at the sweep's confidence, or every configuration still in the
running has `max_repeats` seeds. Each round is decided from the record (the sweep's FINISHED trials), so a
resumed sweep carries on where it stood; a seed already FINISHED is never run again.
"""

from __future__ import annotations

import itertools
from typing import Dict, List, Optional, Set, Tuple, Union

from .. import summary
from ..config import identity
from ..errors import CnnlabError
from ..record import Record
from .spec import Spec, Trial, base_seed, merged, resolved

AUTO_START = 2  # seeds per configuration before the first verdict: one seed has no spread to judge
AUTO_CAP = 10  # the most seeds auto gives a configuration unless told (--max-repeats)


def parse_repeats(repeats: Union[None, int, str], max_repeats: Optional[int]) -> Tuple[Optional[int], Optional[int]]:
    """--repeats N | auto and --max-repeats M -> (seeds to start with, the cap: None unless auto)."""
    if repeats == "auto":
        return AUTO_START, max_repeats or AUTO_CAP
    if max_repeats is not None:
        raise CnnlabError(f"--max-repeats {max_repeats} goes with --repeats auto (it caps the seeds auto adds).")
    if repeats is None:
        return None, None
    try:
        return int(repeats), None
    except ValueError:
        raise CnnlabError(f"--repeats {repeats}: give a number of seeds (3) or auto.") from None


class AutoRepeats:
    def __init__(self, spec: Spec, planned: List[Trial]):
        self.spec = spec
        self.templates: Dict[str, Trial] = {}  # config key -> a planned trial of it
        for t in planned:
            self.templates.setdefault(t.group, t)
        self.seed0 = base_seed(spec)
        self.tried: Dict[str, Set[int]] = {}  # config key -> seeds this command started beyond the plan
        self.numbers = [int(t.id[1:]) for t in planned if t.id[1:].isdigit()]
        self.outcome = ""  # what the last round decided, in words

    def next_round(self, children: List[Record]) -> List[Trial]:
        """The trials of the next round (none: it is decided, and `outcome` says how)."""
        ranked = summary.groups(children, self.spec.metric, self.spec.direction, self.spec.confidence)
        if len(ranked) < 2:
            self.outcome = "repeats auto: one configuration FINISHED, nothing to separate"
            return []
        best, runner = ranked[0], ranked[1]
        if runner.standing == "below":
            self.outcome = (f"repeats auto: the best is separated from the runner-up at {self.spec.confidence:.0%} "
                            f"with {best.n} and {runner.n} seeds: {runner.against_best.words()}")
            return []
        todo = [g for g in ranked if g.standing != "below" and g.n < self.spec.max_repeats
                and len(self.tried.get(g.config_key, ())) < self.spec.max_repeats and g.config_key in self.templates]
        if not todo:
            said = runner.against_best.words() if runner.against_best else "too few seeds FINISHED to judge"
            self.outcome = (f"repeats auto: stopped at the cap of {self.spec.max_repeats} seeds with the best not "
                            f"separated from the runner-up at {self.spec.confidence:.0%}: {said}")
            return []
        return [self._trial(g, children) for g in todo]

    def _trial(self, group: summary.Group, children: List[Record]) -> Trial:
        """The configuration's next seed: the first not FINISHED and not started by this command."""
        tried = self.tried.setdefault(group.config_key, set())
        seed = next(s for s in itertools.count(self.seed0) if s not in group.seeds and s not in tried)
        tried.add(seed)
        template = self.templates[group.config_key]
        overrides = merged([*template.overrides, f"seed={seed}"])
        key, config_key = identity(resolved(overrides))
        earlier = [r.trial for r in children if r.trial_key == key and r.trial]  # a resumed sweep's trial
        if earlier:
            trial_id = earlier[0]
        else:
            taken = self.numbers + [int(r.trial[1:]) for r in children if r.trial and r.trial[1:].isdigit()]
            trial_id = f"T{max(taken, default=-1) + 1}"
            self.numbers.append(int(trial_id[1:]))
        return Trial(trial_id, overrides, {**template.params, "seed": str(seed)}, key, config_key)
