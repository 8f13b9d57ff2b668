"""VGG: stacks of 3x3 convolutions, each stage halved by a 2x2 pool, then a dense head."""

from __future__ import annotations

from torch import nn

from . import register
from .layers import activation as act_layer
from .layers import Flatten, channels, conv_bn_act, dense_head, flat_features, pool2d


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
    """VGG-style CIFAR net: 3 stages (64-128-256) of `depth` 3x3 convs with a 2x2 pool, global max pool, dense head."""
    layers: list[nn.Module] = []
    cin = in_channels
    for base in (64, 128, 256):
        cout = channels(base, width)
        layers += _stage(cin, cout, depth, pool=pool, batch_norm=batch_norm, act=activation)
        cin = cout
    layers.append(nn.AdaptiveMaxPool2d(1))
    features = nn.Sequential(*layers)
    head = dense_head(flat_features(features, in_channels, image_size), num_classes,
                      dense_units=dense_units, dropout=dropout, act=activation)
    return nn.Sequential(features, head)


# the lectures' VGG configurations: channels per 3x3 conv, "M" a 2x2 pool
VGG_CONFIGS = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


@register("vgg11", depth=11)
@register("vgg13", depth=13)
@register("vgg16", depth=16)
@register("vgg19", depth=19)
def vgg(*, num_classes: int, in_channels: int, image_size: int, depth: int = 16, dense_units: int = 4096,
        dropout: float = 0.5, batch_norm: bool = False, pool: str = "max", activation: str = "relu",
        width: float = 1.0) -> nn.Module:
    """VGG-11/13/16/19 (Simonyan & Zisserman): 3x3 conv stacks, five 2x2 pools, two dense layers of 4096."""
    from .layers import check_choice

    check_choice("depth", depth, VGG_CONFIGS)
    layers: list[nn.Module] = []
    cin = in_channels
    for item in VGG_CONFIGS[depth]:
        if item == "M":
            layers.append(pool2d(pool))
        else:
            cout = channels(item, width)
            layers.append(conv_bn_act(cin, cout, 3, batch_norm=batch_norm, act=activation))
            cin = cout
    features = nn.Sequential(*layers)
    n = flat_features(features, in_channels, image_size)  # 512 at 32x32, 512x7x7 at 224x224
    head: list[nn.Module] = [Flatten()]
    for _ in range(2 if dense_units else 0):
        head += [nn.Linear(n, dense_units), act_layer(activation), nn.Dropout(dropout)]
        n = dense_units
    if not dense_units and dropout:
        head.append(nn.Dropout(dropout))
    head.append(nn.Linear(n, num_classes))
    return nn.Sequential(features, nn.Sequential(*head))
