"""Evaluation on target datasets: the test set under named corruptions (corruptions.py), and the real targets of
target_data.py (CIFAR-10.1, CIFAR-10-C, STL-10, an imported image folder).

`eval.targets=[gaussian_noise,cifar10_1,stl10]` evaluates them at the end of training; `cnnlab evaluate RUN
targets=[...]` a recorded run's best checkpoint. Each is logged as metric `target_acc_<name>`, the accuracy on
the classes it shares with the training data (STL-10: 9 of CIFAR-10's 10; images of the others are left out, and
the mapping is recorded as tag cnnlab.target_classes.<name>); a target of another image size is resized to the
model's. CIFAR-10-C is `target_acc_cifar10_c`, the mean over its 19 corruptions and 5 severities, and
`target_acc_cifar10_c_s<k>` per severity.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterator, List, Tuple

from . import corruptions, target_data
from .errors import CnnlabError
from .record.vocabulary import Tag


def target_sets(names: List[str], ds, root: Path, severity: int = 3, seed: int = 0,
                image_size: int = 32) -> Iterator[Tuple[str, object, object]]:
    """(metric name, images, labels in the training data's classes) of each target set, one after another (CIFAR-10-C:
    one per corruption and severity, named cifar10_c/<corruption>/s<k>)."""
    for name in names:
        if name in corruptions.SEVERITIES:
            yield name, corruptions.corrupt(ds.x_test, name, severity, seed), ds.y_test
        elif name == "cifar10_c":
            target = _load(root, name)
            labels = target.array("labels")
            n = len(labels) // target_data.SEVERITIES
            mapped = target_data.class_map(target.classes, tuple(ds.classes))
            for corruption in target_data.CIFAR10_C:
                images = target.array(corruption)
                for s in range(target_data.SEVERITIES):
                    x, y = _shared(images[s * n:(s + 1) * n], labels[s * n:(s + 1) * n], mapped, image_size, name)
                    yield f"{name}/{corruption}/s{s + 1}", x, y
        else:
            target = _load(root, name)
            x, y = target.split("test")
            yield name, *_shared(x, y, target_data.class_map(target.classes, tuple(ds.classes)), image_size, name)


def _load(root: Path, name: str):
    if name == "cifar10_1" and target_data.cached(root, name) is None and (root / "cifar10.1_v6_data.npy").exists():
        target_data.import_target(name, root, root)  # the two files put in the data directory, as before
    return target_data.load(root, name)


def _shared(x, y, mapped: Dict[int, int], image_size: int, name: str):
    """The images of the classes the training data has, labelled in its classes, at the model's image size."""
    import torch
    import torch.nn.functional as F

    if not mapped:
        raise CnnlabError(f"Target {name} shares no class with the training data: it cannot be scored.")
    size = max(max(mapped), int(y.max()) if len(y) else 0) + 1
    to_source = torch.full((size,), -1, dtype=torch.int64)  # target class -> training class; -1: not shared
    to_source[list(mapped)] = torch.tensor(list(mapped.values()))
    y = to_source[y]
    keep = y >= 0
    x, y = x[keep], y[keep]
    if x.shape[-1] != image_size or x.shape[-2] != image_size:
        x = F.interpolate(x.float(), size=(image_size, image_size), mode="bilinear", antialias=True,
                          align_corners=False).round().clamp(0, 255).to(torch.uint8)
    return x, y


def evaluate_targets(model, names: List[str], ds, root: Path, *, batch_size: int, dev, channels_last: bool,
                     image_size: int, severity: int = 3, seed: int = 0,
                     update=lambda done: None) -> Dict[str, float]:
    """`target_acc_<name>` for each target set, with the model as it is on `dev` (a device.Device); update(sets done)
    after each."""
    import statistics

    from .data import Batches
    from .engine import evaluate

    scores, parts = {}, {}
    for name, x, y in target_sets(names, ds, root, severity, seed, image_size):
        batches = Batches(x.to(dev.device), y.to(dev.device), batch_size, mean=ds.mean, std=ds.std, image_size=image_size,
                          channels_last=channels_last)
        acc = evaluate(model, batches, dev.amp_dtype, len(ds.classes)).acc
        if "/" in name:  # a part of CIFAR-10-C: averaged below
            parts.setdefault(name.split("/")[0], []).append((name.rsplit("/s", 1)[1], acc))
            continue
        scores[f"target_acc_{name}"] = acc
        update(len(scores))
    for name, found in parts.items():
        scores[f"target_acc_{name}"] = statistics.fmean(a for _, a in found)
        for s in sorted({k for k, _ in found}):
            scores[f"target_acc_{name}_s{s}"] = statistics.fmean(a for k, a in found if k == s)
        update(len(scores))
    return scores


def mapping_tags(names: List[str], ds, root: Path) -> Dict[str, str]:
    """cnnlab.target_classes.<name> -> which of a real target's classes were scored, as which training class."""
    out = {}
    for name in names:
        if name not in corruptions.SEVERITIES:
            target = target_data.cached(root, name)
            if target is not None:
                out[f"{Tag.TARGET_CLASSES}.{name}"] = target_data.mapping_text(target.classes, tuple(ds.classes))
    return out


def evaluate_run(record, names: List[str], severity: int = 3, store=None) -> Dict[str, float]:
    """Evaluate a recorded run's best checkpoint on target sets and log the scores into that run."""
    from omegaconf import OmegaConf

    from . import checkpoint, data
    from .device import Device

    path = checkpoint.best_of(record, store)  # its run directory here, else its artifact on the server
    if path is None:
        raise CnnlabError(f"Run {record.id} has no checkpoint, neither in {record.run_dir or 'a run directory'} nor "
                          "among its artifacts (it did not finish, or its run directory moved).")
    what = f"Run {record.id}'s checkpoint"
    state = checkpoint.read(path, what)
    cfg = OmegaConf.create(state["config"])
    target_data.check_names(names, cfg.data.root, cfg.data.name)
    dev = Device.open("auto", str(cfg.precision))
    ds = data.load(cfg.data, seed=cfg.seed)
    model = checkpoint.model_of(state, len(ds.classes), ds.x_test.shape[1], dev.device, f"{what} {path}")
    scores = evaluate_targets(model, names, ds, data.data_root(cfg.data.root), batch_size=500, dev=dev,
                              channels_last=dev.type != "mps", image_size=cfg.image_size,
                              severity=severity, seed=cfg.seed)
    if store is not None:
        run = store.open(record)
        run.log_metrics(scores, step=int(record.metrics.get("epochs_run", 0)))
        run.set_tags(mapping_tags(names, ds, data.data_root(cfg.data.root)))
    return scores
