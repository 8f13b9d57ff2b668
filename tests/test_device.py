"""The device context (cnnlab/device.py): precision by what a device does natively, fp16 loss scaling with Muon,
a clock that waits for the device, every random stream in a checkpoint, a sweep worker's GPU.

The GPU mechanisms are reached on the CPU where torch allows it (fp16 autocast and GradScaler("cpu")), or with the
CUDA calls replaced by fakes that record what they were asked; tests/test_gpu.py runs the real thing on a GPU."""

from __future__ import annotations

import queue

import pytest
import torch

from cnnlab import engine
from cnnlab.config import compose, resolve
from cnnlab.device import Device, choose_precision, native_bf16
from cnnlab.errors import CnnlabError


@pytest.mark.parametrize("requested, device_type, native, expected", [
    ("auto", "cpu", True, "bf16"),     # AVX512-BF16 or AMX
    ("auto", "cpu", False, "fp32"),
    ("auto", "cuda", True, "bf16"),    # A100, H100, RTX 30xx+: capability >= 8.0
    ("auto", "cuda", False, "fp16"),   # T4, V100: bf16 would be emulated
    ("auto", "mps", False, "fp32"),
    ("bf16", "cuda", False, "bf16"),   # asked for: the user's choice
    ("fp16", "cuda", True, "fp16"),
    ("fp32", "cuda", True, "fp32"),
    ("bf16", "cpu", False, "bf16"),
])
def test_precision_follows_what_the_device_does_natively(requested, device_type, native, expected):
    assert choose_precision(requested, device_type, native) == expected


def test_fp16_on_the_cpu_is_refused_with_what_is_valid():
    with pytest.raises(CnnlabError, match="bf16 .* or fp32"):
        choose_precision("fp16", "cpu", True)


def test_native_bf16_is_asked_of_the_gpu_used_not_the_current_one(monkeypatch):
    """A machine with an A100 as cuda:0 and a T4 as cuda:1: a run on cuda:1 gets fp16."""
    capabilities = {0: (8, 0), 1: (7, 5)}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d: capabilities[torch.device(d).index])
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert native_bf16(torch.device("cuda", 0)) and not native_bf16(torch.device("cuda", 1))
    assert choose_precision("auto", "cuda", native_bf16(torch.device("cuda", 1))) == "fp16"


# ---------------------------------------------------------------- fp16 loss scaling with Muon


def muon_trainer(seed: int = 0):
    cfg = resolve(compose(["arch=tf_cnn", "optimizer=muon", "data=synthetic", "epochs=100"]))
    torch.manual_seed(seed)
    model = engine.build(cfg, 10, 3, torch.device("cpu"))
    x = torch.randn(16, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (16,))
    return engine.Trainer(cfg, model, [(x, y)], Device(torch.device("cpu"), "fp16"), 10), x, y


def first_conv(model):
    return next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))


def test_fp16_loss_scaling_unscales_muons_filter_gradients():
    trainer, x, y = muon_trainer()
    assert trainer.scaler.is_enabled() and trainer.scaler.get_scale() == 65536
    conv = first_conv(trainer.model)
    trainer.optimizer.zero_grad()
    with trainer.dev.autocast():
        loss = torch.nn.functional.cross_entropy(trainer.model(x).float(), y)
    loss.backward()
    reference = conv.weight.grad.clone()  # the gradient without scaling
    trainer.optimizer.zero_grad()
    with trainer.dev.autocast():
        loss = torch.nn.functional.cross_entropy(trainer.model(x).float(), y)
    trainer.scaler.scale(loss).backward()
    trainer.scaler.unscale_(trainer.optimizer)
    muon = trainer.optimizer.optimizers[-1]
    view = next(v for p, v in muon.pairs if p is conv.weight)
    # what Muon steps with is the true gradient, not 65536 times it
    expected = reference.permute(0, 2, 3, 1).reshape(len(reference), -1)
    assert (view.grad - expected).norm() < 0.01 * expected.norm()  # (fp16 rounds the scaled backward pass)


def test_an_overflow_in_a_filter_gradient_skips_the_step_and_lowers_the_scale():
    trainer, x, y = muon_trainer()
    conv = first_conv(trainer.model)
    before = conv.weight.detach().clone()
    handle = conv.weight.register_hook(lambda g: g.index_fill(0, torch.tensor([0]), float("inf")))
    trainer.step(x, y)
    handle.remove()
    assert torch.equal(conv.weight, before)  # the step was skipped
    assert trainer.scaler.get_scale() == 32768
    trainer.step(x, y)  # and the next one trains, with finite weights
    assert not torch.equal(conv.weight, before)
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())


def test_fp16_muon_training_stays_finite_and_learns():
    trainer, x, y = muon_trainer()
    losses = [trainer.step(x, y)[0].detach().item() for _ in range(15)]
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert losses[-1] < 0.5 * losses[0]


# ---------------------------------------------------------------- a clock that waits for the device


class QueuedDevice(Device):
    """A device that runs work asynchronously: each forward pass queues one second of work, done (and seen on the
    clock) only when the host waits for it, as a GPU's kernels are."""

    def __init__(self):
        super().__init__(torch.device("cpu"), "fp32", clock=lambda: self.seconds)
        self.seconds, self.queued, self.syncs = 0.0, 0.0, 0

    def synchronize(self) -> None:
        self.seconds, self.queued = self.seconds + self.queued, 0.0
        self.syncs += 1

    def queue_work(self, *args) -> None:
        self.queued += 1.0


def test_training_time_counts_the_devices_queued_work():
    cfg = resolve(compose(["arch=tf_cnn", "data=synthetic"]))
    dev = QueuedDevice()
    model = engine.build(cfg, 10, 3, dev.device)
    model.register_forward_hook(dev.queue_work)
    batches = [(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)))] * 5
    trainer = engine.Trainer(cfg, model, batches, dev, 10)
    metrics = trainer.train_epoch(batches, last=False)
    assert metrics["train_time"] == 5.0 and metrics["img_per_s"] == 4.0  # 5 steps of 1 s, 4 images each


# ---------------------------------------------------------------- random streams


def test_a_checkpoint_holds_and_restores_the_gpus_random_stream(monkeypatch):
    streams = {"cuda": torch.tensor([1, 2, 3], dtype=torch.uint8)}
    restored = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: streams["cuda"].clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append((state, device)))
    dev = Device(torch.device("cuda", 1), "fp32")
    state = dev.rng_state()
    assert torch.equal(state["cuda"], streams["cuda"]) and torch.equal(state["cpu"], torch.get_rng_state())
    dev.set_rng_state(state)
    assert len(restored) == 1 and torch.equal(restored[0][0], streams["cuda"]) and restored[0][1] == dev.device


def test_an_older_checkpoints_cpu_only_stream_still_restores():
    dev = Device(torch.device("cpu"), "fp32")
    saved = torch.get_rng_state()
    a = torch.rand(3)
    dev.set_rng_state(saved)  # a bare tensor, as checkpoints held it before
    assert torch.equal(torch.rand(3), a)


def test_a_resumed_trainer_draws_what_the_uninterrupted_one_draws():
    trainer, _, _ = muon_trainer()
    state = trainer.state_dict()
    ahead = torch.rand(4)
    trainer.load_state_dict(state)
    assert torch.equal(torch.rand(4), ahead)


# ---------------------------------------------------------------- sweep workers


def test_a_sweep_worker_takes_its_gpu_and_leaves_every_gpu_visible(monkeypatch):
    """Hiding the other GPUs (CUDA_VISIBLE_DEVICES) made every trial of device=cuda:1 fail in a worker."""
    from cnnlab.sweeps.trial import claim_gpu

    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    devices = queue.Queue()
    devices.put(1)
    claim_gpu(devices)
    assert chosen == [1]
    import os

    assert "CUDA_VISIBLE_DEVICES" not in os.environ
    claim_gpu(None)  # no GPU: nothing to take
    assert chosen == [1]


# ---------------------------------------------------------------- threads on a shared CPU


class SharedCpu:
    """Two cores, steps/s by thread count, with another process running from `busy[0]` to `busy[1]` seconds (and
    `light` of the time otherwise: a browser): two threads then wait for the one that shares its core (make bench
    ARGS="train --load" measured 21% and 68% of tf_cnn's quiet two-thread speed for two and one threads)."""

    QUIET, LOADED = {2: 100.0, 1: 68.0}, {2: 21.0, 1: 66.0}

    def __init__(self, busy, light: float = 0.0):
        self.now, self.threads, self.busy, self.light, self.steps = 0.0, 2, busy, light, 0

    def loaded(self) -> bool:
        return self.busy[0] <= self.now < self.busy[1]

    def clock(self) -> float:
        return self.now

    def set_threads(self, n: int) -> None:
        self.threads = n

    def runnable(self) -> int:
        """What the kernel counts: our threads, and the other process when it runs (the browser now and then)."""
        other = self.loaded() or (self.steps % 100) < 100 * self.light
        return self.threads + int(other)

    def step(self) -> None:
        self.steps += 1
        self.now += 1 / (self.LOADED if self.loaded() else self.QUIET)[self.threads]


def run_tuned(cpu: SharedCpu, seconds: float):
    from cnnlab.device import ThreadTuner

    tuner = ThreadTuner(2, cpu.clock, cpu.set_threads, sample=cpu.runnable)
    seen = []  # (time, threads in use)
    while cpu.now < seconds:
        cpu.step()
        tuner.after_step()
        seen.append((cpu.now, cpu.threads))
    return seen


def share(seen, threads, start, end):
    during = [n for t, n in seen if start <= t < end]
    return sum(n == threads for n in during) / len(during)


def test_the_thread_tuner_leaves_a_busy_core_and_comes_back_when_it_is_free():
    seen = run_tuned(SharedCpu(busy=(20, 50)), 80)
    assert share(seen, 2, 0, 20) == 1  # quiet: every core, and no step spent trying fewer
    assert share(seen, 1, 24, 50) == 1  # within 4 s of the other process starting, off its core
    assert share(seen, 2, 54, 80) == 1  # within 4 s of it ending, back on both


def test_a_process_that_runs_now_and_then_does_not_make_the_count_flap():
    seen = run_tuned(SharedCpu(busy=(0, 0), light=0.25), 60)  # a quarter of a core
    assert share(seen, 2, 0, 60) == 1


def test_a_thread_count_set_by_the_user_is_kept(monkeypatch):
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)  # (this process's threads stay as they are)
    dev = Device.open("cpu", "fp32", threads=1)
    assert dev.thread_tuner() is None
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert Device.open("cpu", "fp32").thread_tuner() is not None
