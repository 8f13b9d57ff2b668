"""VGG: stacks of 3x3 convolutions, each stack closed by a 2x2 pool, then a dense head."""

from __future__ import annotations

from torch import nn

from . import register
from .layers import channels, conv_bn_act, dense_head, flat_features, pool2d


@register("vgg_small")
def vgg_small(*, num_classes: int, in_channels: int, image_size: int, dense_units: int = 256,
              dropout: float = 0.2, batch_norm: bool = True, pool: str = "max", activation: str = "relu",
              width: float = 1.0, depth: int = 2) -> nn.Module:
    """VGG-style CIFAR net: 3 stages of `depth` 3x3 convs (64-128-256) + pool, global max pool, dense head."""
    layers: list[nn.Module] = []
    cin = in_channels
    for base in (64, 128, 256):
        cout = channels(base, width)
        for _ in range(depth):
            layers.append(conv_bn_act(cin, cout, 3, batch_norm=batch_norm, act=activation))
            cin = cout
        layers.append(pool2d(pool))
    layers.append(nn.AdaptiveMaxPool2d(1))
    features = nn.Sequential(*layers)
    head = dense_head(flat_features(features, in_channels, image_size), num_classes,
                      dense_units=dense_units, dropout=dropout, act=activation)
    return nn.Sequential(features, head)
