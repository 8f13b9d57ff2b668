"""What a trained model sees, for `cnnlab report`: its first-layer filters beside the lectures' hand-made
edge detectors, its feature maps block by block, and its most confident mistakes.

Everything here starts from a run's best checkpoint, loaded with `weights_only=True`, and runs on the CPU
on a slice of the test set, so that it takes seconds whatever the architecture.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Tuple

from .errors import CnnlabError

# the lectures' hand-made 3x3 kernels (Sobel, Prewitt: edges along x and y; Laplacian: edges in all directions)
KERNELS = {
    "Sobel x": [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]],
    "Sobel y": [[-1, -2, -1], [0, 0, 0], [1, 2, 1]],
    "Prewitt x": [[-1, 0, 1], [-1, 0, 1], [-1, 0, 1]],
    "Prewitt y": [[-1, -1, -1], [0, 0, 0], [1, 1, 1]],
    "Laplacian": [[0, 1, 0], [1, -4, 1], [0, 1, 0]],
}
LUMA = (0.299, 0.587, 0.114)  # a colour filter's response to brightness: how it is compared with a gray kernel
IMAGES = 2000  # test images the mistakes (and a missing confusion matrix) are computed on, at most ...
FLOP_BUDGET = 1.2e11  # ... and at most this many forward FLOPs of them (a second or two on two CPU cores) ...
MIN_IMAGES = 150  # ... but never fewer than this
MAX_FILTERS = 64


@dataclass
class Loaded:
    """A run's best checkpoint as a model on the CPU, and the test set it was scored on (None: not available)."""

    model: Any
    cfg: Any
    epoch: int
    path: Path
    classes: Tuple[str, ...]
    x_test: Any = None  # uint8 N x C x H x W
    y_test: Any = None
    mean: Tuple[float, ...] = ()
    std: Tuple[float, ...] = ()
    missing_data: str = ""  # why there are no test images, when there are none
    index: Any = None  # each loaded test image's index in the whole test set


@dataclass
class Match:
    kernel: str
    filter: int  # index of the most similar learned filter
    similarity: float  # cosine similarity on the filter's luminance, best 3x3 window; negative: inverted polarity


@dataclass
class Predictions:
    """The model's predictions on `n` test images (a stratified sample)."""

    n: int
    confusion: Any  # num_classes x num_classes tensor (rows: true class)
    mistakes: List[Tuple[int, int, int, float]] = field(default_factory=list)  # (index, true, predicted, confidence)


def load(record, store=None) -> Loaded:
    """The run's model with its best weights; CnnlabError (saying what is missing) when there are none."""
    import torch
    from omegaconf import OmegaConf

    from . import data, engine

    from . import checkpoint

    path = checkpoint.best_of(record, store)
    if path is None:
        where = f"in {record.run_dir}" if record.run_dir else "(it has no run directory)"
        raise CnnlabError(f"no checkpoint {where}: the run ended before its first epoch did, or the file was "
                          "moved; what needs the model (mistakes, filters, feature maps) is left out")
    state = checkpoint.read(path, "the checkpoint")
    cfg = OmegaConf.create(state["config"])
    epoch = int(state.get("epoch", 0))
    missing = ""
    try:
        ds = data.load(cfg.data, seed=cfg.seed)
        classes, in_channels = ds.classes, ds.x_test.shape[1]
    except CnnlabError as exc:  # the data cache is gone (another machine): the filters need no data
        ds, missing, in_channels = None, str(exc), 3
        classes = tuple(k[len("test_acc_"):] for k in record.metrics if k.startswith("test_acc_")) or \
            tuple(str(i) for i in range(_num_classes(state["model"])))
    num_classes = len(classes)
    model = checkpoint.model_of(state, num_classes, in_channels, torch.device("cpu"), f"the checkpoint {path}")
    model.eval()
    if ds is None:
        return Loaded(model, cfg, epoch, path, classes, missing_data=missing)
    flops = record.metrics.get("flops") or engine.count_flops(model, in_channels, int(cfg.image_size), "cpu")
    n = max(MIN_IMAGES, min(IMAGES, int(FLOP_BUDGET / max(flops, 1))))
    index = sample_test(ds.y_test, n, int(cfg.seed))
    return Loaded(model, cfg, epoch, path, classes, ds.x_test[index], ds.y_test[index], ds.mean, ds.std,
                  index=index)


def sample_test(y, n: int, seed: int):
    """Indices of about `n` test images, the same share of each class, drawn with `seed`: a test set stored in
    class order (an image folder) is sampled across all its classes, not cut after its first ones."""
    from .data import stratified_split

    if n >= len(y):
        import torch

        return torch.arange(len(y))
    return stratified_split(y, n / len(y), seed)[0]


def model_from_config(record):
    """The run's model with fresh weights, from the config it recorded (for its costs, when it saved no weights)."""
    import torch
    from omegaconf import OmegaConf

    from . import engine

    if record.run_dir is None or not (record.run_dir / ".hydra" / "config.yaml").exists():
        raise CnnlabError("no config file to build the model from either")
    path = record.run_dir / ".hydra" / "config.yaml"
    classes = [k for k in record.metrics if k.startswith("test_acc_")]
    return engine.build(OmegaConf.load(path), len(classes) or 10, 3, torch.device("cpu")).eval()


def _num_classes(state_dict) -> int:
    """The output width of the last layer: the number of classes, when the data set cannot be loaded."""
    last = [v for k, v in state_dict.items() if k.endswith("weight") and v.ndim == 2]
    return int(last[-1].shape[0]) if last else 10


def normalised(loaded: Loaded, x):
    """uint8 images as the model's input: scaled, normalised and resized as in training."""
    import torch
    import torch.nn.functional as F

    mean = torch.tensor(loaded.mean).view(1, -1, 1, 1) * 255
    std = torch.tensor(loaded.std).view(1, -1, 1, 1) * 255
    x = (x.float() - mean) / std
    size = int(loaded.cfg.image_size)
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x.contiguous(memory_format=torch.channels_last)


def first_conv(model):
    """(name, Conv2d) of the first convolution that sees the image, or None (an architecture without one)."""
    import torch.nn as nn

    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            return name, module
    return None


def filters(model):
    """The first conv layer's filters as a C_out x C_in x k x k float tensor (at most MAX_FILTERS), and its name."""
    found = first_conv(model)
    if found is None:
        return None, ""
    name, conv = found
    return conv.weight.detach().float().cpu()[:MAX_FILTERS], name


def matches(weights) -> List[Match]:
    """For each hand-made kernel, the learned filter most like it: the cosine similarity between the kernel and
    the filter's luminance, over every 3x3 window of the filter (a 5x5 or 7x7 filter may hold the edge detector
    anywhere), the largest in absolute value (an inverted detector finds the same edges)."""
    import torch
    import torch.nn.functional as F

    w = weights
    if w.shape[1] == 3:
        w = (w * torch.tensor(LUMA).view(1, 3, 1, 1)).sum(1)
    else:
        w = w.mean(1)
    k = w.shape[-1]
    if k < 3:  # a 2x2 patch filter: compared as the corner of a 3x3 window
        w = F.pad(w, (0, 3 - k, 0, 3 - w.shape[-2]))
    windows = F.unfold(w.unsqueeze(1), 3)  # C_out x 9 x positions
    windows = windows / windows.norm(dim=1, keepdim=True).clamp(min=1e-12)
    out = []
    for name, kernel in KERNELS.items():
        kvec = torch.tensor(kernel, dtype=torch.float32).flatten()
        kvec = kvec / kvec.norm()
        cos = torch.einsum("cnp,n->cp", windows, kvec)  # C_out x positions
        best_pos = cos.abs().argmax(1)
        per_filter = cos.gather(1, best_pos.unsqueeze(1)).squeeze(1)
        index = int(per_filter.abs().argmax())
        out.append(Match(name, index, float(per_filter[index])))
    return out


def feature_maps(loaded: Loaded, images) -> List[Tuple[str, Any]]:
    """(label, maps) after each block of the network: the output of the last layer working at each spatial
    resolution, for `images` (uint8 N x C x H x W). maps: N x channels x h x w."""
    import torch

    leaves = [(n, m) for n, m in loaded.model.named_modules() if not list(m.children())]
    outputs: List[Tuple[str, Any]] = []

    def hook(name):
        def record(module, inputs, output):
            if isinstance(output, torch.Tensor) and output.ndim == 4:
                outputs.append((name, output.detach().float()))
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in leaves]
    try:
        with torch.inference_mode():
            loaded.model(normalised(loaded, images))
    finally:
        for h in handles:
            h.remove()
    blocks: List[Tuple[str, Any]] = []
    for name, out in outputs:
        if "pool" in name.lower() and blocks and out.shape[-1] < blocks[-1][1].shape[-1]:
            continue  # a pooling layer's output belongs to the next block, which will follow
        if blocks and blocks[-1][1].shape[-2:] == out.shape[-2:]:
            blocks[-1] = (name, out)
        else:
            blocks.append((name, out))
    return [(f"{name} ({out.shape[1]}x{out.shape[2]}x{out.shape[3]})", out) for name, out in blocks]


def predict(loaded: Loaded, batch_size: int = 250) -> Predictions:
    """Predictions on the loaded test images; the most confident mistakes first (at most 16)."""
    import torch

    from .device import cpu

    n, k = len(loaded.y_test), len(loaded.classes)
    probs = []
    with torch.inference_mode(), cpu().autocast():  # bf16 where the CPU has it
        for i in range(0, n, batch_size):
            logits = loaded.model(normalised(loaded, loaded.x_test[i:i + batch_size])).float()
            probs.append(logits.softmax(1))
    p = torch.cat(probs)
    confidence, pred = p.max(1)
    y = loaded.y_test
    confusion = torch.bincount(y * k + pred, minlength=k * k).view(k, k)
    wrong = (pred != y).nonzero().flatten()
    order = wrong[confidence[wrong].argsort(descending=True)][:16]
    mistakes = [(int(i), int(y[i]), int(pred[i]), float(confidence[i])) for i in order]
    return Predictions(n, confusion, mistakes)


def sample_images(loaded: Loaded, count: int = 3) -> List[int]:
    """Indices of `count` test images of different classes (the first of each), for feature maps."""
    seen: Dict[int, int] = {}
    for i, label in enumerate(loaded.y_test.tolist()):
        seen.setdefault(label, i)
        if len(seen) == count:
            break
    return list(seen.values())
