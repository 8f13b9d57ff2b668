"""How long a sweep will take, for --dry-run: each trial's epochs x its training images x seconds per image.

Seconds per image come from the store (FINISHED runs of the same architecture, width, depth, batch size,
image size and device: their training time per image, validation and test included), or else from a
few timed training steps of the trial's own model on this machine.
"""

from __future__ import annotations

import statistics
from typing import Dict, List, Optional, Tuple

from ..schema import duration
from .spec import Trial, resolved

CIFAR10_TRAIN = 50_000
EVAL_SHARE = 1.12  # validation and test passes add about this much to an epoch (15k images at ~1/3 the cost)


def _signature(cfg) -> tuple:
    return (cfg.arch.name, cfg.width, cfg.depth, cfg.dense_units, cfg.batch_size, cfg.image_size, str(cfg.device))


def _train_images(cfg) -> int:
    total = cfg.data.n_train if cfg.data.name == "synthetic" else CIFAR10_TRAIN
    return int(total * (1 - cfg.val_split) * cfg.data.train_fraction)


def _from_store(store, cfg) -> Optional[float]:
    """Median seconds per training image (an epoch's whole time) of past FINISHED runs like this one."""
    if store is None:
        return None
    like = []
    for r in store.runs(archs=[cfg.arch.name], states=["FINISHED"]):
        p, m = r.params, r.metrics
        same = (p.get("width"), p.get("depth"), p.get("dense_units"), p.get("batch_size"), p.get("image_size")) == \
            (cfg.width, cfg.depth, cfg.dense_units, cfg.batch_size, cfg.image_size)
        if same and m.get("train_time") and m.get("epochs_run") and p.get("split.train"):
            like.append(m["train_time"] / (m["epochs_run"] * p["split.train"]))
    return statistics.median(like) if like else None


def _timed(cfg, seconds: float = 0.3, most: int = 10) -> float:
    """Seconds per training image of this config's model, from training steps on random images here (two
    warm-up steps, then as many as fit in `seconds`, at most `most`)."""
    import torch
    from omegaconf import OmegaConf

    from .. import data, engine
    from ..device import Device

    cfg = OmegaConf.merge(cfg, {"epochs": 10 ** 6})  # a schedule long enough for the timed steps
    dev = Device.open(cfg.device, cfg.precision.value)
    images = torch.randint(0, 256, (cfg.batch_size, 3, 32, 32), dtype=torch.uint8, device=dev.device)
    labels = torch.randint(0, 10, (cfg.batch_size,), device=dev.device)
    batches = data.Batches(images, labels, cfg.batch_size, mean=(0.5,) * 3, std=(0.25,) * 3, shuffle=True,
                           augment=cfg.augment, image_size=cfg.image_size, channels_last=dev.type != "mps")
    trainer = engine.Trainer(cfg, engine.build(cfg, 10, 3, dev.device), batches, dev, 10)
    trainer.train_epoch(batches, last=False)  # warm-up: first calls allocate and pick kernels
    trainer.train_epoch(batches, last=False)
    steps, start = 0, dev.now()
    while steps < most and (steps < 2 or dev.now() - start < seconds):
        trainer.train_epoch(batches, last=False)
        steps += 1
    return (dev.now() - start) / (steps * cfg.batch_size) * EVAL_SHARE


def estimate(trials: List[Trial], store=None) -> Tuple[float, str]:
    """(seconds for all trials one after the other, where the figures came from)."""
    per_image: Dict[tuple, float] = {}
    sources = {"store": 0, "timed": 0, "budget": 0}
    total = 0.0
    for trial in trials:
        cfg = resolved(trial.overrides)
        if cfg.budget:  # a trial to a time budget takes its budget
            total += duration(cfg.budget)
            sources["budget"] += 1
            continue
        sig = _signature(cfg)
        if sig not in per_image:
            known = _from_store(store, cfg)
            sources["store" if known is not None else "timed"] += 1
            per_image[sig] = known if known is not None else _timed(cfg)
        images = cfg.epochs * _train_images(cfg)
        total += (min(images, cfg.max_steps * cfg.batch_size) if cfg.max_steps else images) * per_image[sig]
    words = {"store": "from past runs in the store", "timed": "from timed steps here",
             "budget": "trial(s) by their budget="}
    how = ", ".join(f"{n} {words[k]}" for k, n in sources.items() if n)
    return total, (f"{len(per_image)} distinct model/batch setting(s): " if per_image else "") + how


def human(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
