"""`make bench ARGS=gpu`: the GPU half of the bench, sized to finish in under 8 minutes on one modern GPU.

- the airbench94_muon port and `recipe=fast94_muon` side by side (the CPU bench's ratio table, on the GPU);
- tf_cnn's training throughput (the exercise's model);
- sweep throughput with 1, 2 and 4 workers sharing the GPU.

Real CIFAR-10 when the cache holds it; otherwise synthetic images of CIFAR-10's size and count, which time the
same computation (their accuracies mean nothing and are marked so). Without a CUDA GPU it says so and measures
nothing. CNNLAB_BENCH_DEVICE=cpu runs the same section on the CPU (a dry run of this script)."""

from __future__ import annotations

import os
import time


class Skipped(Exception):
    """A section that cannot run here; its message says why."""


def _data():
    """(dataset, the overrides that make `cnnlab train` read the same data, a note)."""
    from types import SimpleNamespace

    from cnnlab import data

    if data.cache_info() is not None:
        return data.load(SimpleNamespace(name="cifar10", root=None, download=False)), [], "real CIFAR-10"
    n_train, n_test = int(os.environ.get("CNNLAB_BENCH_N_TRAIN", 50000)), int(os.environ.get("CNNLAB_BENCH_N_TEST", 10000))
    overrides = ["data=synthetic", f"data.n_train={n_train}", f"data.n_test={n_test}"]
    return data.synthetic(n_train, n_test), overrides, "synthetic images (no CIFAR-10 in the cache): accuracies mean nothing"


def _device_line(device: str) -> str:
    import torch

    from cnnlab.device import Device

    dev = Device.open(device, "auto")
    if dev.type != "cuda":
        return f"{device}, precision=auto: {dev.precision}"
    props = torch.cuda.get_device_properties(dev.device)
    return (f"{props.name} ({props.total_memory / 2 ** 30:.0f} GiB, compute capability {props.major}.{props.minor}), "
            f"precision=auto: {dev.precision}, torch {torch.__version__}, CUDA {torch.version.cuda}")


def _ratio_table(report, ds, overrides, device: str, seeds) -> None:
    """The port and fast94_muon, each timed as the record times itself; the recipe against the port."""
    import statistics

    from . import airbench_muon
    from .sections import _cnnlab_fast

    results = {}
    runs = {"airbench94_muon port": lambda seed: airbench_muon.train(ds.x_train, ds.y_train, ds.x_test, ds.y_test,
                                                                       seed=seed, device=device),
            "recipe=fast94_muon": lambda seed: _cnnlab_fast(" ".join(["fast94_muon", f"device={device}", *overrides]),
                                                            seed)}
    for name, one in runs.items():
        done = [one(seed) for seed in seeds]
        accs, times = [r["tta_acc"] for r in done], [r["train_s"] for r in done]
        results[name] = (statistics.mean(accs), statistics.mean(times))
        report.add(f"gpu_{name}", {"acc_mean": round(results[name][0], 4), "train_s_mean": round(results[name][1], 2),
                                   "seeds": len(done)},
                   f"**{name}**: TTA accuracy {results[name][0]:.4f}, training {results[name][1]:.2f} s "
                   f"({len(done)} seed(s); per seed: " + ", ".join(f"{t:.2f} s" for t in times) + ")")
    (peer_acc, peer_s), (acc, seconds) = results["airbench94_muon port"], results["recipe=fast94_muon"]
    report.add("gpu_ratio_fast94_muon", round(seconds / peer_s, 3),
               f"recipe=fast94_muon against the port: {seconds / peer_s:.2f}x its training time, accuracy "
               f"{acc - peer_acc:+.4f}")


def _throughput(report, overrides, device: str) -> None:
    from cnnlab.record import Store

    from .sections import _cli_train

    run_id = _cli_train(["arch=tf_cnn", "epochs=3", f"device={device}", *overrides])
    history = Store().client.get_metric_history(run_id, "img_per_s")
    best = max(h.value for h in history)
    report.add("gpu_tf_cnn_img_per_s", round(best), f"tf_cnn training throughput: {best:,.0f} img/s (best of 3 "
               "epochs, batch 64, as `cnnlab train arch=tf_cnn` runs it)")


def _sweeps(report, overrides, device: str) -> None:
    """8 one-epoch tf_cnn trials with 1, 2 and 4 workers on the one GPU: trials per minute."""
    from cnnlab.sweeps import Sweep, load_spec

    rates = {}
    for workers in (1, 2, 4):
        spec = load_spec(["experiment=bench-gpu-sweep", "arch=tf_cnn", "epochs=1", f"device={device}", "seed=range(0,8)",
                          *overrides], name=f"gpu-workers-{workers}")
        start = time.perf_counter()
        result = Sweep(spec, workers=workers, quiet=True, force=True).run()
        seconds = time.perf_counter() - start
        finished = sum(o.state == "FINISHED" for o in result.outcomes)
        rates[workers] = 60 * finished / seconds
        report.add(f"gpu_sweep_workers_{workers}", round(rates[workers], 1),
                   f"sweep of 8 one-epoch tf_cnn trials, --workers {workers} on one GPU: {finished} finished in "
                   f"{seconds:.0f} s, {rates[workers]:.1f} trials/min ({rates[workers] / rates[1]:.2f}x one worker)")


def bench_gpu(report, accuracy: bool = False) -> None:
    """Issue 27: the port against fast94_muon, tf_cnn throughput and sweep workers, on one GPU."""
    import torch

    device = os.environ.get("CNNLAB_BENCH_DEVICE", "cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise Skipped("bench gpu: torch sees no CUDA GPU here (torch.cuda.is_available() is False); nothing "
                      "measured. Run it on a machine with one (CNNLAB_BENCH_DEVICE=cpu runs it on the CPU).")
    ds, overrides, note = _data()
    report.add("gpu_device", _device_line(device), f"device: {_device_line(device)}; data: {note}")
    started = time.perf_counter()
    _ratio_table(report, ds, overrides, device, (0, 1, 2) if accuracy else (0,))
    _throughput(report, overrides, device)
    _sweeps(report, overrides, device)
    report.add("gpu_bench_s", round(time.perf_counter() - started), f"the section took "
               f"{time.perf_counter() - started:.0f} s")
