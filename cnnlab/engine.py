"""The training engine: torch set-up, the optimizer and schedule, one training epoch, evaluation, TTA, FLOPs.

Nothing here knows about runs, files or MLflow: `training.py` wires these parts to a Recorder.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

from .device import autocast
from .errors import CnnlabError

# ---------------------------------------------------------------- the model


def build(cfg, num_classes: int, in_channels: int, device, prepare_batches=None):
    """The model of a resolved config on `device` (channels_last except on MPS), its data-set layers fitted."""
    import torch

    from .models import build_model

    try:
        model = build_model(cfg, num_classes=num_classes, in_channels=in_channels)
    except (RuntimeError, ValueError) as exc:
        raise CnnlabError(f"arch={cfg.arch.name} cannot be built for image_size={cfg.image_size} "
                          f"with these knobs: {exc}") from None
    channels_last = device.type != "mps"
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if hasattr(model, "prepare") and prepare_batches is not None:  # the `prepare` hook (models/__init__.py)
        model.prepare(next(iter(prepare_batches))[0])
    return model


def plain(model):
    """The module whose state_dict a checkpoint holds: a compiled model's original."""
    return getattr(model, "_orig_mod", model)


def module_flops(module, inputs, output) -> int:
    """FLOPs of one call of a leaf module by torch's own formulas (torch.utils.flop_counter): convolutions and
    dense layers, the only ops FlopCounterMode counts in these models (a test holds the two equal for every
    architecture). A forward hook rather than FlopCounterMode itself, whose dispatch mode costs a second of
    importing torch._dynamo on each listing command."""
    import torch
    from torch.utils.flop_counter import conv_flop_count, mm_flop

    if isinstance(module, torch.nn.modules.conv._ConvNd):
        return conv_flop_count(list(inputs[0].shape), list(module.weight.shape), list(output.shape),
                               transposed=module.transposed)
    if isinstance(module, torch.nn.Linear):
        rows = inputs[0].numel() // inputs[0].shape[-1]
        return mm_flop((rows, module.in_features), (module.in_features, module.out_features))
    return 0


def leaf_calls(model, in_channels: int, image_size: int, device) -> list:
    """(module, output shape without the batch, FLOPs) of each leaf module's call in one forward pass of one zero
    image, in execution order (eval mode; the model's mode is restored)."""
    import torch

    calls = []
    hooks = [m.register_forward_hook(lambda mod, inp, out: calls.append(
                 (mod, tuple(out.shape[1:]), module_flops(mod, inp, out))))
             for m in model.modules() if not list(m.children())]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, in_channels, image_size, image_size, device=device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return calls


def count_flops(model, in_channels: int, image_size: int, device) -> int:
    """Forward FLOPs for one image (see module_flops)."""
    return int(sum(flops for _, _, flops in leaf_calls(model, in_channels, image_size, device)))


# ---------------------------------------------------------------- optimizer and schedule


def make_optimizer(cfg, model):
    """The optimizer; with decoupled_wd, weight decay is applied after each step (p -= lr_t * wd * p) instead
    of entering the gradient (AdamW's rule; for adamw it is always so)."""
    import torch

    coupled = 0.0 if cfg.decoupled_wd else cfg.weight_decay
    norm = {id(p) for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._NormBase)
            for p in m.parameters(recurse=False)}
    groups = [{"params": [p for p in model.parameters() if p.requires_grad and id(p) not in norm]}]
    norm_params = [p for p in model.parameters() if p.requires_grad and id(p) in norm]
    if norm_params and cfg.norm_lr_scale != 1:  # the same decay per step at a higher learning rate
        groups.append({"params": norm_params, "lr": cfg.lr * cfg.norm_lr_scale,
                       "weight_decay": coupled / cfg.norm_lr_scale})
    else:
        groups[0]["params"] += norm_params
    if cfg.init_from and cfg.transfer.value == "finetune" and cfg.body_lr != 1:  # a transfer's body slower
        groups = _body_slower(groups, {id(p) for p in head_of(model)[1].parameters()}, cfg.lr, cfg.body_lr)
    groups = early_groups(model, groups, cfg.lr)
    # one fused kernel for all parameters instead of a loop over them (CPU and CUDA; Adam's step on tf_cnn
    # was 3% of CPU training time in the per-parameter loop)
    fused = {"fused": True} if next(model.parameters()).device.type in ("cpu", "cuda") else {}
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                              weight_decay=coupled, **fused)
    elif cfg.optimizer == "adam":
        opt = torch.optim.Adam(groups, lr=cfg.lr, weight_decay=coupled, **fused)
    elif cfg.optimizer == "muon":
        from .muon import make_muon

        opt = make_muon(cfg, model, coupled, fused, regroup=lambda split: early_groups(model, split, cfg.lr))
    else:
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)
    if cfg.decoupled_wd and cfg.weight_decay:
        wd = cfg.weight_decay

        @torch.no_grad()
        def decay(optimizer, args, kwargs) -> None:
            # the schedule's current lr (group 0 has no multiplier): the same decay per step in every group, to
            # every parameter that still trains (not an early group's after its epochs)
            lr_now = optimizer.param_groups[0]["lr"]
            training = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
            if training:
                torch._foreach_mul_(training, 1 - lr_now * wd)

        opt.register_step_post_hook(decay)
    return opt


def head_of(model) -> Tuple[str, Any]:
    """(name, module) of a model's head: its last dense (Linear) layer (what transfer learning replaces)."""
    import torch

    found = [(name, m) for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    if not found:
        raise CnnlabError("This architecture has no dense layer to serve as its head: it cannot be transferred.")
    return found[-1]


def early_groups(model, groups: list, lr: float) -> list:
    """`groups` with each parameter that trains for its first epochs only in a group of its own, marked
    `until_epochs` and `early_lr`: Trainer takes its rate linearly from early_lr to 0 over those epochs, whatever
    the schedule of the others (airbench's whitening bias: a module's `bias_epochs`)."""
    early = {id(m.bias): m.bias_epochs for m in model.modules()
             if getattr(m, "bias_epochs", 0) and m.bias is not None and m.bias.requires_grad}
    if not early:
        return groups
    split = []
    for group in groups:
        rest = [p for p in group["params"] if id(p) not in early]
        split += [{**group, "params": rest}] if rest else []
        split += [{**group, "params": [p], "until_epochs": early[id(p)], "early_lr": group.get("lr", lr)}
                  for p in group["params"] if id(p) in early]
    return split


def _body_slower(groups: list, head: set, lr: float, body_lr: float) -> list:
    """Each parameter group split in two: its head parameters at the group's rate, the rest at body_lr times it."""
    out = []
    for group in groups:
        rate = group.get("lr", lr)
        out.append({**group, "params": [p for p in group["params"] if id(p) in head]})
        out.append({**group, "params": [p for p in group["params"] if id(p) not in head], "lr": rate * body_lr})
    return [g for g in out if g["params"]]


def total_steps(cfg, steps_per_epoch: int) -> int:
    """The training steps of a run: its epochs', or fewer with max_steps (a run to a time budget)."""
    total = cfg.epochs * steps_per_epoch
    return min(total, cfg.max_steps) if cfg.max_steps else total


def make_scheduler(cfg, optimizer, steps_per_epoch: int, total: Optional[int] = None, at: int = 0):
    """A per-step scheduler over the run's total_steps (or `total`), or None for a constant learning rate.
    at: the steps already taken, for a schedule that goes on from there over a new length (budget='s re-plan);
    the optimizer's groups then hold the first scheduler's initial and peak rates."""
    import torch

    total = total or total_steps(cfg, steps_per_epoch)
    last = at - 1  # torch counts the steps taken in last_epoch, -1 for a new schedule
    if cfg.scheduler == "onecycle":  # (Muon's momentum is its own: not cycled)
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups],
                                                   total_steps=total, cycle_momentum=cfg.optimizer != "muon",
                                                   last_epoch=last)
    if cfg.scheduler == "cosine":  # (CosineAnnealingLR's recursive form cannot go on over a new length)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total)),
                                                 last_epoch=last)
    if cfg.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, cfg.lr_step_epochs * steps_per_epoch, cfg.lr_gamma,
                                               last_epoch=last)
    if cfg.scheduler == "triangle":  # airbench's: 0.2 -> 1 over the first 23% of steps, then down to 0.07
        def triangle(step: int) -> float:
            t = step / max(1, total)
            return 0.2 + 0.8 * t / 0.23 if t < 0.23 else 1 - 0.93 * (t - 0.23) / 0.77

        return torch.optim.lr_scheduler.LambdaLR(optimizer, triangle, last_epoch=last)
    if cfg.scheduler == "linear":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / max(1, total), last_epoch=last)
    return None


class Lookahead:
    """Every 5 steps, average the weights into a slow copy and continue from it (weights and BN statistics).

    The slow copy's memory grows with training, as 0.95^5 x (step / total)^3: no averaging early on,
    strong averaging at the end, where `finish()` puts the averaged weights into the model."""

    def __init__(self, model, total_steps: int, every: int = 5):
        import torch

        self.tensors = [*model.parameters(), *(b for b in model.buffers() if torch.is_floating_point(b))]
        self.slow = [t.detach().clone() for t in self.tensors]
        self.total, self.every, self.steps = max(1, total_steps), every, 0

    def step(self) -> None:
        import torch

        self.steps += 1
        if self.steps % self.every == 0:
            decay = 0.95 ** self.every * (self.steps / self.total) ** 3
            with torch.no_grad():
                torch._foreach_lerp_(self.slow, [t.detach() for t in self.tensors], 1 - decay)
                torch._foreach_copy_(self.tensors, self.slow)

    def finish(self) -> None:
        import torch

        with torch.no_grad():
            torch._foreach_copy_(self.tensors, self.slow)


# ---------------------------------------------------------------- evaluation


def tta_logits(model, x, plain=None):
    """Test-time augmentation: the mirror pair, averaged with the mirror pairs of the image shifted one pixel
    up-left and down-right (reflect padding): six forward passes, weighted 1/2, 1/4, 1/4. plain: model(x) when
    already computed (then five passes)."""
    import torch.nn.functional as F

    def mirror(inputs, logits=None):
        logits = model(inputs).float() if logits is None else logits
        return 0.5 * (logits + model(inputs.flip(-1)).float())

    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    shifted = 0.5 * (mirror(padded[..., :h, :w]) + mirror(padded[..., 2:, 2:]))
    return 0.5 * mirror(x, plain) + 0.5 * shifted


TTA_STEP = 0.02  # with a deadline, a TTA chunk is foretold to take at most this share of the time TTA has


def tta_within(model, images: Callable, plain, share: float, amp_dtype, chunk: int, *, deadline: Optional[float] = None,
               now: Callable[[], float] = lambda: 0.0, s_per_image: float = 0.0,
               update: Callable = lambda *a: None) -> tuple:
    """(logits, the share of the images that got TTA): tta_logits for the `share` of all the images whose plain
    prediction is least confident (lowest top softmax probability, as the record cifar10-speedrun does: a confident
    prediction seldom changes), the others keeping their `plain` logits. images(indices): those images as the model
    takes them.

    The least confident go first, at most `chunk` images at a time. With a deadline (seconds on `now()`, budget=),
    the views are spent as the time left allows: each chunk is foretold at the time per image of the one before
    (`s_per_image` for the first), is no longer than TTA_STEP of the time there was when TTA began (a load that
    arrives during one costs little), and the last is cut to what ends by the deadline. (A load that arrived
    during the final test made it one block of twice its planned time.) update(images done) after each chunk."""
    import torch

    model.eval()
    done, wanted = 0, math.ceil(share * len(plain))
    if deadline is not None and s_per_image > 0:
        chunk = min(chunk, max(1, int(TTA_STEP * (deadline - now()) / s_per_image)))
    with torch.inference_mode():
        least = plain.softmax(1).amax(1).argsort(stable=True)[:wanted]
        logits = plain.clone()
        with autocast(plain.device, amp_dtype):
            while done < wanted:
                take, started = chunk, now() if deadline is not None else 0.0
                if deadline is not None and s_per_image > 0:
                    take = min(chunk, int((deadline - started) / s_per_image))
                    if take < 1:
                        break
                idx = least[done:done + take]
                logits[idx] = tta_logits(model, images(idx), plain[idx])
                if deadline is not None:
                    s_per_image = (now() - started) / len(idx)
                done += len(idx)
                update(done)
    model.train()
    return logits, done / max(1, len(plain))


def tta_scope(share: float) -> str:
    """Which test images TTA scores, in words to follow "TTA": "" for all."""
    return "" if share >= 1 else " on none" if share <= 0 else f" on the {share:.0%} least confident"


class Scores(NamedTuple):
    """An evaluation: loss and accuracy (with TTA when asked), the confusion matrix (when asked, else None), and
    the loss and accuracy of the plain view alone (the same pass: TTA's first view is the image as it is)."""
    loss: float
    acc: float
    matrix: Optional[object]
    plain_loss: float
    plain_acc: float


def predict(model, batches, amp_dtype, update: Callable = lambda *a: None):
    """The logits (float32, one row per image) of `batches` (on their device, in autocast dtype `amp_dtype`, None
    for fp32). update(batches done) after each batch (a progress bar)."""
    import torch

    model.eval()
    with torch.inference_mode(), autocast(batches.x.device, amp_dtype):
        rows = []
        for i, (x, _) in enumerate(batches, 1):
            update(i)
            rows.append(model(x).float())
    model.train()
    return torch.cat(rows) if rows else torch.zeros(0, 0, device=batches.x.device)


def scores(logits, plain, y, num_classes: int, confusion: bool = False) -> Scores:
    """Scores of `logits` (and of the `plain` view's) against labels `y`."""
    import torch
    import torch.nn.functional as F

    if not len(y):
        matrix = torch.zeros(num_classes, num_classes, dtype=torch.long) if confusion else None
        return Scores(0.0, 0.0, matrix, 0.0, 0.0)
    with torch.inference_mode():
        loss, plain_loss = torch.stack([F.cross_entropy(v, y) for v in (logits, plain)]).tolist()
        hits, plain_hits = torch.stack([(v.argmax(1) == y).sum() for v in (logits, plain)]).tolist()
        matrix = None
        if confusion:
            pred = logits.argmax(1)
            matrix = torch.bincount(y * num_classes + pred, minlength=num_classes ** 2).view(num_classes, -1).cpu()
    return Scores(loss, hits / len(y), matrix, plain_loss, plain_hits / len(y))


def evaluate(model, batches, amp_dtype, num_classes: int, confusion: bool = False,
             update: Callable = lambda *a: None) -> Scores:
    """Scores over `batches` of their plain view; update(batches done) after each batch."""
    logits = predict(model, batches, amp_dtype, update)
    return scores(logits, logits, batches.y, num_classes, confusion)


# ---------------------------------------------------------------- training


class Trainer:
    """A model and everything that updates it: optimizer, schedule, loss scaling, weight averaging (EMA,
    lookahead) and torch.compile. `eval_model` is what is validated, tested and checkpointed."""

    def __init__(self, cfg, model, train_batches, dev, num_classes: int):
        """dev: the run's device.Device (precision, loss scaler, clock, random streams)."""
        import torch

        self.cfg, self.model, self.dev, self.num_classes = cfg, model, dev, num_classes
        self.tuner = None  # the device's ThreadTuner while training.fit runs (evaluations count for it too)
        self.device, self.amp_dtype = dev.device, dev.amp_dtype
        self.optimizer = make_optimizer(cfg, model)
        # normalization layers whose parameters do not train (a probe's body) keep their statistics: eval mode
        self.frozen = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._NormBase)
                       and not any(p.requires_grad for p in m.parameters())]
        self.steps_per_epoch = len(train_batches)
        self.scheduler = make_scheduler(cfg, self.optimizer, self.steps_per_epoch)
        self.scaler = dev.scaler()
        self.ema = None
        if cfg.ema:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
        self.total_steps, self.steps = total_steps(cfg, len(train_batches)), 0
        self.early_rates()
        self.lookahead = Lookahead(model, self.total_steps) if cfg.lookahead else None
        self.eval_model = self.ema.module if self.ema is not None else model
        self.step_model = model
        self.compile_time = 0.0
        if cfg.compile:
            self._compile(train_batches)

    def _compile(self, batches) -> None:
        """torch.compile the training and evaluation models and compile them now, on one batch, so that the
        compile time is measured apart from training."""
        import torch

        start = self.dev.now()
        model = self.model
        saved = {k: v.clone() for k, v in model.state_dict().items()}  # the warm-up must not train anything
        compiled = torch.compile(model)
        compiled_eval = compiled if self.eval_model is model else torch.compile(self.eval_model)
        x, _ = next(iter(batches))
        with autocast(self.device, self.amp_dtype):
            out = compiled(x)
            (out[0] if isinstance(out, tuple) else out).float().sum().backward()
        model.zero_grad(set_to_none=True)
        compiled_eval.eval()
        with torch.inference_mode(), autocast(self.device, self.amp_dtype):
            compiled_eval(x)
        compiled_eval.train()
        model.load_state_dict(saved)
        self.step_model, self.eval_model = compiled, compiled_eval
        self.compile_time = self.dev.now() - start

    def train_epoch(self, batches, last: Optional[bool] = None, update: Callable = lambda *a: None,
                    after_step: Optional[Callable] = None) -> Dict[str, float]:
        """One pass over `batches`, or fewer steps when the run's total ends inside it: {train_loss, train_acc,
        img_per_s, train_time}; update(done, loss, acc, img/s) is called four times a second, after_step(trainer)
        after each step (budget='s steering, which may change the total). `last`: whether this is the final epoch,
        after which lookahead's average replaces the weights (None: when the run's steps are done)."""
        import torch

        self.model.train()
        for m in self.frozen:  # a probe's frozen body keeps its source's batch statistics
            m.eval()
        clock = self.dev.clock
        t0 = self.dev.now()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        seen, shown = 0, t0
        for step, (x, y) in enumerate(batches, 1):
            loss, logits = self.step(x, y)
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
            if after_step is not None:
                after_step(self)
            if self.steps >= self.total_steps:
                break  # max_steps ends the run inside its last epoch
            if clock() - shown > 0.25:  # a live bar four times a second (.item() waits for the device)
                update(step, loss_sum.item() / seen, correct.item() / seen, seen / (clock() - t0))
                shown = clock()
        if self.lookahead is not None and (self.steps >= self.total_steps if last is None else last):
            self.lookahead.finish()  # the last weights are the averaged ones
        train_time = self.dev.now() - t0  # once the device has done the epoch's queued work
        return {"train_loss": loss_sum.item() / seen, "train_acc": correct.item() / seen,
                "img_per_s": seen / train_time, "train_time": train_time}

    def retarget(self, total: int) -> None:
        """End training after `total` steps instead: the schedule (and lookahead's ramp) goes on from the step it
        stands at and spans the new length, reaching its end at the new last step. budget='s re-plan."""
        total = max(total, self.steps)
        if total == self.total_steps:
            return
        self.total_steps = total
        if self.lookahead is not None:
            self.lookahead.total = max(1, total)
        if self.scheduler is not None:
            with warnings.catch_warnings():  # (torch warns of a scheduler made after the optimizer's first step)
                warnings.simplefilter("ignore")
                self.scheduler = make_scheduler(self.cfg, self.optimizer, self.steps_per_epoch, total, self.steps)
            self.early_rates()

    def probe(self, batches, steps: int) -> Dict[str, float]:
        """`steps` training steps from the start of `batches`, in train_epoch's loop: how budget= times a step.
        The trainer is then spent (its schedule counts from here); the caller restores the model and batches."""
        self.steps, self.total_steps = 0, steps
        return self.train_epoch(batches, last=False)

    def step(self, x, y):
        """One training step on a batch: (loss, logits)."""
        import torch.nn.functional as F

        cfg, model = self.cfg, self.model
        with autocast(self.device, self.amp_dtype):
            logits = self.step_model(x)
            aux: tuple = ()
            if isinstance(logits, tuple):  # auxiliary heads (the hook in models/__init__.py)
                logits, *aux = logits
            loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
            for extra in aux:
                loss = loss + model.aux_weight * F.cross_entropy(extra.float(), y, label_smoothing=cfg.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.scheduler is not None:
            if self.scaler.is_enabled():  # fp16: a step the scaler skipped still counts (torch warns of it)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    self.scheduler.step()
            else:
                self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(model)
        if self.lookahead is not None:
            self.lookahead.step()
        self.steps += 1
        self.early_rates()
        return loss, logits

    def early_rates(self) -> None:
        """The rate of each early group (see early_groups) for the next step: early_lr x (1 - steps / its steps),
        set after the scheduler's, which it replaces for these groups. From its last epoch on its parameters take
        no gradient: backward stops sooner (airbench's whitening bias: no gradient through the first layer)."""
        for group in self.optimizer.param_groups:
            if "until_epochs" in group:
                until = group["until_epochs"] * self.steps_per_epoch
                group["lr"] = group["early_lr"] * max(0.0, 1 - self.steps / until)
                for p in group["params"]:
                    p.requires_grad_(self.steps < until)
                    if self.steps >= until:
                        p.grad = None

    def evaluate(self, batches, update: Callable = lambda *a: None) -> Scores:
        return evaluate(self.eval_model, batches, self.amp_dtype, self.num_classes, update=self._watched(update))

    def predict(self, batches, update: Callable = lambda *a: None):
        return predict(self.eval_model, batches, self.amp_dtype, self._watched(update))

    def tta(self, batches, plain, update: Callable = lambda *a: None, **within) -> tuple:
        """(logits, share): tta_within for cfg.tta_share of `batches`, whose plain logits are `plain`, in chunks
        of at most a fifth of their batch (TTA's five more views cost about a batch)."""
        return tta_within(self.eval_model, batches.take, plain, self.cfg.tta_share, self.amp_dtype,
                          max(1, batches.batch_size // 5), now=self.dev.now, update=self._watched(update), **within)

    def _watched(self, update: Callable) -> Callable:
        """update(done), then the thread tuner's count, when it has one: a process that starts during an evaluation
        ran it up to 5x slower until the next training step let the tuner leave that process a core."""
        tuner = self.tuner
        if tuner is None:
            return update

        def watched(done: int) -> None:
            update(done)
            tuner.after_step()
        return watched

    def state_dict(self) -> dict:
        """Everything training changes (weights, optimizer, schedule, loss scale, EMA, lookahead, torch's random
        streams on the CPU and the device), to continue exactly where it stood."""
        state = {"model": plain(self.model).state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scaler": self.scaler.state_dict(), "rng": self.dev.rng_state(), "steps": self.steps,
                 "total_steps": self.total_steps}
        if self.scheduler is not None:
            state["scheduler"] = self.scheduler.state_dict()
        if self.ema is not None:
            state["ema"] = self.ema.state_dict()
        if self.lookahead is not None:
            state["lookahead"] = {"slow": self.lookahead.slow, "steps": self.lookahead.steps}
        return state

    def load_state_dict(self, state: dict) -> None:
        import torch

        plain(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.steps = state.get("steps", 0)
        self.retarget(state.get("total_steps", self.total_steps))  # a budget run's re-planned length
        self.scaler.load_state_dict(state["scaler"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.early_rates()
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        if self.lookahead is not None:
            with torch.no_grad():
                torch._foreach_copy_(self.lookahead.slow, state["lookahead"]["slow"])
            self.lookahead.steps = state["lookahead"]["steps"]
        self.dev.set_rng_state(state["rng"])

    @property
    def epochs(self) -> int:
        """The epochs the run's steps reach (the last perhaps cut): its length after budget='s re-plans."""
        return math.ceil(self.total_steps / self.steps_per_epoch)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    @property
    def checkpoint_module(self):
        """What checkpoints hold: the evaluated model's plain state."""
        return plain(self.eval_model)
