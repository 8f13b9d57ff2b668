"""EfficientNet-B0 (Tan & Le): MBConv stages with squeeze-excitation, and compound scaling by phi."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import register
from .layers import SqueezeExcite, channels, conv_bn_act

# expansion, channels, repeats, stride, kernel: the B0 table (stage 2's stride is 1 for 32x32 input)
B0 = [(1, 16, 1, 1, 3), (6, 24, 2, 1, 3), (6, 40, 2, 2, 5), (6, 80, 3, 2, 3), (6, 112, 3, 1, 5),
      (6, 192, 4, 2, 5), (6, 320, 1, 1, 3)]


class MBConv(nn.Module):
    """1x1 expand -> kxk depthwise -> squeeze-excite -> 1x1 project, residual when the shape allows."""

    def __init__(self, cin: int, cout: int, expand: int, stride: int, kernel: int, act: str):
        super().__init__()
        hidden = cin * expand
        layers = [conv_bn_act(cin, hidden, 1, act=act)] if expand != 1 else []
        layers += [conv_bn_act(hidden, hidden, kernel, stride=stride, groups=hidden, act=act),
                   SqueezeExcite(hidden, max(1, cin // 4), act), conv_bn_act(hidden, cout, 1, act=None)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


class Resize(nn.Module):
    """Compound scaling's resolution factor: the input resized to `size` inside the model."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] == self.size:
            return x
        return F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)


@register("efficientnet_b0")
def efficientnet_b0(*, num_classes: int, in_channels: int, image_size: int, width: float = 1.0, dropout: float = 0.2,
                    activation: str = "silu", phi: float = 0.0, alpha: float = 1.2, beta: float = 1.1,
                    gamma: float = 1.15) -> nn.Module:
    """EfficientNet-B0 for CIFAR (stem stride 1); phi scales depth by alpha^phi, width by beta^phi, resolution by gamma^phi."""
    depth_mult, width_mult = alpha ** phi, width * beta ** phi
    size = int(round(image_size * gamma ** phi))
    cin = channels(32, width_mult, 8)
    layers: list[nn.Module] = [Resize(size), conv_bn_act(in_channels, cin, 3, act=activation)]
    for t, c, n, s, k in B0:
        cout = channels(c, width_mult, 8)
        for i in range(int(math.ceil(n * depth_mult))):
            layers.append(MBConv(cin, cout, t, s if i == 0 else 1, k, activation))
            cin = cout
    last = channels(1280, max(1.0, width_mult), 8)
    layers += [conv_bn_act(cin, last, 1, act=activation), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    head = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))
    return nn.Sequential(nn.Sequential(*layers), head)
