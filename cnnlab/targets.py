"""Target datasets: the test set under named corruptions, in the spirit of CIFAR-10-C, and CIFAR-10.1.

Each corruption is built from torchvision transforms at five severities (3 by default), applied
to whole uint8 batches and deterministic for a given seed. `eval.targets=[gaussian_noise,blur]`
evaluates them at the end of training; `cnnlab evaluate RUN targets=[...]` on a finished run.
Accuracies are logged as metrics `target_acc_<name>`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from .errors import CnnlabError

# name -> (severity 1..5 parameters, what it does)
SEVERITIES: Dict[str, Tuple[tuple, str]] = {
    "gaussian_noise": ((0.04, 0.06, 0.08, 0.09, 0.10), "additive Gaussian noise, sigma on the 0-1 scale"),
    "blur": ((0.5, 0.75, 1.0, 1.25, 1.5), "Gaussian blur, sigma in pixels"),
    "contrast": ((0.75, 0.5, 0.4, 0.3, 0.15), "contrast scaled towards the mean"),
    "brightness": ((1.1, 1.2, 1.3, 1.4, 1.5), "brightness multiplied"),
    "jpeg": ((80, 65, 58, 50, 40), "JPEG re-encoding at this quality"),
    "pixelate": ((0.95, 0.9, 0.85, 0.75, 0.65), "down- and up-sampled by this factor"),
    "saturate": ((0.7, 0.4, 2.0, 3.0, 5.0), "saturation factor"),
}
CIFAR10_1 = "cifar10_1"  # the CIFAR-10.1 v6 test set, when its two .npy files are in the data root
NAMES = tuple(SEVERITIES) + (CIFAR10_1,)


def check(names: List[str]) -> None:
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        raise CnnlabError(f"Unknown target set(s) {', '.join(unknown)}. Valid: {', '.join(NAMES)}.")


def corrupt(x, name: str, severity: int = 3, seed: int = 0):
    """`x` (uint8, N x 3 x H x W) under corruption `name` at `severity` (1-5); same seed, same images."""
    import torch
    import torchvision.transforms.v2.functional as TF

    level = SEVERITIES[name][0][severity - 1]
    if name == "jpeg":
        return torch.stack([_jpeg(img, int(level)) for img in x.cpu()]).to(x.device)
    if name == "pixelate":
        h, w = x.shape[-2:]
        small = TF.resize(x, [max(1, int(h * level)), max(1, int(w * level))], antialias=True)
        return TF.resize(small, [h, w], interpolation=TF.InterpolationMode.NEAREST)
    if name == "blur":
        return TF.gaussian_blur(x, kernel_size=[5, 5], sigma=[level, level])
    if name == "contrast":
        return TF.adjust_contrast(x, level)
    if name == "brightness":
        return TF.adjust_brightness(x, level)
    if name == "saturate":
        return TF.adjust_saturation(x, level)
    if name == "gaussian_noise":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            noisy = TF.gaussian_noise(TF.to_dtype(x, torch.float32, scale=True), sigma=level, clip=True)
        return TF.to_dtype(noisy, torch.uint8, scale=True)
    raise ValueError(name)


def _jpeg(img, quality: int):
    """One uint8 CHW image re-encoded as JPEG with PIL."""
    import io

    import numpy as np
    import torch
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(img.permute(1, 2, 0).numpy()).save(buffer, format="JPEG", quality=quality)
    return torch.from_numpy(np.asarray(Image.open(buffer).convert("RGB")).copy()).permute(2, 0, 1)


def cifar10_1(root: Path):
    """CIFAR-10.1 v6 (Recht et al.) from `root`: cifar10.1_v6_data.npy and cifar10.1_v6_labels.npy."""
    import numpy as np
    import torch

    data, labels = root / "cifar10.1_v6_data.npy", root / "cifar10.1_v6_labels.npy"
    if not data.exists() or not labels.exists():
        raise CnnlabError(f"Target cifar10_1 needs CIFAR-10.1 v6 in {root}: download cifar10.1_v6_data.npy and "
                          "cifar10.1_v6_labels.npy from github.com/modestyachts/CIFAR-10.1 (datasets/) into it.")
    x = torch.from_numpy(np.load(data)).permute(0, 3, 1, 2).contiguous()
    return x, torch.from_numpy(np.load(labels).astype(np.int64))


def target_sets(names: List[str], x_test, y_test, root: Path, severity: int = 3,
                seed: int = 0) -> Dict[str, tuple]:
    """name -> (images, labels) for each requested target set."""
    check(names)
    sets = {}
    for name in names:
        sets[name] = cifar10_1(root) if name == CIFAR10_1 else (corrupt(x_test, name, severity, seed), y_test)
    return sets


def evaluate_targets(model, names: List[str], ds, root: Path, *, batch_size: int, amp_dtype, device,
                     channels_last: bool, image_size: int, severity: int = 3, seed: int = 0,
                     evaluate: Optional[Callable] = None) -> Dict[str, float]:
    """`target_acc_<name>` for each target set, with the model as it is."""
    from .data import Batches
    from .train import evaluate as default_evaluate

    evaluate = evaluate or default_evaluate
    scores = {}
    for name, (x, y) in target_sets(names, ds.x_test, ds.y_test, root, severity, seed).items():
        batches = Batches(x.to(device), y.to(device), batch_size, mean=ds.mean, std=ds.std, image_size=image_size,
                          channels_last=channels_last)
        _, acc, _ = evaluate(model, batches, amp_dtype, len(ds.classes))
        scores[f"target_acc_{name}"] = acc
    return scores


def evaluate_run(run_ref: str, names: List[str], severity: int = 3, tracking_uri: Optional[str] = None) -> Dict[str, float]:
    """Evaluate a recorded run's best checkpoint on target sets and log the scores into that run."""
    import torch
    from omegaconf import OmegaConf

    from . import data, tracking
    from .models import build_model
    from .train import setup_torch

    check(names)
    client = tracking.client(tracking_uri, create=False)
    run = _find_run(client, run_ref)
    run_dir = Path(run.data.tags.get("cnnlab.run_dir", ""))
    checkpoint = run_dir / "best.pt"
    if not checkpoint.exists():
        raise CnnlabError(f"Run {run_ref} has no checkpoint at {checkpoint} (it did not finish, or its run "
                          "directory moved).")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    cfg = OmegaConf.create(state["config"])
    device, amp_dtype = setup_torch("auto", str(cfg.precision))
    ds = data.load(cfg.data, seed=cfg.seed)
    model = build_model(cfg, num_classes=len(ds.classes), in_channels=ds.x_test.shape[1])
    model.load_state_dict(state["model"])
    channels_last = device.type != "mps"
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    scores = evaluate_targets(model, names, ds, data.data_root(cfg.data.root), batch_size=500, amp_dtype=amp_dtype,
                              device=device, channels_last=channels_last, image_size=cfg.image_size,
                              severity=severity, seed=cfg.seed)
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    step = int(run.data.metrics.get("epochs_run", 0))
    client.log_batch(run.info.run_id, metrics=[Metric(k, v, now, step) for k, v in scores.items()])
    return scores


def _find_run(client, ref: str):
    try:
        return client.get_run(ref)
    except Exception:
        pass
    for exp in client.search_experiments():
        found = client.search_runs([exp.experiment_id], f"attributes.run_name = '{ref}'", max_results=2)
        if found:
            return found[0]
    raise CnnlabError(f"No run with id or name {ref!r} in {client.tracking_uri}.")
