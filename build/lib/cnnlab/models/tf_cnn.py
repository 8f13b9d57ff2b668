"""The exercise's starting point: the TensorFlow CNN tutorial model."""

from __future__ import annotations

from torch import nn

from . import register
from .layers import channels, conv_act_pool, conv_bn_act, dense_head, flat_features


@register("tf_cnn")
def tf_cnn(*, num_classes: int, in_channels: int, image_size: int, dense_units: int = 64,
           dropout: float = 0.0, batch_norm: bool = False, pool: str = "max", activation: str = "relu",
           width: float = 1.0) -> nn.Module:
    """TensorFlow tutorial CNN: Conv32-Pool-Conv64-Pool-Conv64, Dense(64), Dense(10); ~70% in 10 epochs."""
    c1, c2 = channels(32, width), channels(64, width)
    features = nn.Sequential(
        *conv_act_pool(in_channels, c1, 3, padding=0, batch_norm=batch_norm, act=activation, pool=pool),
        *conv_act_pool(c1, c2, 3, padding=0, batch_norm=batch_norm, act=activation, pool=pool),
        conv_bn_act(c2, c2, 3, padding=0, batch_norm=batch_norm, act=activation),
    )
    head = dense_head(flat_features(features, in_channels, image_size), num_classes,
                      dense_units=dense_units, dropout=dropout, act=activation)
    return nn.Sequential(features, head)
