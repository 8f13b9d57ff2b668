"""DenseNet-BC (Huang et al.): each layer sees all earlier feature maps; 1x1 bottlenecks, compressing transitions."""

from __future__ import annotations

import torch
from torch import nn

from . import register
from .layers import activation as act_layer
from .layers import dense_head, pool2d


class DenseLayer(nn.Module):
    """BN-act-Conv1x1 (4k) -> BN-act-Conv3x3 (k), concatenated to its input."""

    def __init__(self, cin: int, growth: int, act: str, dropout: float):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin), act_layer(act), nn.Conv2d(cin, 4 * growth, 1, bias=False),
            nn.BatchNorm2d(4 * growth), act_layer(act), nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False),
            *([nn.Dropout(dropout)] if dropout else []),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], 1)


@register("densenet_bc")
def densenet_bc(*, num_classes: int, in_channels: int, image_size: int, depth: int = 100, activation: str = "relu",
                pool: str = "avg", dropout: float = 0.0, growth_rate: int = 12,
                compression: float = 0.5) -> nn.Module:
    """DenseNet-BC for CIFAR: 3 dense blocks of (depth-4)/6 layers (growth k), transitions 1x1 conv + 2x2 pool."""
    if (depth - 4) % 6 or depth < 10:
        raise ValueError(f"depth={depth}: DenseNet-BC has depth 6n+4 (40, 100, 190, ...)")
    if not 0 < compression <= 1:
        raise ValueError(f"arch.compression={compression}: must be in (0, 1]")
    n = (depth - 4) // 6
    c = 2 * growth_rate
    layers: list[nn.Module] = [nn.Conv2d(in_channels, c, 3, padding=1, bias=False)]
    for block in range(3):
        for _ in range(n):
            layers.append(DenseLayer(c, growth_rate, activation, dropout))
            c += growth_rate
        if block < 2:  # transition: compress channels, halve the map
            out = int(c * compression)
            layers += [nn.BatchNorm2d(c), act_layer(activation), nn.Conv2d(c, out, 1, bias=False), pool2d(pool)]
            c = out
    layers += [nn.BatchNorm2d(c), act_layer(activation), nn.AdaptiveAvgPool2d(1)]
    return nn.Sequential(nn.Sequential(*layers), dense_head(c, num_classes, dense_units=0, dropout=0.0))
