"""AlexNet (Krizhevsky et al. 2012), sized for 32x32: ReLU, dropout, overlapping max pool, optional LRN."""

from __future__ import annotations

from torch import nn

from . import register
from .layers import activation as act_layer
from .layers import Flatten, channels, conv_bn_act, flat_features, pool2d


@register("alexnet")
def alexnet(*, num_classes: int, in_channels: int, image_size: int, dense_units: int = 1024, dropout: float = 0.5,
            batch_norm: bool = False, pool: str = "max", activation: str = "relu", width: float = 1.0,
            lrn: bool = False) -> nn.Module:
    """CIFAR AlexNet: 5 convs (64-192-384-256-256), 3x3/stride-2 overlapping pools, two dense layers + dropout."""
    c = [channels(v, width) for v in (64, 192, 384, 256, 256)]

    def norm() -> list[nn.Module]:
        return [nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)] if lrn else []

    features = nn.Sequential(
        conv_bn_act(in_channels, c[0], 5, batch_norm=batch_norm, act=activation), *norm(),
        pool2d(pool, 3, 2, padding=1),  # overlapping: 3x3 windows, stride 2
        conv_bn_act(c[0], c[1], 5, batch_norm=batch_norm, act=activation), *norm(),
        pool2d(pool, 3, 2, padding=1),
        conv_bn_act(c[1], c[2], 3, batch_norm=batch_norm, act=activation),
        conv_bn_act(c[2], c[3], 3, batch_norm=batch_norm, act=activation),
        conv_bn_act(c[3], c[4], 3, batch_norm=batch_norm, act=activation),
        pool2d(pool, 3, 2, padding=1),
    )
    n = flat_features(features, in_channels, image_size)
    head = nn.Sequential(
        Flatten(), nn.Dropout(dropout), nn.Linear(n, dense_units), act_layer(activation),
        nn.Dropout(dropout), nn.Linear(dense_units, dense_units), act_layer(activation),
        nn.Linear(dense_units, num_classes),
    )
    return nn.Sequential(features, head)
