"""Building blocks shared by the architectures: activations, pooling, conv-BN-act, dense head."""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

# In place where autograd allows it without a copy. For ReLU6 (hardtanh), SiLU and Mish it copies the input
# before an in-place call overwrites it, as their backward reads it: out of place they skip that copy
# (fast94_speedrun's SiLUs: 4 copies, 15 ms of a 1.07 s step) and compute the same values.
ACTIVATIONS = {
    "relu": lambda: nn.ReLU(inplace=True),
    "relu6": nn.ReLU6,
    "leaky_relu": lambda: nn.LeakyReLU(0.1, inplace=True),
    "elu": lambda: nn.ELU(inplace=True),
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "mish": nn.Mish,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}


# activations that never decrease: max (or min) pooling commutes with them
NON_DECREASING = {"relu", "relu6", "leaky_relu", "elu", "tanh", "sigmoid"}


def activation(name: str) -> nn.Module:
    return ACTIVATIONS[name]()


class _MaxPoolUnpool(torch.autograd.Function):
    """Non-overlapping max pooling whose backward is max_unpool2d of the gradient at the forward's indices:
    the same gradient, bit for bit (ties included), as max_pool2d's own backward, which on the CPU is a slower
    kernel (tf_cnn's first pool: 1.1 ms against 2.4 ms a step in bf16 channels_last)."""

    @staticmethod
    def forward(ctx, x, k: int):
        out, indices = F.max_pool2d(x, k, return_indices=True)
        ctx.save_for_backward(indices)
        ctx.size, ctx.k = x.shape[-2:], k
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (indices,) = ctx.saved_tensors
        return F.max_unpool2d(grad, indices, ctx.k, output_size=ctx.size), None


class MaxPool2d(nn.MaxPool2d):
    """nn.MaxPool2d, trained on the CPU through _MaxPoolUnpool when its windows do not overlap."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size
        if (x.device.type == "cpu" and x.requires_grad and torch.is_grad_enabled() and isinstance(k, int)
                and self.stride == k and self.padding == 0 and self.dilation == 1 and not self.ceil_mode):
            return _MaxPoolUnpool.apply(x, k)
        return super().forward(x)


class MinPool2d(MaxPool2d):
    """Min pooling, a pooling type of its own in the course: -maxpool(-x)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -super().forward(-x)


class _SmallConv(torch.autograd.Function):
    """A stride-1 convolution whose weight gradient is one matrix product over its unfolded input (im2col)
    instead of oneDNN's weight-gradient kernel, which on the CPU is slow for small outputs: tf_cnn's third conv
    (6x6 -> 4x4, 64 channels) 0.34 ms against 0.69 ms a step, airbench's last (3x3, 256) 41 against 85 ms.
    The same sums in another order; the input gradient and the forward pass are torch's own. Under autocast the
    inputs are cast as autocast casts a convolution's."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding: int):
        dtypes = (weight.dtype, None if bias is None else bias.dtype)
        if torch.is_autocast_enabled("cpu"):
            low = torch.get_autocast_dtype("cpu")
            x, weight = x.to(low), weight.to(low)
            bias = None if bias is None else bias.to(low)
        with torch.autocast("cpu", enabled=False):
            out = F.conv2d(x, weight, bias, padding=padding)
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.dtypes, ctx.has_bias = padding, dtypes, bias is not None
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        p = ctx.padding
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(grad, x, weight, None, [1, 1], [p, p], [1, 1], False,
                                                         [0, 0], 1, [True, False, False])[0]
        cout, _, k, _ = weight.shape
        xp = (F.pad(x, (p, p, p, p)) if p else x).permute(0, 2, 3, 1)  # N H W C (a pad of 0 would copy x)
        n, h, w, c = xp.shape
        oh, ow = h - k + 1, w - k + 1
        sn, sh, sw, sc = xp.stride()
        cols = xp.as_strided((n, oh, ow, k, k, c), (sn, sh, sw, sh, sw, sc)).reshape(n * oh * ow, k * k * c)
        rows = grad.permute(0, 2, 3, 1).reshape(n * oh * ow, cout)
        grad_w = (rows.t() @ cols).view(cout, k, k, c).permute(0, 3, 1, 2).to(ctx.dtypes[0])
        grad_b = grad.sum((0, 2, 3), dtype=torch.float32).to(ctx.dtypes[1]) if ctx.has_bias else None
        return grad_x, grad_w, grad_b, None


class Conv2d(nn.Conv2d):
    """nn.Conv2d, trained on the CPU through _SmallConv where that is faster: stride 1, square kernel, one group,
    zero padding, and an output of at most 16 positions (measured up to 7x7, where oneDNN's own kernel wins)."""

    SMALL = 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, p = self.kernel_size[0], self.padding
        if (x.device.type == "cpu" and torch.is_grad_enabled() and self.weight.requires_grad and self.groups == 1
                and self.stride == (1, 1) and self.dilation == (1, 1) and self.kernel_size == (k, k)
                and isinstance(p, tuple) and p[0] == p[1] and self.padding_mode == "zeros"
                and (x.shape[-2] + 2 * p[0] - k + 1) * (x.shape[-1] + 2 * p[0] - k + 1) <= self.SMALL):
            return _SmallConv.apply(x, self.weight, self.bias, p[0])
        return super().forward(x)


class _FlattenChannelsLast(torch.autograd.Function):
    """x.flatten(1) whose gradient comes back in x's channels-last layout: the gradient of a plain flatten is a
    view in the NCHW order, and the activation's backward before it then mixes two layouts, a slow kernel on the
    CPU (tf_cnn's last ReLU: 0.26 ms a step where the same sizes in one layout take 0.07 ms)."""

    @staticmethod
    def forward(ctx, x):
        ctx.shape = x.shape
        return x.flatten(1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        return grad.reshape(ctx.shape).contiguous(memory_format=torch.channels_last)


class Flatten(nn.Flatten):
    """nn.Flatten, whose gradient keeps a channels-last input's layout (the values are the same)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.ndim == 4 and self.start_dim == 1 and self.end_dim == -1 and torch.is_grad_enabled() and x.requires_grad
                and x.shape[-1] * x.shape[-2] > 1 and x.is_contiguous(memory_format=torch.channels_last)):
            return _FlattenChannelsLast.apply(x)
        return super().forward(x)


def pool2d(kind: str, kernel_size: int = 2, stride: int | None = None, padding: int = 0) -> nn.Module:
    stride = kernel_size if stride is None else stride
    if kind == "max":
        return MaxPool2d(kernel_size, stride, padding)
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
    layers = [Conv2d(cin, cout, kernel_size, stride, padding, groups=groups, bias=not batch_norm)]
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
    layers: list[nn.Module] = [Flatten()]
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
