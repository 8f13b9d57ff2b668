"""MobileNetV2 (Sandler et al.): inverted residuals of depthwise separable convolutions, linear bottlenecks."""

from __future__ import annotations

import torch
from torch import nn

from . import register
from .layers import channels, conv_bn_act

# expansion t, channels c, repeats n, stride s: the paper's table, with the first two strides 1 for 32x32 input
MOBILENET_V2 = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1)]


class InvertedResidual(nn.Module):
    """1x1 expand -> 3x3 depthwise -> 1x1 project (no activation), residual when the shape allows."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int, act: str):
        super().__init__()
        hidden = cin * expand
        layers = [conv_bn_act(cin, hidden, 1, act=act)] if expand != 1 else []
        layers += [conv_bn_act(hidden, hidden, 3, stride=stride, groups=hidden, act=act),
                   conv_bn_act(hidden, cout, 1, act=None)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


@register("mobilenet_v2")
def mobilenet_v2(*, num_classes: int, in_channels: int, image_size: int, width: float = 1.0, dropout: float = 0.2,
                 activation: str = "relu6") -> nn.Module:
    """MobileNetV2 for CIFAR: stem stride 1, 17 inverted residual blocks, 1x1 conv to 1280, global average pool."""
    cin = channels(32, width, 8)
    layers: list[nn.Module] = [conv_bn_act(in_channels, cin, 3, act=activation)]
    for t, c, n, s in MOBILENET_V2:
        cout = channels(c, width, 8)
        for i in range(n):
            layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t, activation))
            cin = cout
    last = channels(1280, max(1.0, width), 8)
    layers += [conv_bn_act(cin, last, 1, act=activation), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    head = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))
    return nn.Sequential(nn.Sequential(*layers), head)
