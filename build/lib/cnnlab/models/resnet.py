"""ResNet (He et al.): residual blocks; the CIFAR family (ResNet-20/32/56/110) and ResNet-18/34/50."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import register
from .layers import activation as act_layer
from .layers import channels, check_choice, dense_head


def _bn(c: int, on: bool) -> nn.Module:
    return nn.BatchNorm2d(c) if on else nn.Identity()


class BasicBlock(nn.Module):
    """3x3 -> 3x3 with an identity shortcut; `shortcut` decides how a change of shape is bridged."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int, *, batch_norm: bool, act: str, shortcut: str):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=not batch_norm)
        self.bn1 = _bn(planes, batch_norm)
        self.act1 = act_layer(act)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=not batch_norm)
        self.bn2 = _bn(planes, batch_norm)
        self.act2 = act_layer(act)
        self.pad = None
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != planes:
            if shortcut == "pad":  # option A of the paper: subsample and zero-pad channels, no parameters
                self.pad = (planes - cin, stride)
            else:  # option B: 1x1 projection
                self.shortcut = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=not batch_norm),
                                              _bn(planes, batch_norm))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.pad is not None:
            extra, stride = self.pad
            identity = F.pad(x[:, :, ::stride, ::stride], (0, 0, 0, 0, extra // 2, extra - extra // 2))
        else:
            identity = self.shortcut(x)
        return self.act2(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 -> 1x1 expand (x4), with a projection shortcut when the shape changes."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int, *, batch_norm: bool, act: str, shortcut: str):
        super().__init__()
        out = planes * self.expansion
        self.body = nn.Sequential(
            nn.Conv2d(cin, planes, 1, bias=not batch_norm), _bn(planes, batch_norm), act_layer(act),
            nn.Conv2d(planes, planes, 3, stride, 1, bias=not batch_norm), _bn(planes, batch_norm), act_layer(act),
            nn.Conv2d(planes, out, 1, bias=not batch_norm), _bn(out, batch_norm),
        )
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != out:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=not batch_norm), _bn(out, batch_norm))
        self.act = act_layer(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, block, stage_blocks, stage_planes, *, in_channels: int, num_classes: int, stem: int,
                 batch_norm: bool, act: str, shortcut: str, dense_units: int, dropout: float):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, stem, 3, 1, 1, bias=not batch_norm), _bn(stem, batch_norm),
                                  act_layer(act))
        stages, cin = [], stem
        for i, (n, planes) in enumerate(zip(stage_blocks, stage_planes)):
            blocks = []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(block(cin, planes, stride, batch_norm=batch_norm, act=act, shortcut=shortcut))
                cin = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = dense_head(cin, num_classes, dense_units=dense_units, dropout=dropout, act=act)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.stages(self.stem(x))))


@register("resnet20", depth=20)
@register("resnet32", depth=32)
@register("resnet56", depth=56)
@register("resnet110", depth=110)
def cifar_resnet(*, num_classes: int, in_channels: int, image_size: int, depth: int = 20, width: float = 1.0,
                 batch_norm: bool = True, activation: str = "relu", dense_units: int = 0, dropout: float = 0.0,
                 shortcut: str = "pad") -> nn.Module:
    """He et al.'s CIFAR ResNet: 3 stages (16-32-64) of (depth-2)/6 basic blocks, global average pool."""
    if (depth - 2) % 6 or depth < 8:
        raise ValueError(f"depth={depth}: the CIFAR ResNet has depth 6n+2 (20, 32, 44, 56, 110, ...)")
    check_choice("arch.shortcut", shortcut, ("pad", "conv"))
    n = (depth - 2) // 6
    planes = [channels(c, width) for c in (16, 32, 64)]
    return ResNet(BasicBlock, [n] * 3, planes, in_channels=in_channels, num_classes=num_classes, stem=planes[0],
                  batch_norm=batch_norm, act=activation, shortcut=shortcut, dense_units=dense_units, dropout=dropout)


RESNET_BLOCKS = {18: (BasicBlock, [2, 2, 2, 2]), 34: (BasicBlock, [3, 4, 6, 3]), 50: (Bottleneck, [3, 4, 6, 3]),
                 101: (Bottleneck, [3, 4, 23, 3]), 152: (Bottleneck, [3, 8, 36, 3])}


@register("resnet18", depth=18)
@register("resnet34", depth=34)
@register("resnet50", depth=50)
def resnet(*, num_classes: int, in_channels: int, image_size: int, depth: int = 18, width: float = 1.0,
           batch_norm: bool = True, activation: str = "relu", dense_units: int = 0,
           dropout: float = 0.0) -> nn.Module:
    """ResNet-18/34 (basic blocks) and -50/101/152 (bottleneck 1x1-3x3-1x1), with a 3x3 stem for 32x32 input."""
    check_choice("depth", depth, RESNET_BLOCKS)
    block, blocks = RESNET_BLOCKS[depth]
    planes = [channels(c, width) for c in (64, 128, 256, 512)]
    return ResNet(block, blocks, planes, in_channels=in_channels, num_classes=num_classes, stem=planes[0],
                  batch_norm=batch_norm, act=activation, shortcut="conv", dense_units=dense_units, dropout=dropout)
