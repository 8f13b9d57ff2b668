"""One function per benchmark section; each adds its figures to a Report."""

from __future__ import annotations


def _train(overrides, dataset=None):
    from cnnlab.config import compose
    from cnnlab.train import train

    return train(compose(["experiment=bench", *overrides]), overrides, dataset=dataset, quiet=True)


def bench_train(report, accuracy: bool = False) -> None:
    """Issue 2: cnnlab train against the PyTorch-tutorial pipeline; MLflow overhead; accuracy."""
    from types import SimpleNamespace

    from cnnlab import data, tracking
    from cnnlab.models import get_arch

    from . import matmul_peak
    from .tutorial import TutorialCIFAR, throughput

    report.add("matmul_fp32_gflops", round(matmul_peak("float32")), f"fp32 matmul peak: {matmul_peak('float32'):.0f} GFLOP/s")
    peak = matmul_peak("bfloat16")
    report.add("matmul_bf16_gflops", round(peak), f"bf16 matmul peak: {peak:.0f} GFLOP/s")
    ds = data.load(SimpleNamespace(name="cifar10", root=None, download=False))
    for arch, batches in (("tf_cnn", 80), ("vgg_small", 25)):
        tutorial = throughput(get_arch(arch).build(), TutorialCIFAR(ds.x_train, ds.y_train, ds.mean, ds.std),
                              batch_size=128, batches=batches)
        run = _train([f"arch={arch}", "batch_size=128", "epochs=2", "data.train_fraction=0.25",
                      "eval.test_every_epoch=false"], dataset=ds)
        ours = run.history[-1]["img_per_s"]
        gflops = ours * 3 * run.metrics["flops"] / 1e9  # a training step costs about 3 forward passes
        report.add(f"{arch}_tutorial_img_s", round(tutorial), f"{arch} batch 128: tutorial pipeline (fp32, DataLoader) "
                   f"{tutorial:,.0f} img/s; cnnlab train {ours:,.0f} img/s ({run.history[-1]['epoch_time']:.1f} s epoch "
                   f"incl. val); speed-up {ours / tutorial:.1f}x")
        report.add(f"{arch}_cnnlab_img_s", round(ours), f"{arch}: cnnlab trains at ~{gflops:.0f} GFLOP/s "
                   f"(3 x {run.metrics['flops'] / 1e6:.0f} MFLOP x img/s), {gflops / peak:.0%} of the bf16 matmul peak")
        report.add(f"{arch}_speedup", round(ours / tutorial, 2), f"{arch} speed-up over the tutorial: {ours / tutorial:.2f}x")

    # MLflow overhead and the exercise's acceptance run: the default tf_cnn, 10 epochs, full data
    run = _train(["arch=tf_cnn", "epochs=10"])
    share = run.tracking_seconds / run.wall_seconds
    client = tracking.client()
    points = {k: len(client.get_metric_history(run.run_id, k)) for k in ("train_loss", "val_acc", "test_acc", "lr")}
    status = client.get_run(run.run_id).info.status
    report.add("tf_cnn_test_acc", round(run.metrics["test_acc"], 4),
               f"cnnlab train arch=tf_cnn epochs=10: test_acc {run.metrics['test_acc']:.4f} in {run.wall_seconds:.0f} s; "
               f"MLflow run {status} with {points} points per metric")
    report.add("tracking_share", round(share, 4), f"MLflow tracking: {run.tracking_seconds:.2f} s of {run.wall_seconds:.0f} s "
               f"wall = {share:.2%} (import, store, params, 10 epoch batches, artifacts)")
    if accuracy:
        run = _train(["arch=vgg_small"])
        report.add("vgg_small_test_acc", round(run.metrics["test_acc"], 4),
                   f"cnnlab train arch=vgg_small (default recipe, {run.metrics['epochs_run']:.0f} epochs): "
                   f"test_acc {run.metrics['test_acc']:.4f} in {run.wall_seconds / 60:.1f} min")


ALL = {"train": bench_train}
