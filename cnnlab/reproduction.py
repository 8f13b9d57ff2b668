"""`cnnlab reproduce T3`: train T3's recorded config again as a new run linked to it (tags both ways), then say
whether the result is identical, or what differs between the two environments (environment.py: what every run
records to be run again) and by how much the metrics moved. On the same machine, versions, data and thread
count a CPU run is bit-identical.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from .environment import ENVIRONMENT
from .errors import CnnlabError
from .record import Metric, Record, Store, Tag

COMPARED = (Metric.TEST_ACC, Metric.TEST_LOSS, Metric.VAL_ACC_BEST, Metric.BEST_EPOCH, Metric.EPOCHS_RUN)
CURVES = (Metric.TRAIN_LOSS, Metric.VAL_ACC, Metric.VAL_LOSS)


@dataclass
class Reproduction:
    original: Record
    again: Record
    environment: List[Tuple[str, str, str]] = field(default_factory=list)  # (what, was, now) that differ
    packages: List[str] = field(default_factory=list)  # 'numpy 2.1.0 -> 2.2.0'
    metrics: List[Tuple[str, float, float]] = field(default_factory=list)  # (name, was, now) that differ
    curves: List[Tuple[str, int, float]] = field(default_factory=list)  # (name, epochs that differ, largest gap)

    @property
    def identical(self) -> bool:
        return not self.metrics and not self.curves

    def words(self) -> List[str]:
        head = f"reproduced {self.original.id} as {self.again.id}"
        env = [f"{what}: {was or '(not recorded)'} -> {now or '(not recorded)'}" for what, was, now in self.environment]
        if self.identical:
            scores = ", ".join(f"{k} {self.again.metrics[k]:.4f}" for k in (Metric.TEST_ACC, Metric.VAL_ACC_BEST)
                               if k in self.again.metrics)
            lines = [f"{head}: identical ({scores}; every epoch's {', '.join(CURVES)} equal)."]
            if env:
                lines.append("  although these differ: " + "; ".join(env))
            return lines
        lines = [f"{head}: NOT identical."]
        lines += [f"  {k}: {was:.6g} -> {now:.6g} ({now - was:+.4g})" for k, was, now in self.metrics]
        lines += [f"  {k}: {n} epoch(s) differ, by up to {gap:.3g}" for k, n, gap in self.curves]
        if env or self.packages:
            lines.append("  what differs between the two runs' environments:")
            lines += [f"    {line}" for line in env]
            lines += [f"    package {line}" for line in self.packages[:20]]
        else:
            lines.append("  nothing recorded about the environment differs (same commit, packages, data, machine, "
                         "threads): the difference comes from nondeterminism in the computation itself.")
        return lines


def original_config(store: Store, record: Record):
    """The resolved config `record` ran with (its run directory's copy, or the logged artifact)."""
    from omegaconf import OmegaConf

    from .schema import Config

    if record.state != "FINISHED" or record.is_sweep_parent:
        what = "a sweep's parent run (reproduce one of its trials)" if record.is_sweep_parent else record.state
        raise CnnlabError(f"Run {record.id} is {what}: reproduce takes a FINISHED training run, whose final scores "
                          "the new run is compared with.")
    local = record.run_dir / ".hydra" / "config.yaml" if record.run_dir else None
    path = local if local is not None and local.exists() else store.download(record.run_id, "config/config.yaml")
    if path is None:
        raise CnnlabError(f"Run {record.id} has no recorded config (neither {local} nor its config/config.yaml "
                          "artifact): it cannot be run again.")
    cfg = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(path))
    if cfg.budget:
        raise CnnlabError(f"Run {record.id} ran under budget={cfg.budget}: its length and schedule followed the "
                          "clock, so no run repeats it exactly. Reproduce a run of a fixed length (epochs= or "
                          "max_steps=).")
    return cfg


def reproduce(ref: str, experiments: Optional[List[str]] = None, quiet: bool = False) -> Reproduction:
    """Train `ref`'s recorded config again as a new run in its experiment, linked both ways, and compare."""
    from .training import train

    store = Store(create=False)
    original = store.find(ref, experiments)
    cfg = original_config(store, original)
    result = train(cfg, original.tags.get(Tag.OVERRIDES, "").split(), quiet=quiet,
                   tags={Tag.REPRODUCES: original.run_id})
    earlier = original.tags.get(Tag.REPRODUCED_BY, "")
    store.open(original).set_tags({Tag.REPRODUCED_BY: " ".join(filter(None, [earlier, result.run_id]))})
    return differences(store, original, store.get(result.run_id))


def differences(store: Store, original: Record, again: Record) -> Reproduction:
    out = Reproduction(original, again)
    for tag, what in ENVIRONMENT.items():
        was, now = original.tags.get(tag), again.tags.get(tag)
        if was != now:
            out.environment.append((what, was or "", now or ""))
    if original.tags.get(Tag.PACKAGES_HASH) != again.tags.get(Tag.PACKAGES_HASH):
        out.packages = _package_changes(store, original, again)
    for key in COMPARED:
        was, now = original.metrics.get(key), again.metrics.get(key)
        if was != now and not (was != was and now != now):  # (NaN == NaN here)
            out.metrics.append((key, float("nan") if was is None else was, float("nan") if now is None else now))
    histories = store.histories([original.run_id, again.run_id], CURVES)
    for key in CURVES:
        a, b = histories[original.run_id].get(key, {}), histories[again.run_id].get(key, {})
        gaps = [abs(a.get(e, float("nan")) - b.get(e, float("nan"))) for e in sorted(set(a) | set(b))
                if a.get(e) != b.get(e)]
        if gaps:
            out.curves.append((key, len(gaps), max((g for g in gaps if g == g), default=float("nan"))))
    return out


def _package_changes(store: Store, original: Record, again: Record) -> List[str]:
    def read(record: Record) -> Dict[str, str]:
        path = store.download(record.run_id, "repro/requirements.txt")
        if path is None:
            return {}
        return dict(line.split("==", 1) for line in path.read_text().splitlines() if "==" in line)

    was, now = read(original), read(again)
    return [f"{name} {was.get(name, '(absent)')} -> {now.get(name, '(absent)')}"
            for name in sorted(set(was) | set(now)) if was.get(name) != now.get(name)]
