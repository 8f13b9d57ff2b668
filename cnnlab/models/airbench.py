"""A fast CIFAR-10 net in the style of airbench (Keller Jordan) and Page's ResNet-9: cnnlab's own version.

A frozen 2x2 patch-whitening convolution built from the training images' patch covariance, then
three conv groups (conv -> 2x2 pool -> BN -> act -> conv -> BN -> act, widths 64-256-256) with
dirac-initialised convolutions, a 3x3 max pool and a linear head scaled by 1/9. Every part is a
knob so that a sweep can ablate it (conf/sweep/fast94_ablation.yaml).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import CnnlabError
from . import register
from .layers import activation as act_layer
from .layers import ACTIVATIONS, Conv2d, channels, pool2d


class Whiten(nn.Conv2d):
    """2x2 patch whitening: eigenvectors of the patch covariance scaled by 1/sqrt(eigenvalue), and their
    negatives (2 x 12 filters). Set from data by `fit()`; its weights are then frozen. bias_epochs > 0: its bias
    trains for that many epochs only, its rate going linearly to 0 over them (engine.early_groups)."""

    def __init__(self, in_channels: int, kernel_size: int = 2, bias_epochs: float = 0.0):
        n = in_channels * kernel_size * kernel_size
        super().__init__(in_channels, 2 * n, kernel_size, padding=0, bias=True)
        self.weight.requires_grad_(False)
        self.bias_epochs = bias_epochs

    @torch.no_grad()
    def fit(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        k = self.kernel_size[0]
        patches = images.float().unfold(2, k, 1).unfold(3, k, 1)  # N C H W k k
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, images.shape[1] * k * k)
        patches = patches - patches.mean(0, keepdim=True)
        cov = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)
        filters = (eigenvectors.T / torch.sqrt(eigenvalues + eps)[:, None]).view(-1, images.shape[1], k, k)
        self.weight.copy_(torch.cat([filters, -filters]).to(self.weight.dtype))


class Scale(nn.Module):
    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def _norm(c: int, momentum: float = 0.4) -> nn.Module:
    """BatchNorm without a learned scale (only a shift), with fast-moving statistics, as airbench has it."""
    bn = nn.BatchNorm2d(c, momentum=momentum, eps=1e-12)
    bn.weight.requires_grad_(False)
    return bn


class AirbenchNet(nn.Sequential):
    def prepare(self, images: torch.Tensor) -> None:
        """Called by train() once with normalised training images: fit the whitening filters."""
        first = self[0]
        if isinstance(first, Whiten):
            first.fit(images)


@register("airbench")
def airbench(*, num_classes: int, in_channels: int, image_size: int, width: float = 1.0, batch_norm: bool = True,
             activation: str = "gelu", pool: str = "max", whiten: bool = True, dirac: bool = True,
             scale: float = 1 / 9, head_std: float = 0.0, whiten_bias_epochs: float = 0.0,
             bn_momentum: float = 0.4, stem_activation: str = "") -> nn.Module:
    """airbench-style fast CIFAR net: frozen patch whitening, 3 conv groups (64-256-256), dirac init, scaled head.

    head_std: 0 keeps torch's initialisation of the head; > 0 rescales its weights to this standard deviation
    (the records' 1). whiten_bias_epochs: 0 trains the whitening bias throughout, as the other biases; > 0 for
    that many epochs only, at a rate going linearly to 0 over them (airbench94_muon's 3). bn_momentum: the batch
    norms' running statistics' momentum, torch's convention (airbench's 0.4; cifar10-speedrun's 0.4434).
    stem_activation: the one after the first conv; "" is `activation` (cifar10-speedrun keeps GELU there)."""
    if whiten_bias_epochs and not whiten:
        raise CnnlabError(f"arch.whiten_bias_epochs={whiten_bias_epochs} needs the whitening layer, and "
                          "arch.whiten=false builds a plain convolution instead: set arch.whiten=true, or "
                          "arch.whiten_bias_epochs=0 (its bias then trains throughout).")
    if not 0 < bn_momentum <= 1:
        raise CnnlabError(f"arch.bn_momentum={bn_momentum} is out of range: the share of each batch's statistics "
                          "in the running ones is a number in (0, 1] (airbench's 0.4).")
    if stem_activation and stem_activation not in ACTIVATIONS:
        raise CnnlabError(f"arch.stem_activation={stem_activation} is not an activation: it is one of "
                          f"{', '.join(ACTIVATIONS)}, or \"\" for the net's own (activation=).")
    widths = [channels(w, width) for w in (64, 256, 256)]
    if whiten:
        stem: nn.Module = Whiten(in_channels, bias_epochs=whiten_bias_epochs)
        cin = 4 * in_channels * 2
    else:
        cin = 24
        stem = nn.Conv2d(in_channels, cin, 2, bias=True)
    layers = [stem, act_layer(stem_activation or activation)]
    for cout in widths:
        for i in range(2):
            conv = Conv2d(cin, cout, 3, padding=1, bias=not batch_norm)
            if dirac:  # start each conv as (part of) an identity: a deep net that begins as a shallow one
                nn.init.dirac_(conv.weight[:cin])
            layers.append(conv)
            if i == 0:
                layers.append(pool2d(pool))
            if batch_norm:
                layers.append(_norm(cout, bn_momentum))
            layers.append(act_layer(activation))
            cin = cout
    head = nn.Linear(cin, num_classes, bias=False)
    if head_std:
        with torch.no_grad():
            head.weight.mul_(head_std / head.weight.std())
    layers += [nn.AdaptiveMaxPool2d(1), nn.Flatten(), head, Scale(scale)]
    return AirbenchNet(*layers)
