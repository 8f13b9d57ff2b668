"""LeNet-5 as the lectures tabulate it: C1 6@28x28, S2, C3 16@10x10, S4, C5 120, F6 84, output 10."""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from . import register
from .layers import activation as act_layer
from .layers import Flatten, channels, flat_features, pool2d


@register("lenet5")
def lenet5(*, num_classes: int, in_channels: int, image_size: int, dense_units: int = 84,
           dropout: float = 0.0, batch_norm: bool = False, pool: str = "avg", activation: str = "tanh",
           width: float = 1.0) -> nn.Module:
    """LeNet-5 (LeCun 1998): 5x5 convs, subsampling, tanh; C5 120 and F6 84 (dense_units). Layers named as in the paper."""
    c1, c3, c5 = channels(6, width), channels(16, width), channels(120, width)

    def conv(name: str, cin: int, cout: int) -> list:
        layers = [(name, nn.Conv2d(cin, cout, 5, bias=not batch_norm))]
        if batch_norm:
            layers.append((f"{name}_bn", nn.BatchNorm2d(cout)))
        return layers + [(f"{name}_act", act_layer(activation))]

    layers = [*conv("C1", in_channels, c1), ("S2", pool2d(pool)), *conv("C3", c1, c3), ("S4", pool2d(pool)),
              ("flatten", Flatten())]
    n = flat_features(nn.Sequential(OrderedDict(layers)), in_channels, image_size)
    layers += [("C5", nn.Linear(n, c5)), ("C5_act", act_layer(activation))]  # a 5x5 conv over the 5x5 map
    if dense_units:
        layers += [("F6", nn.Linear(c5, dense_units)), ("F6_act", act_layer(activation))]
    if dropout:
        layers.append(("dropout", nn.Dropout(dropout)))
    layers.append(("output", nn.Linear(dense_units or c5, num_classes)))
    return nn.Sequential(OrderedDict(layers))
