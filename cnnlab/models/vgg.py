"""VGG: stacks of 3x3 convolutions, each stage halved by a 2x2 pool, then a dense head."""

from __future__ import annotations

from torch import nn

from . import register
from .layers import activation as act_layer
from .layers import channels, conv_bn_act, dense_head, flat_features, pool2d


def _stage(cin: int, cout: int, depth: int, *, pool: str, batch_norm: bool, act: str) -> list[nn.Module]:
    """conv -> pool -> [BN] -> act, then depth-1 x (conv -> [BN] -> act).

    Pooling right after the first convolution (as fast CIFAR nets do) runs the rest of the stage
    at the lower resolution: a quarter of the FLOPs of pooling at the end, for the same receptive field.
    """
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=not batch_norm), pool2d(pool)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(cout))
    layers.append(act_layer(act))
    for _ in range(depth - 1):
        layers.append(conv_bn_act(cout, cout, 3, batch_norm=batch_norm, act=act))
    return layers


@register("vgg_small")
def vgg_small(*, num_classes: int, in_channels: int, image_size: int, dense_units: int = 256,
              dropout: float = 0.2, batch_norm: bool = True, pool: str = "max", activation: str = "relu",
              width: float = 1.0, depth: int = 2) -> nn.Module:
    """VGG-style CIFAR net: 3 stages (64-256-256) of `depth` 3x3 convs with a 2x2 pool, global max pool, dense head."""
    layers: list[nn.Module] = []
    cin = in_channels
    for base in (64, 256, 256):
        cout = channels(base, width)
        layers += _stage(cin, cout, depth, pool=pool, batch_norm=batch_norm, act=activation)
        cin = cout
    layers.append(nn.AdaptiveMaxPool2d(1))
    features = nn.Sequential(*layers)
    head = dense_head(flat_features(features, in_channels, image_size), num_classes,
                      dense_units=dense_units, dropout=dropout, act=activation)
    return nn.Sequential(features, head)
