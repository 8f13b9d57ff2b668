"""Corruptions of the test set, in the spirit of CIFAR-10-C: pure functions of images, severity and seed.

Each corruption is built from torchvision transforms at five severities (3 by default) and applied to
whole uint8 batches; the same seed gives the same images. `targets.py` evaluates models on them.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

from .errors import CnnlabError

# name -> (severity 1..5 parameters, what it does)
SEVERITIES: Dict[str, Tuple[tuple, str]] = {
    "gaussian_noise": ((0.04, 0.06, 0.08, 0.09, 0.10), "additive Gaussian noise, sigma on the 0-1 scale"),
    "blur": ((0.5, 0.75, 1.0, 1.25, 1.5), "Gaussian blur, sigma in pixels"),
    "contrast": ((0.75, 0.5, 0.4, 0.3, 0.15), "contrast scaled towards the mean"),
    "brightness": ((1.1, 1.2, 1.3, 1.4, 1.5), "brightness multiplied"),
    "jpeg": ((80, 65, 58, 50, 40), "JPEG re-encoding at this quality"),
    "pixelate": ((0.95, 0.9, 0.85, 0.75, 0.65), "down- and up-sampled by this factor (box filter)"),
    "saturate": ((0.7, 0.4, 2.0, 3.0, 5.0), "saturation factor"),
}
NAMES = tuple(SEVERITIES)  # (the real target sets, CIFAR-10.1 and others, are target_data.py's)


def check(names: List[str]) -> None:
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        raise CnnlabError(f"Unknown target set(s) {', '.join(map(str, unknown))}. Valid: {', '.join(NAMES)}.")


def corrupt(x, name: str, severity: int = 3, seed: int = 0):
    """`x` (uint8, N x 3 x H x W) under corruption `name` at `severity` (1-5); same seed, same images."""
    import torch
    import torchvision.transforms.v2.functional as TF

    level = SEVERITIES[name][0][severity - 1]
    if name == "jpeg":
        return torch.stack([_jpeg(img, int(level)) for img in x.cpu()]).to(x.device)
    if name == "pixelate":
        return torch.stack([_pixelate(img, level) for img in x.cpu()]).to(x.device)
    if name == "blur":
        return TF.gaussian_blur(x, kernel_size=[5, 5], sigma=[level, level])
    if name == "contrast":
        return TF.adjust_contrast(x, level)
    if name == "brightness":
        return TF.adjust_brightness(x, level)
    if name == "saturate":
        return TF.adjust_saturation(x, level)
    if name == "gaussian_noise":  # drawn on the CPU from a generator of its own: the same images on every device,
        generator = torch.Generator().manual_seed(seed)  # and no run's random stream (CPU or GPU) touched
        images = TF.to_dtype(x.cpu(), torch.float32, scale=True)
        noisy = (images + level * torch.randn(images.shape, generator=generator)).clamp(0, 1)
        return TF.to_dtype(noisy, torch.uint8, scale=True).to(x.device)
    raise ValueError(name)


def _pixelate(img, factor: float):
    """One uint8 CHW image box-filtered down by `factor` and back, as CIFAR-10-C does it.

    Nearest-neighbour upsampling would mostly shift pixels at these factors (32 -> 30 -> 32), so
    severity 1 damaged more than severity 4; the box filter's damage grows with the factor.
    """
    import numpy as np
    import torch
    from PIL import Image

    h, w = img.shape[-2:]
    image = Image.fromarray(img.permute(1, 2, 0).numpy())
    small = image.resize((max(1, int(w * factor)), max(1, int(h * factor))), Image.BOX)
    return torch.from_numpy(np.asarray(small.resize((w, h), Image.BOX)).copy()).permute(2, 0, 1)


def _jpeg(img, quality: int):
    """One uint8 CHW image re-encoded as JPEG with PIL."""
    import io

    import numpy as np
    import torch
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(img.permute(1, 2, 0).numpy()).save(buffer, format="JPEG", quality=quality)
    return torch.from_numpy(np.asarray(Image.open(buffer).convert("RGB")).copy()).permute(2, 0, 1)
