"""The GPU tier (`make test-gpu`): the GPU paths run for real. Every test here is skipped without a CUDA GPU.

Tiny runs on synthetic data, a few minutes in all on one GPU. What the CPU suite reaches with fakes
(tests/test_device.py) is checked here on the device itself: precision, loss scaling, compile, budget=, resume,
sweep workers, target sets, and augmentation with no host-device sync."""

from __future__ import annotations

import pytest
import torch

from cnnlab.config import compose
from cnnlab.record import Store
from cnnlab.training import train

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="the gpu tier needs a CUDA GPU and torch sees none here (torch.cuda.is_available() is False)")]

TINY = ["data=synthetic", "data.n_train=1000", "data.n_test=200", "batch_size=100", "device=cuda"]
CURVE = ("train_loss", "val_acc", "epoch_test_acc")


def native_bf16() -> bool:
    return torch.cuda.get_device_capability() >= (8, 0)


def run(*overrides: str):
    """A finished tiny run (2 epochs unless the overrides give a length)."""
    if not any(o.startswith(("epochs=", "budget=")) for o in overrides):
        overrides = (*overrides, "epochs=2")
    result = train(compose([*TINY, *overrides]), [*TINY, *overrides], quiet=True)
    assert result.status == "FINISHED", result
    return result


def test_a_run_trains_on_the_gpu_at_its_native_precision(mlflow_client):
    result = run("arch=tf_cnn")
    tags = mlflow_client.get_run(result.run_id).data.tags
    assert tags["cnnlab.device"] == f"cuda:{torch.cuda.current_device()}"
    assert tags["cnnlab.precision"] == ("bf16" if native_bf16() else "fp16")
    assert result.metrics["test_acc"] > 0.2  # learns (chance is 0.1)


@pytest.mark.parametrize("precision", ["fp16", "bf16", "fp32"])
def test_each_precision_trains(precision):
    result = run("arch=tf_cnn", f"precision={precision}")
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in result.history)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_muon_with_fp16_loss_scaling_trains_finite():
    result = run("arch=tf_cnn", "optimizer=muon", "precision=fp16", "epochs=3")
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_compile_trains_and_times_the_compile_apart():
    result = run("arch=tf_cnn", "compile=true")
    assert result.metrics["compile_time"] > 0


def test_a_budget_run_ends_near_its_budget():
    result = run("arch=tf_cnn", "budget=30s")
    assert 0.7 < result.metrics["budget_used"] <= 1.05, result.metrics


def test_a_killed_gpu_run_resumes_to_the_uninterrupted_curve():
    """The checkpoint holds the GPU's random stream and the augmentation generator on the GPU. cuDNN's autotuned
    kernels may sum in another order, so the curves agree closely rather than bit for bit."""
    import signal

    from cnnlab.errors import Interrupted

    overrides = ["arch=tf_cnn", "dropout=0.25", "epochs=4"]
    whole = run(*overrides)

    def stop(epoch, metrics):
        if epoch == 2:
            raise Interrupted(signal.SIGTERM)

    with pytest.raises(Interrupted):
        train(compose([*TINY, *overrides]), quiet=True, on_epoch=stop)
    resumed = train(None, resume=Store().find("T2"), quiet=True)
    assert resumed.status == "FINISHED"
    for a, b in zip(resumed.history, whole.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=0.02)
    assert abs(resumed.metrics["test_acc"] - whole.metrics["test_acc"]) <= 0.03


def test_two_sweep_workers_share_one_gpu(cli):
    code, out, err = cli("sweep", "lr=0.003,0.001", "seed=0,1", *TINY, "epochs=2", "--workers", "2", "-q")
    assert code == 0, err
    runs = Store().runs(states=["FINISHED"])
    assert len(runs) == 4 and all(r.tags["cnnlab.device"].startswith("cuda") for r in runs)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_a_sweep_on_the_second_gpu_trains_there(cli):
    code, out, err = cli("sweep", "lr=0.003,0.001", *[o for o in TINY if o != "device=cuda"], "epochs=2", "device=cuda:1",
                         "--workers", "2", "-q")
    assert code == 0, err
    assert {r.tags["cnnlab.device"] for r in Store().runs(states=["FINISHED"])} == {"cuda:1"}


def test_evaluate_on_target_sets_scores_what_the_cpu_scores(cli):
    """The corrupted images are the same on both devices (the noise is drawn on the CPU)."""
    from cnnlab import corruptions

    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    for name in ("gaussian_noise", "blur", "contrast"):
        assert torch.equal(corruptions.corrupt(images.cuda(), name, 3, seed=4).cpu(),
                           corruptions.corrupt(images, name, 3, seed=4))
    result = run("arch=tf_cnn")
    code, out, err = cli("evaluate", result.id, "targets=[gaussian_noise,blur]")
    assert code == 0, err
    metrics = Store().find(result.id).metrics
    assert 0 <= metrics["target_acc_gaussian_noise"] <= 1 and 0 <= metrics["target_acc_blur"] <= 1


def test_an_epoch_of_augmented_batches_never_waits_for_the_host():
    from cnnlab.data import Batches

    x = torch.randint(0, 256, (1000, 3, 32, 32), dtype=torch.uint8, device="cuda")
    y = torch.randint(0, 10, (1000,), device="cuda")
    batches = Batches(x, y, 100, mean=(0.5,) * 3, std=(0.25,) * 3, shuffle=True, augment=True, channels_last=True)
    assert batches.generator.device.type == "cuda"
    torch.cuda.set_sync_debug_mode("error")  # any host-device synchronisation raises
    try:
        for xb, yb in batches:
            assert xb.device.type == "cuda"
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_the_device_clock_waits_for_queued_kernels():
    from cnnlab.device import Device

    dev = Device.open("cuda", "fp32")
    a = torch.randn(4096, 4096, device=dev.device)
    torch.cuda.synchronize()
    start = dev.now()
    for _ in range(20):
        a = a @ a / 64
    waited = dev.now() - start
    launched_start = dev.clock()
    for _ in range(20):
        a = a @ a / 64
    launched = dev.clock() - launched_start  # without waiting: only the launches
    torch.cuda.synchronize()
    assert waited > launched
