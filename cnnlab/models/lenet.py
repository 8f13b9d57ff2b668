"""LeNet-5 as the lectures tabulate it: C1 6@28x28, S2, C3 16@10x10, S4, C5 120, F6 84, output 10."""

from __future__ import annotations

from torch import nn

from . import register
from .layers import activation as act_layer
from .layers import channels, conv_bn_act, dense_head, flat_features, pool2d


@register("lenet5")
def lenet5(*, num_classes: int, in_channels: int, image_size: int, dense_units: int = 84,
           dropout: float = 0.0, batch_norm: bool = False, pool: str = "avg", activation: str = "tanh",
           width: float = 1.0) -> nn.Module:
    """LeNet-5 (LeCun 1998): 5x5 convs, subsampling, tanh; C5 120 and F6 84 (dense_units)."""
    c1, c3, c5 = channels(6, width), channels(16, width), channels(120, width)
    features = nn.Sequential(
        conv_bn_act(in_channels, c1, 5, padding=0, batch_norm=batch_norm, act=activation),  # C1
        pool2d(pool),  # S2
        conv_bn_act(c1, c3, 5, padding=0, batch_norm=batch_norm, act=activation),  # C3
        pool2d(pool),  # S4
        nn.Flatten(),
    )
    c5_in = flat_features(features, in_channels, image_size)
    features.append(nn.Linear(c5_in, c5))  # C5: a 5x5 conv over the 5x5 map is a dense layer
    features.append(act_layer(activation))
    head = dense_head(c5, num_classes, dense_units=dense_units, dropout=dropout, act=activation)  # F6, output
    return nn.Sequential(features, head)
