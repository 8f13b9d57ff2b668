"""ShuffleNetV2 (Ma et al.): channel split, grouped/depthwise convolutions and channel shuffle."""

from __future__ import annotations

import torch
from torch import nn

from . import register
from .layers import channel_shuffle, channels, conv_bn_act

STAGE_CHANNELS = (116, 232, 464)  # the 1x net; width scales them
STAGE_REPEATS = (4, 8, 4)


class ShuffleUnit(nn.Module):
    """Stride 1: split channels, transform one half, concat, shuffle. Stride 2: both halves downsample."""

    def __init__(self, cin: int, cout: int, stride: int, act: str):
        super().__init__()
        self.stride = stride
        half = cout // 2
        branch_in = cin if stride == 2 else cin // 2
        self.branch2 = nn.Sequential(
            conv_bn_act(branch_in, half, 1, act=act),
            conv_bn_act(half, half, 3, stride=stride, groups=half, act=None),
            conv_bn_act(half, half, 1, act=act),
        )
        self.branch1 = nn.Sequential(
            conv_bn_act(cin, cin, 3, stride=stride, groups=cin, act=None), conv_bn_act(cin, half, 1, act=act),
        ) if stride == 2 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            a, b = x.chunk(2, dim=1)
            out = torch.cat([a, self.branch2(b)], 1)
        else:
            out = torch.cat([self.branch1(x), self.branch2(x)], 1)
        return channel_shuffle(out, 2)


@register("shufflenet_v2")
def shufflenet_v2(*, num_classes: int, in_channels: int, image_size: int, width: float = 1.0, dropout: float = 0.0,
                  activation: str = "relu") -> nn.Module:
    """ShuffleNetV2 1x for CIFAR: 3x3 stem (no max pool), stages 116-232-464 of 4/8/4 units, conv5 1024, avg pool."""
    cin = 24
    layers: list[nn.Module] = [conv_bn_act(in_channels, cin, 3, act=activation)]
    for c, n in zip(STAGE_CHANNELS, STAGE_REPEATS):
        cout = channels(c, width, 2)
        for i in range(n):
            layers.append(ShuffleUnit(cin, cout, 2 if i == 0 else 1, activation))
            cin = cout
    last = 2048 if width > 1.5 else 1024
    layers += [conv_bn_act(cin, last, 1, act=activation), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    head = nn.Sequential(*([nn.Dropout(dropout)] if dropout else []), nn.Linear(last, num_classes))
    return nn.Sequential(nn.Sequential(*layers), head)
