"""The peer of `make bench ARGS=fast`: a CPU port of the current CIFAR-10 speed record, airbench94_muon.

Source: https://github.com/KellerJordan/cifar10-airbench, file `airbench94_muon.py` (Keller Jordan; 94.01% mean
TTA accuracy in 2.59 s on an A100, 8 epochs at batch 2000). Written anew from that file, computing the same thing:

- the net: a frozen 2x2 patch-whitening conv (3 -> 24, with a learned bias for the first 3 epochs), GELU, three
  conv groups (conv 3x3 -> max pool 2 -> BN -> GELU -> conv 3x3 -> BN -> GELU; widths 64, 256, 256; convs
  without bias, identity (dirac) initialised; BN without a learned scale, momentum 0.4, eps 1e-12), a 3x3 max
  pool, a bias-free linear head with unit-std weights, logits divided by 256;
- the data: normalised with the original's constants, randomly mirrored once, reflect-padded by 2, a random
  shift of up to 2 pixels per image every epoch, all images mirrored in odd epochs; batch 2000, last
  partial batch dropped;
- the optimizers: SGD + Nesterov (momentum 0.85) on the whitening bias and BN biases (lr 0.053) and the head
  (lr 0.67), weight decay 2e-6 x batch per step; Muon on the conv filters (lr 0.24, momentum 0.6, Nesterov,
  3 Newton-Schulz steps in bf16, each filter bank rescaled to norm sqrt(out channels) before its step); the
  loss is the label-smoothed (0.2) cross-entropy summed over the batch; every rate decays linearly to 0 over
  the 8 epochs, the whitening bias's over its 3;
- the score: TTA over the mirror pair, and the mirror pairs shifted one pixel up-left and down-right.

What differs, because this is a CPU: bf16 autocast instead of `.half()` weights, no torch.compile, wall-clock
timing, the batch crop as one strided gather (cnnlab.data's trick) instead of masked copies, and the process
settings cnnlab's engine runs under (device.Device.open: glibc keeps freed buffers instead of returning them to the
OS, denormals flushed), without which the same steps ran about 25% slower here (about 120 s an epoch against 93 s
on a Zen 4). The timer
covers what the original's does: whitening init, the training epochs, the final TTA pass; not data loading
or the per-epoch plain test.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
BATCH, EPOCHS, WHITEN_BIAS_EPOCHS = 2000, 8, 3
BIAS_LR, HEAD_LR, FILTER_LR, DECAY = 0.053, 0.67, 0.24, 2e-6 * 2000


# ---------------------------------------------------------------- Muon


def orthogonalize(g: torch.Tensor, steps: int = 3, eps: float = 1e-7) -> torch.Tensor:
    """Quintic Newton-Schulz iteration towards the nearest semi-orthogonal matrix of `g` (2-D), in bf16."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.bfloat16()
    x = x / (x.norm() + eps)
    wide = g.size(0) <= g.size(1)
    if not wide:
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x if wide else x.T


class Muon(torch.optim.Optimizer):
    def __init__(self, params, lr: float, momentum: float):
        super().__init__(params, {"lr": lr, "momentum": momentum})

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p.grad))
                buf.mul_(group["momentum"]).add_(p.grad)
                g = p.grad.add(buf, alpha=group["momentum"])  # Nesterov
                p.mul_(len(p) ** 0.5 / p.norm())
                p.add_(orthogonalize(g.reshape(len(g), -1)).view(g.shape), alpha=-group["lr"])


# ---------------------------------------------------------------- data


class Loader:
    """Batches from normalised float images held in memory; `augment` as the original's train loader."""

    def __init__(self, images_uint8: torch.Tensor, labels: torch.Tensor, batch: int, augment: bool):
        mean = torch.tensor(MEAN, device=images_uint8.device).view(1, 3, 1, 1)
        std = torch.tensor(STD, device=images_uint8.device).view(1, 3, 1, 1)
        self.images = ((images_uint8.float() / 255 - mean) / std).contiguous(memory_format=torch.channels_last)
        self.labels, self.batch, self.augment, self.epoch = labels, batch, augment, 0
        self.crops = None

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch if self.augment else math.ceil(n / self.batch)

    def _prepare(self) -> None:
        """First epoch: mirror a random half once, reflect-pad by 2, and view every 5x5 shift of every image."""
        x = self.images
        x = torch.where(torch.rand(len(x), device=x.device).view(-1, 1, 1, 1) < 0.5, x.flip(-1), x)
        padded = F.pad(x, (2, 2, 2, 2), mode="reflect").contiguous()
        n, c, h, w = padded.shape
        sn, sc, sh, sw = padded.stride()
        self.crops = padded.as_strided((n, 5, 5, c, h - 4, w - 4), (sn, sh, sw, sc, sh, sw))

    def __iter__(self):
        if self.augment and self.crops is None:
            self._prepare()
        epoch, self.epoch = self.epoch, self.epoch + 1
        device = self.labels.device
        order = torch.randperm(len(self.labels), device=device) if self.augment else \
            torch.arange(len(self.labels), device=device)
        for i in range(len(self)):
            idx = order[i * self.batch:(i + 1) * self.batch]
            if self.augment:
                dy, dx = torch.randint(0, 5, (2, len(idx)), device=device)
                x = self.crops[idx, dy, dx]
                if epoch % 2 == 1:
                    x = x.flip(-1)
                x = x.contiguous(memory_format=torch.channels_last)
            else:
                x = self.images[idx]
            yield x, self.labels[idx]


# ---------------------------------------------------------------- the net


class BatchNorm(nn.BatchNorm2d):
    def __init__(self, channels: int, momentum: float = 0.4):
        super().__init__(channels, momentum=momentum, eps=1e-12)
        self.weight.requires_grad_(False)


class Conv(nn.Conv2d):
    def __init__(self, cin: int, cout: int):
        super().__init__(cin, cout, 3, padding="same", bias=False)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        nn.init.dirac_(self.weight.data[:self.in_channels])


class ConvGroup(nn.Module):
    def __init__(self, cin: int, cout: int, activation=nn.GELU, bn_momentum: float = 0.4):
        super().__init__()
        self.conv1, self.pool, self.norm1 = Conv(cin, cout), nn.MaxPool2d(2), BatchNorm(cout, bn_momentum)
        self.conv2, self.norm2, self.activ = Conv(cout, cout), BatchNorm(cout, bn_momentum), activation()

    def forward(self, x):
        x = self.activ(self.norm1(self.pool(self.conv1(x))))
        return self.activ(self.norm2(self.conv2(x)))


class CifarNet(nn.Module):
    def __init__(self, activation=nn.GELU, bn_momentum: float = 0.4):
        """activation, bn_momentum: the conv groups' (cifar10-speedrun's port changes both)."""
        super().__init__()
        self.whiten = nn.Conv2d(3, 24, 2, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)
        groups = [ConvGroup(cin, cout, activation, bn_momentum) for cin, cout in ((24, 64), (64, 256), (256, 256))]
        self.layers = nn.Sequential(nn.GELU(), *groups, nn.MaxPool2d(3))
        self.head = nn.Linear(256, 10, bias=False)

    def reset(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.BatchNorm2d, nn.Linear)):
                m.reset_parameters()
        with torch.no_grad():
            self.head.weight /= self.head.weight.std()

    @torch.no_grad()
    def init_whiten(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Eigenvectors of the (uncentred) 2x2 patch covariance, scaled by 1/sqrt(eigenvalue + eps), and negated."""
        patches = images.float().unfold(2, 2, 1).unfold(3, 2, 1).transpose(1, 3).reshape(-1, 3, 2, 2)
        flat = patches.reshape(len(patches), -1)
        values, vectors = torch.linalg.eigh(flat.T @ flat / len(flat), UPLO="U")
        scaled = vectors.T.reshape(-1, 3, 2, 2) / torch.sqrt(values.view(-1, 1, 1, 1) + eps)
        self.whiten.weight.copy_(torch.cat((scaled, -scaled)))

    def forward(self, x, whiten_bias_grad: bool = True):
        bias = self.whiten.bias if whiten_bias_grad else self.whiten.bias.detach()
        x = self.layers(F.conv2d(x, self.whiten.weight, bias))
        x = x.view(len(x), -1)
        return self.head(x) / x.size(-1)


# ---------------------------------------------------------------- evaluation


def tta_logits(model, x):
    def mirror(v):
        return 0.5 * model(v).float() + 0.5 * model(v.flip(-1)).float()

    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    shifted = torch.stack([mirror(padded[:, :, :32, :32]), mirror(padded[:, :, 2:, 2:])]).mean(0)
    return 0.5 * mirror(x) + 0.5 * shifted


def accuracy(model, loader: Loader, tta: bool, dev) -> float:
    model.eval()
    with torch.no_grad(), dev.autocast():
        logits = torch.cat([tta_logits(model, x) if tta else model(x).float()
                            for x in loader.images.split(2000)])
    model.train()
    return (logits.argmax(1) == loader.labels).float().mean().item()


# ---------------------------------------------------------------- training


def train(x_train, y_train, x_test, y_test, seed: int = 0, epochs: int = EPOCHS, on_epoch=None,
          device: str = "cpu") -> dict:
    """One run on uint8 tensors (N, 3, 32, 32): {tta_acc, train_s (timed as the record times itself), steps_s (the
    training steps alone), epochs, curve [(epoch, seconds, plain acc)], params}. device: cpu (bf16), or a GPU at
    its native precision (bf16 from compute capability 8.0; the original's fp16 below it), timed once its queued
    work is done."""
    from cnnlab.device import Device

    dev = Device.open(device, "bf16" if device == "cpu" else "auto")
    torch.manual_seed(seed)
    train_loader = Loader(x_train.to(dev.device), y_train.to(dev.device), BATCH, augment=True)
    test_loader = Loader(x_test.to(dev.device), y_test.to(dev.device), 2000, augment=False)
    model = CifarNet().to(dev.device, memory_format=torch.channels_last)
    total_steps = epochs * len(train_loader)
    whiten_bias_steps = WHITEN_BIAS_EPOCHS * len(train_loader)

    norm_biases = [p for n, p in model.named_parameters() if "norm" in n and p.requires_grad]
    sgd = torch.optim.SGD([{"params": [model.whiten.bias], "lr": BIAS_LR, "weight_decay": DECAY / BIAS_LR},
                           {"params": norm_biases, "lr": BIAS_LR, "weight_decay": DECAY / BIAS_LR},
                           {"params": [model.head.weight], "lr": HEAD_LR, "weight_decay": DECAY / HEAD_LR}],
                          momentum=0.85, nesterov=True, fused=True)
    muon = Muon([p for p in model.parameters() if p.ndim == 4 and p.requires_grad], lr=FILTER_LR, momentum=0.6)
    initial = [[g["lr"] for g in opt.param_groups] for opt in (sgd, muon)]

    elapsed, steps_s, curve, step = 0.0, 0.0, [], 0
    start = dev.now()
    model.reset()
    model.init_whiten(train_loader.images[:5000])
    elapsed += dev.now() - start
    for epoch in range(1, math.ceil(total_steps / len(train_loader)) + 1):
        start = dev.now()
        for x, y in train_loader:
            with dev.autocast():
                out = model(x, whiten_bias_grad=step < whiten_bias_steps)
                loss = F.cross_entropy(out.float(), y, label_smoothing=0.2, reduction="sum")
            loss.backward()
            sgd.param_groups[0]["lr"] = initial[0][0] * (1 - step / whiten_bias_steps)
            for group, lr in zip(sgd.param_groups[1:] + muon.param_groups, initial[0][1:] + initial[1]):
                group["lr"] = lr * (1 - step / total_steps)
            sgd.step()
            muon.step()
            model.zero_grad(set_to_none=True)
            step += 1
            if step >= total_steps:
                break
        seconds = dev.now() - start
        steps_s += seconds
        elapsed += seconds
        curve.append((epoch, round(elapsed, 1), round(accuracy(model, test_loader, tta=False, dev=dev), 4)))
        if on_epoch is not None:
            on_epoch(*curve[-1])
    start = dev.now()
    tta = accuracy(model, test_loader, tta=True, dev=dev)
    elapsed += dev.now() - start
    return {"tta_acc": tta, "train_s": elapsed, "steps_s": steps_s, "epochs": epochs, "curve": curve,
            "params": sum(p.numel() for p in model.parameters())}


def forward_flops() -> int:
    """FLOPs of one forward pass of one image, by torch's counter (convolutions and the head)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = CifarNet()
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, 32, 32))
    return counter.get_total_flops()
