"""Training: a resolved config in, a trained model, a run directory and an MLflow run out.

`train()` reads top to bottom: set up torch, load and split the data, build the model, open
the run, loop over epochs (train, validate, test, checkpoint), then record the final scores.
A signal ends the run as KILLED (exit 130/143), an exception or a NaN loss as FAILED.
"""

from __future__ import annotations

import math
import os
import secrets
import signal
import subprocess
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from . import __version__
from .config import PROJECT_ROOT, flatten, resolve, runs_dir, to_dict
from .console import Reporter
from .errors import CnnlabError, Diverged, Interrupted, Pruned


@dataclass
class Result:
    run_id: Optional[str]
    run_dir: Path
    status: str  # FINISHED | FAILED | KILLED | PRUNED
    metrics: Dict[str, float]  # final scores
    history: List[Dict[str, float]] = field(default_factory=list)  # one dict per epoch
    wall_seconds: float = 0.0
    tracking_seconds: float = 0.0


# ---------------------------------------------------------------- torch set-up


def tune_malloc() -> None:
    """Keep freed activation buffers in the heap: glibc otherwise returns every large block to the
    OS and the next step page-faults it back, which nearly halves CPU training speed for small CNNs."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: serve blocks up to 1 GiB from the heap
        libc.mallopt(-1, (1 << 31) - 1)  # M_TRIM_THRESHOLD: do not give the heap back
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def pick_device(name: str):
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise CnnlabError("device=cuda but torch sees no CUDA GPU here. Valid: auto, cpu (or mps on Apple).")
    if name == "mps" and not torch.backends.mps.is_available():
        raise CnnlabError("device=mps but this machine has no Apple GPU. Valid: auto, cpu (or cuda with a GPU).")
    return torch.device(name)


def pick_precision(name: str, device) -> Optional["torch.dtype"]:
    """The autocast dtype, or None for fp32."""
    import torch

    if name == "auto":
        if device.type == "cuda":
            name = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        elif device.type == "cpu" and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()):
            name = "bf16"
        else:
            name = "fp32"
    if name == "fp16" and device.type == "cpu":
        raise CnnlabError("precision=fp16 is for GPUs; on the CPU use bf16 or fp32.")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def setup_torch(device_name: str = "auto", precision: str = "auto", threads: int = 0):
    """(device, autocast dtype or None) with the fast settings for it."""
    import torch

    tune_malloc()
    torch.set_flush_denormal(True)
    if threads:
        torch.set_num_threads(threads)
    device = pick_device(device_name)
    amp_dtype = pick_precision(precision, device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device, amp_dtype


@contextmanager
def signals_as_exceptions():
    """SIGINT/SIGTERM raise Interrupted once; later signals wait until the run is recorded."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = []

    def handler(signum, frame):
        if not fired:
            fired.append(signum)
            raise Interrupted(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# ---------------------------------------------------------------- pieces of the loop


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
    # one fused kernel for all parameters instead of a loop over them (CPU and CUDA; Adam's step on tf_cnn
    # was 3% of CPU training time in the per-parameter loop)
    fused = {"fused": True} if next(model.parameters()).device.type in ("cpu", "cuda") else {}
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                              weight_decay=coupled, **fused)
    elif cfg.optimizer == "adam":
        opt = torch.optim.Adam(groups, lr=cfg.lr, weight_decay=coupled, **fused)
    else:
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)
    if cfg.decoupled_wd and cfg.weight_decay:
        wd = cfg.weight_decay

        @torch.no_grad()
        def decay(optimizer, args, kwargs) -> None:
            # the schedule's current lr (group 0 has no multiplier): the same decay per step in every group
            lr_now = optimizer.param_groups[0]["lr"]
            for group in optimizer.param_groups:
                torch._foreach_mul_(group["params"], 1 - lr_now * wd)

        opt.register_step_post_hook(decay)
    return opt


def make_scheduler(cfg, optimizer, steps_per_epoch: int):
    """A per-step scheduler, or None for a constant learning rate."""
    import torch

    total = cfg.epochs * steps_per_epoch
    if cfg.scheduler == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups],
                                                   total_steps=total)
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    if cfg.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, cfg.lr_step_epochs * steps_per_epoch, cfg.lr_gamma)
    if cfg.scheduler == "triangle":  # airbench's: 0.2 -> 1 over the first 23% of steps, then down to 0.07
        def triangle(step: int) -> float:
            t = step / max(1, total)
            return 0.2 + 0.8 * t / 0.23 if t < 0.23 else 1 - 0.93 * (t - 0.23) / 0.77

        return torch.optim.lr_scheduler.LambdaLR(optimizer, triangle)
    return None


def tta_logits(model, x):
    """Test-time augmentation: the mirror pair, averaged with the mirror pairs of the image shifted one pixel
    up-left and down-right (reflect padding): six forward passes, weighted 1/2, 1/4, 1/4."""
    import torch.nn.functional as F

    def mirror(inputs):
        return 0.5 * (model(inputs).float() + model(inputs.flip(-1)).float())

    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    shifted = 0.5 * (mirror(padded[..., :h, :w]) + mirror(padded[..., 2:, 2:]))
    return 0.5 * mirror(x) + 0.5 * shifted


def evaluate(model, batches, amp_dtype, num_classes: int, confusion: bool = False, tta: bool = False):
    """(loss, accuracy, confusion matrix or None) over `batches`; tta=True averages flipped and shifted views."""
    import torch
    import torch.nn.functional as F

    model.eval()
    device = batches.x.device
    loss_sum = torch.zeros((), device=device)
    matrix = torch.zeros(num_classes * num_classes, dtype=torch.long, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    with torch.inference_mode(), torch.autocast(device.type, amp_dtype or torch.float32, enabled=amp_dtype is not None):
        for x, y in batches:
            logits = tta_logits(model, x) if tta else model(x).float()
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
            pred = logits.argmax(1)
            correct += (pred == y).sum()
            if confusion:
                matrix += torch.bincount(y * num_classes + pred, minlength=num_classes * num_classes)
    n = max(1, len(batches.y))
    model.train()
    cm = matrix.view(num_classes, num_classes).cpu() if confusion else None
    return loss_sum.item() / n, correct.item() / n, cm


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


def _plain(model):
    """The module whose state_dict a checkpoint holds: a compiled model's original."""
    return getattr(model, "_orig_mod", model)


def compile_model(model, eval_model, batches, amp_dtype):
    """torch.compile the training and evaluation models and compile them now, on one batch, so that the
    compile time is measured apart from training. Returns (train model, eval model, seconds)."""
    import torch

    start = time.perf_counter()
    saved = {k: v.clone() for k, v in model.state_dict().items()}  # the warm-up must not train anything
    compiled = torch.compile(model)
    compiled_eval = compiled if eval_model is model else torch.compile(eval_model)
    x, y = next(iter(batches))
    device = x.device
    with torch.autocast(device.type, amp_dtype or torch.float32, enabled=amp_dtype is not None):
        out = compiled(x)
        (out[0] if isinstance(out, tuple) else out).float().sum().backward()
    model.zero_grad(set_to_none=True)
    compiled_eval.eval()
    with torch.inference_mode(), torch.autocast(device.type, amp_dtype or torch.float32,
                                                enabled=amp_dtype is not None):
        compiled_eval(x)
    compiled_eval.train()
    model.load_state_dict(saved)
    return compiled, compiled_eval, time.perf_counter() - start


def count_flops(model, in_channels: int, image_size: int, device) -> int:
    """Forward FLOPs for one image, counted by torch's own FlopCounterMode."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, in_channels, image_size, image_size, device=device))
    model.train(was_training)
    return int(counter.get_total_flops())


def epoch_line(epoch: int, epochs: int, m: Dict[str, float]) -> str:
    """'epoch 3/10  train 0.912/0.680  val 0.874/0.694  test 0.881/0.690  lr 0.001  9.8 s 5,510 img/s'
    (loss/accuracy pairs)."""
    parts = [f"epoch {epoch}/{epochs}", f"train {m['train_loss']:.3f}/{m['train_acc']:.3f}"]
    if "val_acc" in m:
        parts.append(f"val {m['val_loss']:.3f}/{m['val_acc']:.3f}")
    if "epoch_test_acc" in m:
        parts.append(f"test {m['epoch_test_loss']:.3f}/{m['epoch_test_acc']:.3f}")
    parts += [f"lr {m['lr']:.3g}", f"{m['epoch_time']:.1f} s {m['img_per_s']:,.0f} img/s"]
    return "  ".join(parts)


def new_run_dir(parent: Path, name: str) -> Path:
    """parent/name, or parent/name-2, -3, ... when taken: never reuses a directory."""
    parent.mkdir(parents=True, exist_ok=True)
    for i in range(1, 1000):
        path = parent / (name if i == 1 else f"{name}-{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a fresh run directory under {parent}")


def default_run_name(arch: str) -> str:
    """<arch>-<date>-<time>-<random>: unique even for runs started in the same second."""
    return f"{arch}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"


def git_commit() -> Optional[str]:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                             timeout=5)
        if out.returncode != 0:
            return None
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def save_checkpoint(path: Path, model, cfg_dict: dict, epoch: int, metrics: dict, optimizer=None) -> None:
    """A state_dict checkpoint (never a pickled module); load with torch.load(weights_only=True)."""
    import torch

    state = {"model": model.state_dict(), "config": cfg_dict, "epoch": epoch, "metrics": metrics}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def confusion_png(matrix, classes: Sequence[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 6))
    ax.imshow(matrix.numpy(), cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    top = matrix.max().item() or 1
    for i in range(len(classes)):
        for j in range(len(classes)):
            v = matrix[i, j].item()
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7, color="white" if v > top / 2 else "black")
    ax.set_title("test confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------- the run


def train(cfg, overrides: Sequence[str] = (), *, dataset=None, on_epoch: Optional[Callable] = None,
          parent_run_id: Optional[str] = None, tags: Optional[dict] = None, run_root: Optional[Path] = None,
          quiet: bool = False) -> Result:
    """Train `cfg` (as composed; resolved here) and record it.

    dataset: an already loaded data.Dataset (sweep workers load once and reuse it).
    on_epoch(epoch, metrics): called after each epoch; raising errors.Pruned stops the run as PRUNED.
    run_root: directory for the run directory (default runs/<experiment>/); its name is cfg.run_name
    or <arch>-<date>-<time>-<random>.
    """
    import torch
    import torch.nn.functional as F

    from . import data as data_mod
    from . import tracking
    from .models import build_model

    started = time.perf_counter()
    # MLflow takes about a second to import: do it while the data loads (run.seconds counts any wait for it)
    tracking.preload()
    cfg = resolve(cfg)
    device, amp_dtype = setup_torch(cfg.device.value, cfg.precision.value, cfg.threads)
    torch.manual_seed(cfg.seed)

    # data: everything on the device, as uint8
    ds = dataset or data_mod.load(cfg.data, seed=cfg.seed)
    splits = data_mod.split(ds, cfg.val_split, cfg.data.train_fraction, cfg.seed)
    num_classes = len(ds.classes)
    channels_last = device.type != "mps"
    to_dev = lambda t: t.to(device, non_blocking=True)  # noqa: E731
    common = dict(mean=ds.mean, std=ds.std, image_size=cfg.image_size, channels_last=channels_last)
    train_batches = data_mod.Batches(to_dev(splits.x_train), to_dev(splits.y_train), cfg.batch_size, shuffle=True,
                                     augment=cfg.augment, translate=cfg.translate, flip=cfg.flip.value,
                                     drop_last=len(splits.y_train) > cfg.batch_size, seed=cfg.seed, **common)
    eval_size = max(cfg.batch_size, 500)
    val_batches = data_mod.Batches(to_dev(splits.x_val), to_dev(splits.y_val), eval_size, **common)
    test_batches = data_mod.Batches(to_dev(splits.x_test), to_dev(splits.y_test), eval_size, **common)

    # model
    try:
        model = build_model(cfg, num_classes=num_classes, in_channels=splits.x_train.shape[1])
    except (RuntimeError, ValueError) as exc:
        raise CnnlabError(f"arch={cfg.arch.name} cannot be built for image_size={cfg.image_size} "
                          f"with these knobs: {exc}") from None
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if hasattr(model, "prepare"):  # layers set from data (airbench's patch whitening)
        sample = data_mod.Batches(train_batches.x[:5000], train_batches.y[:5000], 5000, **common)
        model.prepare(next(iter(sample))[0])
    n_params = sum(p.numel() for p in model.parameters())
    flops = count_flops(model, splits.x_train.shape[1], cfg.image_size, device)
    optimizer = make_optimizer(cfg, model)
    scheduler = make_scheduler(cfg, optimizer, len(train_batches))
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    ema = None
    if cfg.ema:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
    lookahead = Lookahead(model, cfg.epochs * len(train_batches)) if cfg.lookahead else None
    eval_model = ema.module if ema is not None else model  # what is validated, tested and checkpointed
    compile_time = 0.0
    step_model = model
    if cfg.compile:
        step_model, eval_model, compile_time = compile_model(model, eval_model, train_batches, amp_dtype)

    # run directory and MLflow run
    cfg_dict = to_dict(cfg)
    run_dir = new_run_dir(run_root or runs_dir() / cfg.experiment, cfg.run_name or default_run_name(cfg.arch.name))
    (run_dir / ".hydra").mkdir()
    from omegaconf import OmegaConf

    (run_dir / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml(cfg_dict))
    (run_dir / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(list(overrides)))
    (run_dir / "model.txt").write_text(f"{model}\n\nparameters: {n_params:,}\nFLOPs/image: {flops:,}\n")
    report = Reporter(run_dir / "train.log", quiet=quiet)
    precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp_dtype]
    run_tags = {
        "cnnlab.version": __version__, "cnnlab.device": str(device), "cnnlab.precision": precision,
        "cnnlab.torch": torch.__version__, "cnnlab.overrides": " ".join(overrides), "cnnlab.run_dir": str(run_dir),
        "mlflow.source.name": "cnnlab train", "mlflow.source.type": "LOCAL", **(tags or {}),
    }
    commit = git_commit()
    if commit:
        run_tags["mlflow.source.git.commit"] = commit
    run = tracking.Run(cfg.tracking.uri, cfg.experiment, run_dir.name, run_tags, parent_run_id=parent_run_id)
    sizes = {"split.train": len(splits.y_train), "split.val": len(splits.y_val), "split.test": len(splits.y_test)}
    run.log_params({**flatten(cfg_dict), **sizes})
    run.log_metrics({"params": n_params, "flops": flops})
    report.line(f"run {run_dir.name} ({run.run_id}): {cfg.arch.name}, {n_params:,} params, {flops / 1e6:.1f} MFLOPs/img, "
                f"{sizes['split.train']:,} train / {sizes['split.val']:,} val / {sizes['split.test']:,} test, "
                f"{device} {precision}")

    history: List[Dict[str, float]] = []
    best = {"val_acc": -1.0, "epoch": 0}
    best_path, last_path = run_dir / "best.pt", run_dir / "last.pt"
    epoch = 0
    with signals_as_exceptions():
        try:
            for epoch in range(1, cfg.epochs + 1):
                # ---- train one epoch
                model.train()
                t0 = time.perf_counter()
                loss_sum = torch.zeros((), device=device)
                correct = torch.zeros((), dtype=torch.long, device=device)
                seen = 0
                with report.epoch(epoch, cfg.epochs, len(train_batches)) as update:
                    for step, (x, y) in enumerate(train_batches, 1):
                        with torch.autocast(device.type, amp_dtype or torch.float32, enabled=amp_dtype is not None):
                            logits = step_model(x)
                            aux: tuple = ()
                            if isinstance(logits, tuple):  # auxiliary heads (GoogLeNet) in training mode
                                logits, *aux = logits
                            loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
                            for extra in aux:
                                loss = loss + model.aux_weight * F.cross_entropy(
                                    extra.float(), y, label_smoothing=cfg.label_smoothing)
                        optimizer.zero_grad(set_to_none=True)
                        scaler.scale(loss).backward()
                        scaler.step(optimizer)
                        scaler.update()
                        if scheduler is not None:
                            scheduler.step()
                        if ema is not None:
                            ema.update_parameters(model)
                        if lookahead is not None:
                            lookahead.step()
                        loss_sum += loss.detach() * len(y)
                        correct += (logits.argmax(1) == y).sum()
                        seen += len(y)
                        if step % 20 == 0:
                            update(step, loss_sum.item() / seen, correct.item() / seen,
                                   seen / (time.perf_counter() - t0))
                if lookahead is not None and epoch == cfg.epochs:
                    lookahead.finish()  # the last weights are the averaged ones
                train_time = time.perf_counter() - t0
                metrics = {"train_loss": loss_sum.item() / seen, "train_acc": correct.item() / seen}
                if not math.isfinite(metrics["train_loss"]):
                    raise Diverged(f"the training loss became {metrics['train_loss']} in epoch {epoch}; "
                                   f"try a lower lr (now {cfg.lr})")
                # ---- validate (and test, for the curve)
                if len(splits.y_val):
                    metrics["val_loss"], metrics["val_acc"], _ = evaluate(eval_model, val_batches, amp_dtype,
                                                                          num_classes)
                if cfg.eval.test_every_epoch:
                    # the curve; "test_acc" itself is the final score of the chosen checkpoint
                    metrics["epoch_test_loss"], metrics["epoch_test_acc"], _ = evaluate(
                        eval_model, test_batches, amp_dtype, num_classes)
                metrics.update(lr=optimizer.param_groups[0]["lr"], epoch_time=time.perf_counter() - t0,
                               img_per_s=seen / train_time)
                history.append({"epoch": epoch, **metrics})
                run.log_metrics(metrics, step=epoch)
                report.line(epoch_line(epoch, cfg.epochs, metrics))
                # ---- keep the best (by val_acc; the last epoch when there is no validation split)
                score = metrics.get("val_acc", epoch)
                if score > best["val_acc"]:
                    best = {"val_acc": score, "epoch": epoch}
                    save_checkpoint(best_path, _plain(eval_model), cfg_dict, epoch, metrics)
                save_checkpoint(last_path, _plain(eval_model), cfg_dict, epoch, metrics, optimizer)
                if on_epoch is not None:
                    on_epoch(epoch, metrics)
                if cfg.early_stopping and epoch - best["epoch"] >= cfg.early_stopping:
                    report.line(f"early stop: no better val_acc for {cfg.early_stopping} epochs")
                    break

            # ---- final scores: the best checkpoint on the test set
            state = torch.load(best_path, map_location=device, weights_only=True)
            _plain(eval_model).load_state_dict(state["model"])
            test_loss, test_acc, matrix = evaluate(eval_model, test_batches, amp_dtype, num_classes, confusion=True,
                                                   tta=cfg.tta)
            chosen = history[state["epoch"] - 1]
            per_class = (matrix.diag().float() / matrix.sum(1).clamp(min=1).float()).tolist()
            final = {
                "test_acc": test_acc, "test_loss": test_loss, "best_epoch": state["epoch"],
                "train_acc_final": chosen["train_acc"], "val_acc_best": chosen.get("val_acc", float("nan")),
                "val_loss_best": min((h["val_loss"] for h in history if "val_loss" in h), default=float("nan")),
                **({"no_tta_test_acc": chosen["epoch_test_acc"]} if cfg.tta and "epoch_test_acc" in chosen else {}),
                "wall_time": time.perf_counter() - started, "epochs_run": epoch,
                "train_time": sum(h["epoch_time"] for h in history), "compile_time": compile_time,
                **{f"test_acc_{c}": a for c, a in zip(ds.classes, per_class)},
            }
            if cfg.eval.targets:
                from .targets import evaluate_targets

                final.update(evaluate_targets(eval_model, list(cfg.eval.targets), ds, data_mod.data_root(cfg.data.root),
                                              batch_size=eval_size, amp_dtype=amp_dtype, device=device,
                                              channels_last=channels_last, image_size=cfg.image_size,
                                              severity=cfg.eval.severity, seed=cfg.seed))
            with open(run_dir / "per_class.csv", "w") as f:
                f.write("class,test_acc,support\n")
                for c, a, n in zip(ds.classes, per_class, matrix.sum(1).tolist()):
                    f.write(f"{c},{a:.4f},{n}\n")
            confusion_png(matrix, ds.classes, run_dir / "confusion.png")
            final["tracking_time"] = run.seconds  # MLflow's share of the wall time so far
            run.log_metrics(final, step=epoch)
            report.line(f"done: test_acc {test_acc:.4f} (best epoch {state['epoch']}, val_acc "
                        f"{chosen.get('val_acc', float('nan')):.4f}) in {final['wall_time']:.0f} s; {run_dir}")
            run.log_artifacts([run_dir / ".hydra" / "config.yaml", run_dir / ".hydra" / "overrides.yaml"], "config")
            run.log_artifacts([run_dir / "per_class.csv", run_dir / "confusion.png", run_dir / "model.txt",
                               run_dir / "train.log"])
            run.log_artifacts([best_path], "checkpoint")
            run.set_tags({"cnnlab.state": "FINISHED"})
            run.end("FINISHED")
            return Result(run.run_id, run_dir, "FINISHED", {**final, "params": n_params, "flops": flops}, history,
                          time.perf_counter() - started, run.seconds)
        except Interrupted as exc:
            save_checkpoint(last_path, _plain(eval_model), cfg_dict, epoch, history[-1] if history else {}, optimizer)
            report.line(f"interrupted (signal {exc.exit_code - 128}) in epoch {epoch}: run KILLED, "
                        f"last checkpoint {last_path}")
            run.set_tags({"cnnlab.state": "KILLED",
                          "cnnlab.end_reason": f"signal {exc.exit_code - 128} in epoch {epoch}"})
            run.end("KILLED")
            raise
        except Pruned as exc:
            report.line(f"pruned after epoch {epoch}: {exc}")
            run.set_tags({"cnnlab.state": "PRUNED", "cnnlab.end_reason": f"pruned after epoch {epoch}: {exc}"})
            run.end("KILLED")
            last = history[-1] if history else {}
            return Result(run.run_id, run_dir, "PRUNED", {**last, "epochs_run": epoch, "params": n_params,
                                                          "flops": flops}, history,
                          time.perf_counter() - started, run.seconds)
        except BaseException as exc:
            reason = f"{type(exc).__name__}: {exc}"
            report.line(f"failed in epoch {epoch}: {reason}")
            run.set_tags({"cnnlab.state": "FAILED", "cnnlab.end_reason": reason[:5000]})
            run.end("FAILED")
            raise
