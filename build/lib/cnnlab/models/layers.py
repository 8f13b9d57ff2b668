"""Building blocks shared by the architectures: activations, pooling, conv-BN-act, dense head."""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

ACTIVATIONS = {
    "relu": lambda: nn.ReLU(inplace=True),
    "relu6": lambda: nn.ReLU6(inplace=True),
    "leaky_relu": lambda: nn.LeakyReLU(0.1, inplace=True),
    "elu": lambda: nn.ELU(inplace=True),
    "gelu": nn.GELU,
    "silu": lambda: nn.SiLU(inplace=True),
    "mish": lambda: nn.Mish(inplace=True),
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


# activations that never decrease: max (or min) pooling commutes with them
NON_DECREASING = {"relu", "relu6", "leaky_relu", "elu", "tanh", "sigmoid"}


def activation(name: str) -> nn.Module:
    return ACTIVATIONS[name]()


class MinPool2d(nn.MaxPool2d):
    """Min pooling, a pooling type of its own in the course: -maxpool(-x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -super().forward(-x)


def pool2d(kind: str, kernel_size: int = 2, stride: int | None = None, padding: int = 0) -> nn.Module:
    stride = kernel_size if stride is None else stride
    if kind == "max":
        return nn.MaxPool2d(kernel_size, stride, padding)
    if kind == "min":
        return MinPool2d(kernel_size, stride, padding)
    if kind == "avg":
        return nn.AvgPool2d(kernel_size, stride, padding, count_include_pad=False)
    raise ValueError(f"unknown pool {kind!r}")


def conv_act_pool(cin: int, cout: int, kernel_size: int = 3, *, padding: int | None = None, batch_norm: bool = True,
                  act: str = "relu", pool: str = "max") -> list[nn.Module]:
    """Conv -> [BN] -> activation -> 2x2 pool, as [conv block, pool block].

    With max or min pooling and a non-decreasing activation it is computed as conv -> [BN] -> pool -> activation:
    the same outputs and gradients with the activation on a quarter of the values (tf_cnn trains ~5% faster on
    the CPU). The conv block's parameter names are the same either way."""
    block = conv_bn_act(cin, cout, kernel_size, padding=padding, batch_norm=batch_norm, act=act)
    if pool in ("max", "min") and act in NON_DECREASING:
        return [block[:-1], nn.Sequential(pool2d(pool), block[-1])]
    return [block, pool2d(pool)]


def channels(base: int, width: float, divisor: int = 1) -> int:
    """`base` channels scaled by the width multiplier, rounded to a multiple of `divisor`."""
    return max(divisor, int(round(base * width / divisor)) * divisor)


def conv_bn_act(cin: int, cout: int, kernel_size: int = 3, *, stride: int = 1, padding: int | None = None,
                batch_norm: bool = True, act: str | None = "relu", groups: int = 1) -> nn.Sequential:
    """Conv -> BatchNorm (between convolution and activation, as the course has it) -> activation."""
    padding = kernel_size // 2 if padding is None else padding
    layers = [nn.Conv2d(cin, cout, kernel_size, stride, padding, groups=groups, bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(cout))
    if act:
        layers.append(activation(act))
    return nn.Sequential(*layers)


def dense_head(in_features: int, num_classes: int, *, dense_units: int, dropout: float,
               act: str = "relu") -> nn.Sequential:
    """Flatten -> [Dense(dense_units) -> act] -> Dropout -> Dense(num_classes).

    dense_units=0 removes the hidden dense layer (the exercise's "removed intermediate dense layer").
    """
    layers: list[nn.Module] = [nn.Flatten()]
    if dense_units:
        layers += [nn.Linear(in_features, dense_units), activation(act)]
        in_features = dense_units
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(in_features, num_classes))
    return nn.Sequential(*layers)


@torch.no_grad()
def output_shape(module: nn.Module, in_channels: int, image_size: int) -> torch.Size:
    """Shape of `module`'s output for one image, found by running it (training mode left as it was)."""
    was_training = module.training
    module.eval()
    try:
        return module(torch.zeros(1, in_channels, image_size, image_size)).shape[1:]
    finally:
        module.train(was_training)


def flat_features(module: nn.Module, in_channels: int, image_size: int) -> int:
    shape = output_shape(module, in_channels, image_size)
    if min(shape) < 1:
        raise ValueError(f"image_size={image_size} is too small: the feature map vanishes")
    return int(torch.Size(shape).numel())


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: channel weights from globally pooled features (EfficientNet, MobileNetV3)."""

    def __init__(self, channels: int, reduced: int, act: str = "silu"):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, reduced, 1)
        self.act = activation(act)
        self.fc2 = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(self.act(self.fc1(w))))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle: interleave the channels of `groups` groups."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def check_choice(name: str, value, valid) -> None:
    """Refuse a knob value the architecture cannot take, naming the valid ones."""
    if value not in valid:
        raise ValueError(f"{name}={value} is not supported here; valid: {', '.join(str(v) for v in valid)}")
