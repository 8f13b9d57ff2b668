"""The second peer of `make bench ARGS=fast`: a CPU port of the newer CIFAR-10 speed record, cifar10-speedrun.

Source: https://github.com/hiverge/cifar10-speedrun, file `cifar10_speedrun.py` (94.01% mean TTA accuracy in about
2.0 s on an A100, against airbench94_muon's 2.59 s). Written anew from that file, computing the same thing, on the
airbench94_muon port's net (tests/bench/airbench_muon.py) with the record's changes:

- the net: the same whitening conv (2x2, 3 -> 24, learned bias for the first 0.19 epochs), GELU, three conv groups
  of widths 64, 256, 256, now with SiLU instead of GELU and batch norm momentum 0.4434 (torch's convention),
  3x3 max pool, bias-free head, logits divided by 256;
- the data: normalised, a random half mirrored once, reflect-padded by 2; every epoch a random shift of up to 2
  pixels per image, all mirrored in odd epochs, and a brightness shift (+-0.1399) and contrast scale (1 +-0.1308)
  per image (the record's colour jitter); batch 1536, last partial batch dropped, 7.63 epochs of steps;
- the optimizers: SGD + Nesterov (momentum 0.825) on the whitening bias and BN biases (lr 0.0573) and the head
  (lr 0.5415), weight decay 1.0418e-6 x batch per step; Muon on the conv filters (lr 0.205, momentum 0.655,
  Nesterov, momentum buffers in half precision, 3 Newton-Schulz steps with coefficients (3.4576, -4.7391,
  2.0843) on all filters at once, zero-padded to one shape; the scheduled target magnitude 0.5012 -> 0.0786,
  which the normalisation that follows it cancels; filters rescaled to norm sqrt(out channels) every 8th step
  only; decoupled weight decay); label-smoothed (0.09) cross-entropy summed over the batch; rates decay linearly
  to 0 over the run, the whitening bias's over its 0.19 epochs;
- the score: plain predictions, then test-time augmentation only for the 20% least confident: the image and its
  two one-pixel shifts, each with its mirror, averaged with equal weights.

What differs, because this is a CPU: bf16 autocast over fp32 weights instead of `.half()` weights (bf16
momentum buffers), no torch.compile, wall-clock timing, the per-epoch crop as one strided gather. The timer covers
what the original's does: whitening init, the training steps, the final TTA pass.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import airbench_muon

BATCH, EPOCHS, WHITEN_BIAS_EPOCHS = 1536, 7.63, 0.19
BIAS_LR, HEAD_LR, FILTER_LR, DECAY = 0.0573, 0.5415, 0.205, 1.0418e-6 * 1536
BRIGHTNESS, CONTRAST, SMOOTHING = 0.1399, 0.1308, 0.09
NS_COEFFICIENTS, NORM_EVERY = (3.4576, -4.7391, 2.0843), 8


class Muon(torch.optim.Optimizer):
    """The record's Muon: all filters orthogonalised in one batched Newton-Schulz, rescaled every NORM_EVERY steps."""

    def __init__(self, params, lr: float, momentum: float, total_steps: int, weight_decay: float):
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})
        self.total_steps, self.steps = total_steps, 0
        filters = self.param_groups[0]["params"]
        self.rows = max(len(p) for p in filters)
        self.cols = (max(p[0].numel() for p in filters) + 15) // 16 * 16

    def orthogonalize(self, grads):
        a, b, c = NS_COEFFICIENTS
        progress = self.steps / max(1, self.total_steps)
        target = 0.5012 * (1 - progress) + 0.0786 * progress
        x = torch.stack([F.pad(g.reshape(len(g), -1), (0, self.cols - g[0].numel(), 0, self.rows - len(g)))
                         for g in grads]).bfloat16()
        x = x * (target / (x.norm(dim=(1, 2), keepdim=True) + 1e-5))
        x = x / (x.norm(dim=(1, 2), keepdim=True) + 1e-5)
        wide = x.size(1) <= x.size(2)
        if not wide:
            x = x.transpose(1, 2)
        for _ in range(3):
            gram = x @ x.transpose(1, 2)
            x = a * x + (b * gram + c * gram @ gram) @ x
        if not wide:
            x = x.transpose(1, 2)
        return [x[i, :len(g), :g[0].numel()].reshape(g.shape).float() for i, g in enumerate(grads)]

    @torch.no_grad()
    def step(self):
        self.steps += 1
        group = self.param_groups[0]
        params = [p for p in group["params"] if p.grad is not None]
        buffers = [self.state[p].setdefault("momentum_buffer", torch.zeros_like(p, dtype=torch.bfloat16))
                   for p in params]
        torch._foreach_mul_(buffers, group["momentum"])
        torch._foreach_add_(buffers, [p.grad.bfloat16() for p in params])
        nesterov = torch._foreach_add([p.grad for p in params], [b.float() for b in buffers], alpha=group["momentum"])
        if self.steps % NORM_EVERY == 0:
            torch._foreach_mul_(params, [len(p) ** 0.5 / (n + 1e-7) for p, n in zip(params, torch._foreach_norm(params))])
        torch._foreach_add_(params, self.orthogonalize(nesterov), alpha=-group["lr"])
        torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])


class Loader(airbench_muon.Loader):
    """The airbench94_muon port's batches, with the record's colour jitter drawn per image every epoch."""

    def _epoch_images(self, epoch: int) -> torch.Tensor:
        if self.crops is None:
            self._prepare()
        n, device = len(self.labels), self.labels.device
        dy, dx = torch.randint(0, 5, (2, n), device=device)
        x = self.crops[torch.arange(n, device=device), dy, dx]
        if epoch % 2 == 1:
            x = x.flip(-1)
        shift = (torch.rand(n, 1, 1, 1, device=device) * 2 - 1) * BRIGHTNESS
        scale = (torch.rand(n, 1, 1, 1, device=device) * 2 - 1) * CONTRAST + 1
        return ((x + shift) * scale).contiguous(memory_format=torch.channels_last)

    def __iter__(self):
        epoch, self.epoch = self.epoch, self.epoch + 1
        n, device = len(self.labels), self.labels.device
        images = self._epoch_images(epoch) if self.augment else self.images
        order = torch.randperm(n, device=device) if self.augment else torch.arange(n, device=device)
        for i in range(len(self)):
            idx = order[i * self.batch:(i + 1) * self.batch]
            yield images[idx], self.labels[idx]


def CifarNet() -> nn.Module:
    """The airbench94_muon port's net with the record's conv groups: SiLU, batch norm momentum 1 - 0.5566."""
    return airbench_muon.CifarNet(activation=nn.SiLU, bn_momentum=1 - 0.5566)


def tta_logits(model, images: torch.Tensor, dev) -> torch.Tensor:
    """Plain logits for all; the 20% least confident replaced by the mean over six views."""
    with torch.no_grad(), dev.autocast():
        logits = torch.cat([model(x).float() for x in images.split(2000)])
        uncertain = torch.topk(logits.softmax(1).max(1).values, int(0.2 * len(images)), largest=False).indices
        for part in uncertain.split(1000):
            x = images[part]
            padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
            views = torch.cat([x, padded[:, :, :32, :32], padded[:, :, 2:, 2:]])
            views = torch.cat([views, views.flip(-1)]).contiguous(memory_format=torch.channels_last)
            logits[part] = model(views).float().view(6, len(x), -1).mean(0)
    return logits


def accuracy(model, loader: Loader, dev, tta: bool) -> float:
    model.eval()
    if tta:
        logits = tta_logits(model, loader.images, dev)
    else:
        with torch.no_grad(), dev.autocast():
            logits = torch.cat([model(x).float() for x in loader.images.split(2000)])
    model.train()
    return (logits.argmax(1) == loader.labels).float().mean().item()


def train(x_train, y_train, x_test, y_test, seed: int = 0, epochs: float = EPOCHS, on_epoch=None,
          device: str = "cpu") -> dict:
    """One run on uint8 tensors (N, 3, 32, 32), with airbench_muon.train's result fields."""
    from cnnlab.device import Device

    dev = Device.open(device, "bf16" if device == "cpu" else "auto")
    torch.manual_seed(seed)
    train_loader = Loader(x_train.to(dev.device), y_train.to(dev.device), BATCH, augment=True)
    test_loader = Loader(x_test.to(dev.device), y_test.to(dev.device), 2000, augment=False)
    model = CifarNet().to(dev.device, memory_format=torch.channels_last)
    total_steps = math.ceil(epochs * len(train_loader))
    whiten_bias_steps = math.ceil(WHITEN_BIAS_EPOCHS * len(train_loader))
    norm_biases = [p for n, p in model.named_parameters() if "norm" in n and p.requires_grad]
    sgd = torch.optim.SGD([{"params": [model.whiten.bias], "lr": BIAS_LR, "weight_decay": DECAY / BIAS_LR},
                           {"params": norm_biases, "lr": BIAS_LR, "weight_decay": DECAY / BIAS_LR},
                           {"params": [model.head.weight], "lr": HEAD_LR, "weight_decay": DECAY / HEAD_LR}],
                          momentum=0.825, nesterov=True, fused=dev.type in ("cpu", "cuda"))
    muon = Muon([p for p in model.parameters() if p.ndim == 4 and p.requires_grad], lr=FILTER_LR, momentum=0.655,
                total_steps=total_steps, weight_decay=DECAY)
    initial = [[g["lr"] for g in opt.param_groups] for opt in (sgd, muon)]

    elapsed, steps_s, curve, step = 0.0, 0.0, [], 0
    start = dev.now()
    model.reset()
    model.init_whiten(train_loader.images[:960])
    elapsed += dev.now() - start
    for epoch in range(1, math.ceil(total_steps / len(train_loader)) + 1):
        start = dev.now()
        for x, y in train_loader:
            with dev.autocast():
                out = model(x, whiten_bias_grad=step < whiten_bias_steps)
                loss = F.cross_entropy(out.float(), y, label_smoothing=SMOOTHING, reduction="sum")
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
        curve.append((epoch, round(elapsed, 1), round(accuracy(model, test_loader, dev, tta=False), 4)))
        if on_epoch is not None:
            on_epoch(*curve[-1])
    start = dev.now()
    tta = accuracy(model, test_loader, dev, tta=True)
    elapsed += dev.now() - start
    return {"tta_acc": tta, "train_s": elapsed, "steps_s": steps_s, "epochs": epochs, "curve": curve,
            "params": sum(p.numel() for p in model.parameters()), "steps": total_steps}


def forward_flops() -> int:
    """FLOPs of one forward pass of one image, by torch's counter (convolutions and the head)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        CifarNet()(torch.zeros(1, 3, 32, 32))
    return counter.get_total_flops()
