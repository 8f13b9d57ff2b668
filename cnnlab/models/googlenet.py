"""GoogLeNet (Szegedy et al.): Inception modules with 1x1 reductions, global average pooling, auxiliary heads."""

from __future__ import annotations

import torch
from torch import nn

from . import register
from .layers import activation as act_layer
from .layers import channels, conv_bn_act, pool2d

# in, 1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj: the paper's table (inception 3a ... 5b)
INCEPTION = {
    "3a": (192, 64, 96, 128, 16, 32, 32), "3b": (256, 128, 128, 192, 32, 96, 64),
    "4a": (480, 192, 96, 208, 16, 48, 64), "4b": (512, 160, 112, 224, 24, 64, 64),
    "4c": (512, 128, 128, 256, 24, 64, 64), "4d": (512, 112, 144, 288, 32, 64, 64),
    "4e": (528, 256, 160, 320, 32, 128, 128), "5a": (832, 256, 160, 320, 32, 128, 128),
    "5b": (832, 384, 192, 384, 48, 128, 128),
}


class Inception(nn.Module):
    """Four parallel branches concatenated: 1x1; 1x1 -> 3x3; 1x1 -> 5x5; 3x3 pool -> 1x1."""

    def __init__(self, cin, c1, c3r, c3, c5r, c5, cp, *, bn: bool, act: str, pool: str):
        super().__init__()
        self.b1 = conv_bn_act(cin, c1, 1, batch_norm=bn, act=act)
        self.b2 = nn.Sequential(conv_bn_act(cin, c3r, 1, batch_norm=bn, act=act),
                                conv_bn_act(c3r, c3, 3, batch_norm=bn, act=act))
        self.b3 = nn.Sequential(conv_bn_act(cin, c5r, 1, batch_norm=bn, act=act),
                                conv_bn_act(c5r, c5, 5, batch_norm=bn, act=act))
        self.b4 = nn.Sequential(pool2d(pool, 3, 1, padding=1), conv_bn_act(cin, cp, 1, batch_norm=bn, act=act))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)


class AuxHead(nn.Module):
    """The auxiliary classifier on 4a and 4d (training only; its loss counts 0.3): pool to 4x4, 1x1 conv to 128,
    dense 1024, dropout (0.7 in the paper), dense to the classes."""

    def __init__(self, cin: int, num_classes: int, act: str, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.AdaptiveAvgPool2d(4), conv_bn_act(cin, 128, 1, batch_norm=False, act=act),
                                 nn.Flatten(), nn.Linear(2048, 1024), act_layer(act), nn.Dropout(dropout),
                                 nn.Linear(1024, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class GoogLeNet(nn.Module):
    aux_weight = 0.3  # training.py adds aux_weight x each auxiliary loss

    def __init__(self, *, num_classes, in_channels, width, bn, act, pool, dropout, aux_logits, aux_dropout):
        super().__init__()
        scale = lambda t: tuple(channels(v, width) for v in t)  # noqa: E731
        cfg = {k: scale(v) for k, v in INCEPTION.items()}
        self.stem = conv_bn_act(in_channels, cfg["3a"][0], 3, batch_norm=bn, act=act)  # CIFAR: one 3x3 conv
        block = lambda k: Inception(*cfg[k], bn=bn, act=act, pool=pool)  # noqa: E731
        self.stage3 = nn.Sequential(block("3a"), block("3b"), pool2d(pool, 3, 2, padding=1))
        self.stage4a = block("4a")
        self.stage4bcd = nn.Sequential(block("4b"), block("4c"), block("4d"))
        self.stage4e = nn.Sequential(block("4e"), pool2d(pool, 3, 2, padding=1))
        self.stage5 = nn.Sequential(block("5a"), block("5b"))
        out = sum(cfg["5b"][i] for i in (1, 3, 5, 6))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(out, num_classes))
        self.aux = None
        if aux_logits:
            c4a = sum(cfg["4a"][i] for i in (1, 3, 5, 6))
            c4d = sum(cfg["4d"][i] for i in (1, 3, 5, 6))
            self.aux = nn.ModuleList([AuxHead(c4a, num_classes, act, aux_dropout),
                                      AuxHead(c4d, num_classes, act, aux_dropout)])

    def forward(self, x: torch.Tensor):
        x = self.stage4a(self.stage3(self.stem(x)))
        aux1 = self.aux[0](x) if self.aux is not None and self.training else None
        x = self.stage4bcd(x)
        aux2 = self.aux[1](x) if self.aux is not None and self.training else None
        logits = self.head(self.stage5(self.stage4e(x)))
        return (logits, aux1, aux2) if aux1 is not None else logits


@register("googlenet")
def googlenet(*, num_classes: int, in_channels: int, image_size: int, width: float = 1.0, batch_norm: bool = True,
              activation: str = "relu", pool: str = "max", dropout: float = 0.4, aux_logits: bool = False,
              aux_dropout: float = 0.7) -> nn.Module:
    """GoogLeNet / Inception v1 for CIFAR: a 3x3 stem, inception 3a-5b, global average pool (aux heads optional)."""
    return GoogLeNet(num_classes=num_classes, in_channels=in_channels, width=width, bn=batch_norm, act=activation,
                     pool=pool, dropout=dropout, aux_logits=aux_logits, aux_dropout=aux_dropout)
