"""Target datasets: the test set under named corruptions (corruptions.py) and CIFAR-10.1.

`eval.targets=[gaussian_noise,blur]` evaluates them at the end of training; `cnnlab evaluate RUN
targets=[...]` on a recorded run's best checkpoint. Accuracies are logged as metrics
`target_acc_<name>`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

from . import corruptions
from .errors import CnnlabError


def target_sets(names: List[str], x_test, y_test, root: Path, severity: int = 3,
                seed: int = 0) -> Dict[str, tuple]:
    """name -> (images, labels) for each requested target set."""
    from .data import cifar10_1

    corruptions.check(names)
    sets = {}
    for name in names:
        if name == corruptions.CIFAR10_1:
            sets[name] = cifar10_1(root)
        else:
            sets[name] = (corruptions.corrupt(x_test, name, severity, seed), y_test)
    return sets


def evaluate_targets(model, names: List[str], ds, root: Path, *, batch_size: int, dev, channels_last: bool,
                     image_size: int, severity: int = 3, seed: int = 0,
                     update=lambda done: None) -> Dict[str, float]:
    """`target_acc_<name>` for each target set, with the model as it is on `dev` (a device.Device); update(sets done)
    after each."""
    from .data import Batches
    from .engine import evaluate

    scores = {}
    for name, (x, y) in target_sets(names, ds.x_test, ds.y_test, root, severity, seed).items():
        batches = Batches(x.to(dev.device), y.to(dev.device), batch_size, mean=ds.mean, std=ds.std, image_size=image_size,
                          channels_last=channels_last)
        scores[f"target_acc_{name}"] = evaluate(model, batches, dev.amp_dtype, len(ds.classes)).acc
        update(len(scores))
    return scores


def evaluate_run(record, names: List[str], severity: int = 3, store=None) -> Dict[str, float]:
    """Evaluate a recorded run's best checkpoint on target sets and log the scores into that run."""
    from omegaconf import OmegaConf

    from . import checkpoint, data
    from .device import Device

    corruptions.check(names)
    path = checkpoint.best_of(record, store)  # its run directory here, else its artifact on the server
    if path is None:
        raise CnnlabError(f"Run {record.id} has no checkpoint, neither in {record.run_dir or 'a run directory'} nor "
                          "among its artifacts (it did not finish, or its run directory moved).")
    what = f"Run {record.id}'s checkpoint"
    state = checkpoint.read(path, what)
    cfg = OmegaConf.create(state["config"])
    dev = Device.open("auto", str(cfg.precision))
    ds = data.load(cfg.data, seed=cfg.seed)
    model = checkpoint.model_of(state, len(ds.classes), ds.x_test.shape[1], dev.device, f"{what} {path}")
    scores = evaluate_targets(model, names, ds, data.data_root(cfg.data.root), batch_size=500, dev=dev,
                              channels_last=dev.type != "mps", image_size=cfg.image_size,
                              severity=severity, seed=cfg.seed)
    if store is not None:
        store.open(record).log_metrics(scores, step=int(record.metrics.get("epochs_run", 0)))
    return scores
