"""One function per benchmark section; each adds its figures to a Report."""

from __future__ import annotations

import os


def _cli_train(overrides) -> str:
    """`cnnlab train OVERRIDES` in a fresh process, as a user runs it; returns the MLflow run id."""
    import re
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "cnnlab.cli", "train", "experiment=bench", *overrides, "-q"],
                          capture_output=True, text=True, check=True)
    return re.search(r"run_id=(\w+)", proc.stdout).group(1)


def _train(overrides, dataset=None):
    from cnnlab.config import compose
    from cnnlab.training import train

    return train(compose(["experiment=bench", *overrides]), overrides, dataset=dataset, quiet=True)


def _train_pair(arch: str, ds, batches: int, rounds: int = 3) -> tuple:
    """(the tutorial pipeline's img/s, cnnlab's, cnnlab's last run) for `arch` at batch 128: each the median of
    `rounds` measurements, the two taken in turn, so that a passing load on a shared machine moves one round, not the
    figure."""
    import statistics

    from cnnlab.models import get_arch

    from .tutorial import TutorialCIFAR, throughput

    tutorials, ours = [], []
    for _ in range(rounds):
        dataset = TutorialCIFAR(ds.x_train, ds.y_train, ds.mean, ds.std)
        tutorials.append(throughput(get_arch(arch).build(), dataset, batch_size=128, batches=batches))
        run = _train([f"arch={arch}", "batch_size=128", "epochs=2", "data.train_fraction=0.25",
                      "eval.test_every_epoch=false"], dataset=ds)
        ours.append(run.history[-1]["img_per_s"])
    print(f"  {arch}: tutorial {[round(t) for t in tutorials]} img/s, cnnlab {[round(o) for o in ours]} img/s",
          flush=True)
    return statistics.median(tutorials), statistics.median(ours), run


def bench_train(report, accuracy: bool = False) -> None:
    """Issue 2: cnnlab train against the PyTorch-tutorial pipeline; MLflow overhead; accuracy."""
    from types import SimpleNamespace

    from cnnlab import data
    from cnnlab.record import Store

    from .common import matmul_peak

    report.add("matmul_fp32_gflops", round(matmul_peak("float32")), f"fp32 matmul peak: {matmul_peak('float32'):.0f} GFLOP/s")
    peak = matmul_peak("bfloat16")
    report.add("matmul_bf16_gflops", round(peak), f"bf16 matmul peak: {peak:.0f} GFLOP/s")
    ds = data.load(SimpleNamespace(name="cifar10", root=None, download=False))

    from .common import CpuHog, load_wanted

    for arch, batches in (("tf_cnn", 80), ("vgg_small", 25), ("resnet20", 25)):
        tutorial, ours, run = _train_pair(arch, ds, batches)
        if load_wanted():  # the same pair with a CPU-heavy process beside it
            with CpuHog():
                loaded_tutorial, loaded, _ = _train_pair(arch, ds, batches)
            kept = (loaded / loaded_tutorial) / (ours / tutorial)
            report.add(f"{arch}_load_speedup", round(loaded / loaded_tutorial, 2),
                       f"{arch} with a CPU-heavy process beside it: tutorial {loaded_tutorial:,.0f} img/s, cnnlab "
                       f"{loaded:,.0f} img/s ({loaded / ours:.0%} of its quiet speed); speed-up {loaded / loaded_tutorial:.2f}x "
                       f"against {ours / tutorial:.2f}x quiet: {kept:.2f} of the quiet lead kept (target >= 0.8)")
        gflops = ours * 3 * run.metrics["flops"] / 1e9  # a training step costs about 3 forward passes
        report.add(f"{arch}_tutorial_img_s", round(tutorial), f"{arch} batch 128 (medians of 3 rounds): tutorial "
                   "pipeline (fp32, DataLoader) "
                   f"{tutorial:,.0f} img/s; cnnlab train {ours:,.0f} img/s ({run.history[-1]['epoch_time']:.1f} s epoch "
                   f"incl. val); speed-up {ours / tutorial:.1f}x")
        report.add(f"{arch}_cnnlab_img_s", round(ours), f"{arch}: cnnlab trains at ~{gflops:.0f} GFLOP/s "
                   f"(3 x {run.metrics['flops'] / 1e6:.0f} MFLOP x img/s), {gflops / peak:.0%} of the bf16 matmul peak")
        report.add(f"{arch}_speedup", round(ours / tutorial, 2), f"{arch} speed-up over the tutorial: {ours / tutorial:.2f}x")

    # MLflow overhead and the exercise's acceptance run: `cnnlab train arch=tf_cnn epochs=10` as a user runs it
    run_id = _cli_train(["arch=tf_cnn", "epochs=10"])
    client = Store().client
    run = client.get_run(run_id)
    m = run.data.metrics
    points = {k: len(client.get_metric_history(run_id, k)) for k in ("train_loss", "val_acc", "epoch_test_acc", "lr")}
    share = m["tracking_time"] / m["wall_time"]
    report.add("tf_cnn_test_acc", round(m["test_acc"], 4),
               f"cnnlab train arch=tf_cnn epochs=10: test_acc {m['test_acc']:.4f} in {m['wall_time']:.0f} s; "
               f"MLflow run {run.info.status} with {points} points per metric")
    report.add("tracking_share", round(share, 4), f"MLflow tracking: {m['tracking_time']:.2f} s of {m['wall_time']:.0f} s "
               f"wall = {share:.2%} (mlflow import, store, params, one batch per epoch, final metrics)")
    if accuracy:
        run = _train(["arch=vgg_small"])
        report.add("vgg_small_test_acc", round(run.metrics["test_acc"], 4),
                   f"cnnlab train arch=vgg_small (default recipe, {run.metrics['epochs_run']:.0f} epochs): "
                   f"test_acc {run.metrics['test_acc']:.4f} in {run.wall_seconds / 60:.1f} min")


def step_throughput(model, batches, amp_dtype, seconds: float = 6.0, warmup: int = 2) -> float:
    """Training images per second of cnnlab's step (SGD, autocast, channels_last) over `batches`."""
    import time

    import torch
    import torch.nn.functional as F

    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    model.train()
    seen, start, n = 0, None, 0
    while True:
        for x, y in batches:
            if n == warmup:
                seen, start = 0, time.perf_counter()
            with torch.autocast("cpu", amp_dtype or torch.float32, enabled=amp_dtype is not None):
                out = model(x)
                out = out[0] if isinstance(out, tuple) else out
                loss = F.cross_entropy(out.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            n += 1
            if start is not None:
                seen += len(y)
                if time.perf_counter() - start > seconds and n >= warmup + 3:
                    return seen / (time.perf_counter() - start)


def bench_zoo(report, accuracy: bool = False) -> None:
    """Issue 5: training throughput and achieved GFLOP/s of every architecture on this CPU."""
    from types import SimpleNamespace

    import torch

    from cnnlab import data
    from cnnlab.describe import model_table
    from cnnlab.models import get_arch
    from cnnlab.device import Device

    from .common import matmul_peak

    amp_dtype = Device.open("cpu", "auto").amp_dtype
    peak = matmul_peak("bfloat16")
    report.add("matmul_bf16_gflops", round(peak), f"bf16 matmul peak (2048x2048): {peak:.0f} GFLOP/s")
    ds = data.load(SimpleNamespace(name="cifar10", root=None, download=False))
    x, y = ds.x_train[:2048], ds.y_train[:2048]
    batches = data.Batches(x, y, 128, mean=ds.mean, std=ds.std, shuffle=True, augment=True, channels_last=True)
    for row in model_table():
        torch.manual_seed(0)
        model = get_arch(row["arch"]).build().to(memory_format=torch.channels_last)
        ips = step_throughput(model, batches, amp_dtype)
        gflops = ips * 3 * row["flops"] / 1e9  # a training step costs about three forward passes
        report.add(f"zoo_{row['arch']}", {"img_s": round(ips, 1), "mflops": round(row["flops"] / 1e6, 1),
                                          "gflops": round(gflops, 1)},
                   f"{row['arch']:15s} {row['params'] / 1e6:6.2f}M params {row['flops'] / 1e6:8.1f} MFLOP/img "
                   f"{ips:8.1f} img/s  {gflops:6.1f} GFLOP/s = {gflops / peak:5.1%} of bf16 peak "
                   f"({45000 / ips / 60:5.1f} min per 45k-image epoch)")
    if accuracy:
        zoo_accuracy(report, {row["arch"]: row for row in model_table()})


ZOO_BUDGET = "10m"


def _budget_run(overrides) -> dict:
    """`cnnlab train OVERRIDES` as a user runs it, with the process's own wall time: the run's budget figures."""
    import time

    from cnnlab.record import Store

    start = time.perf_counter()
    run_id = _cli_train(overrides)
    process_s = time.perf_counter() - start
    m = Store().client.get_run(run_id).data.metrics
    params = Store().client.get_run(run_id).data.params
    return {"test_acc": round(m["test_acc"], 4), "epochs": int(m["epochs_run"]), "steps": int(m["budget_steps"]),
            "planned_steps": int(params["max_steps"]),
            "wall_s": round(m["wall_time"], 1), "process_s": round(process_s, 1),
            "budget_s": m["budget_s"], "used": round(m["budget_used"], 4),
            **({"tta_share_used": round(m["tta_share_used"], 3)} if "tta_share_used" in m else {}),
            "img_s": round(int(params["batch_size"]) / m["budget_step_s"], 1)}  # as the budget's probe measured it


def zoo_accuracy(report, rows: dict) -> None:
    """Issue 18: every registered architecture, its default recipe under budget=10m on real CIFAR-10. The table is
    kept in reports/zoo-accuracy.json after each architecture (a rerun skips those done; CNNLAB_BENCH_ARCHS picks
    some) and written into reports/zoo.md between its zoo-table marks. CNNLAB_BENCH_ZOO_PARALLEL=2 trains two at
    once, one thread each (twice the architectures per hour, each on one core)."""
    import json
    import subprocess
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from .common import REPORTS

    path = REPORTS / "zoo-accuracy.json"
    done = json.loads(path.read_text()) if path.exists() else {}
    chosen = os.environ.get("CNNLAB_BENCH_ARCHS", "").split(",") if os.environ.get("CNNLAB_BENCH_ARCHS") else \
        [a for a in rows if "test_acc" not in done.get(a, {})]  # a failed one is tried again
    parallel = int(os.environ.get("CNNLAB_BENCH_ZOO_PARALLEL", "1"))
    lock = threading.Lock()

    def one(arch):
        extra = ["threads=1"] if parallel > 1 else []
        r = {"params": rows[arch]["params"], "mflops": round(rows[arch]["flops"] / 1e6, 1),
             "threads": 1 if parallel > 1 else 0}
        try:
            r.update(_budget_run([f"arch={arch}", f"budget={ZOO_BUDGET}", *extra]))
            line = (f"{arch}: test_acc {r['test_acc']:.4f} after {r['epochs']} epochs ({r['steps']} steps) in "
                    f"{r['wall_s']:.0f} s of a {ZOO_BUDGET} budget" + (" (one thread, beside another run)" if parallel > 1 else ""))
        except subprocess.CalledProcessError as e:  # kept in the table with its reason; the others go on
            r["error"] = (e.stderr or "").strip().splitlines()[-1:] or [f"exit {e.returncode}"]
            line = f"{arch}: FAILED: {r['error'][0]}"
        with lock:
            done[arch] = r
            REPORTS.mkdir(exist_ok=True)
            path.write_text(json.dumps(done, indent=1))
            report.add(f"zoo_acc_{arch}", r, line)
            _write_zoo_table(done)

    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(one, chosen))


def _write_zoo_table(done: dict) -> None:
    from .common import cpu_line

    from cnnlab.schema import SOURCE_ROOT

    lines = [f"Each architecture's own recipe (`conf/arch/<name>.yaml`) under `budget={ZOO_BUDGET}` on the JPEG copy "
             f"of CIFAR-10 ({cpu_line()}; `make bench ARGS=\"zoo --accuracy\"`):", "",
             "| arch | params | MFLOPs | img/s | epochs | test acc | threads |", "|---|---:|---:|---:|---:|---:|---|"]
    for arch, r in sorted(done.items(), key=lambda kv: -kv[1].get("test_acc", -1)):
        if "error" in r:
            lines.append(f"| {arch} | {r['params'] / 1e6:.2f}M | {r['mflops']:,.1f} | | | failed: {r['error'][0]} | |")
            continue
        lines.append(f"| {arch} | {r['params'] / 1e6:.2f}M | {r['mflops']:,.1f} | {r['img_s']:,.0f} | {r['epochs']} | "
                     f"{r['test_acc']:.4f} | {'1, beside another run' if r.get('threads') == 1 else 'all'} |")
    readme = SOURCE_ROOT / "reports" / "zoo.md"
    text = readme.read_text()
    head, mark, rest = text.partition("<!-- zoo-table -->")
    _, end, tail = rest.partition("<!-- /zoo-table -->")
    if mark and end:
        readme.write_text(head + mark + "\n" + "\n".join(lines) + "\n" + end + tail)


def bench_budget(report, accuracy: bool = False) -> None:
    """Issues 18 and 28: `budget=` runs of recipe=fast94 and arch=tf_cnn at 1, 2 and 5 minutes: how close each ends to
    its budget (the run's wall time and the whole process's) and the accuracy it reaches. --load: a CPU-heavy process
    starts halfway through each run's budget and runs to its end."""
    import contextlib
    import subprocess

    from cnnlab.schema import duration

    from .common import CpuHog, load_wanted

    for label in os.environ.get("CNNLAB_BENCH_BUDGET_RUNS", "recipe=fast94,arch=tf_cnn").split(","):
        for budget in os.environ.get("CNNLAB_BENCH_BUDGETS", "1m,2m,5m").split(","):
            try:
                with CpuHog(after_s=duration(budget) / 2) if load_wanted() else contextlib.nullcontext():
                    r = _budget_run([label, f"budget={budget}"])
            except subprocess.CalledProcessError as exc:  # exit 2: cnnlab found the budget too short for one step
                if exc.returncode != 2:
                    raise
                said = " ".join(exc.stderr.split())
                report.add(f"budget_{label}_{budget}", {"refused": said}, f"{label} budget={budget}: refused: {said}")
                continue
            off = r["wall_s"] / r["budget_s"] - 1
            report.add(f"budget_{label}_{budget}", r,
                       f"{label} budget={budget}: test_acc {r['test_acc']:.4f} after {r['steps']} steps ({r['epochs']} "
                       f"epochs; {r['planned_steps']} planned at the start); the run took {r['wall_s']:.0f} s ({off:+.1%} of its budget: "
                       f"{'within' if abs(off) <= 0.05 else 'NOT within'} 5%), the whole process {r['process_s']:.0f} s"
                       + (f"; TTA on {r['tta_share_used']:.0%} of the test set" if "tta_share_used" in r else ""))


def _sweep(args, workers: int = 1, **options):
    from cnnlab.sweeps import Sweep, load_spec

    return Sweep(load_spec(["experiment=bench-sweep", *args], **options), workers=workers, quiet=True).run()


def _epochs_used(result) -> int:
    return sum(len(o.history) for o in result.outcomes)


def bench_sweep(report, accuracy: bool = False) -> None:
    """Issue 3: Optuna + median pruning against grids, both over the issue's example space at the recipe's 10
    epochs per trial. Optuna runs 20 trials, then resumes the study (spending the epochs pruning saved on more
    trials) until it has trained as many epochs as a grid. The grids have 24 configs each: the issue's (lr in
    decades) and the same lattice half a decade up, which holds the recipe's tuned lr 3e-3, so it shows a grid
    that already knows the answer. Then each sweep's chosen config is trained with 5 seeds: the best val_acc of
    a sweep is one seed's, and seed noise is about as large as the gaps between good configs. With accuracy=True
    the race runs again with training and sampling seeds 1 and 2."""
    import statistics
    import time

    epochs = 10
    common = ["arch=tf_cnn", "data.train_fraction=0.2", f"epochs={epochs}", "eval.test_every_epoch=false"]
    stamp = time.strftime("%H%M%S")
    chosen = _sweep_race(report, common, epochs, 0, stamp)
    for params, keys in chosen.items():
        rows = _sweep([*common, *params.split(), "seed=0,1,2,3,4"], name=f"bench-seeds-{keys[0]}-{stamp}")
        vals = [r.metrics["val_acc_best"] for r in rows.records]
        report.add(f"sweep_{'+'.join(keys)}_choice_over_seeds", {"mean": round(statistics.mean(vals), 4),
                                                                 "std": round(statistics.stdev(vals), 4)},
                   f"the choice of {' and '.join(keys)} ({params}) trained with seeds 0-4: val_acc "
                   f"{statistics.mean(vals):.4f} +- {statistics.stdev(vals):.4f} ({' '.join(f'{v:.4f}' for v in vals)})")
    for seed in (1, 2) if accuracy else ():
        _sweep_race(report, common, epochs, seed, stamp)


def _sweep_race(report, common, epochs: int, seed: int, stamp: str) -> dict:
    """One race of bench_sweep with training (and Optuna sampling) seed `seed`; returns {chosen config: the
    sweeps that chose it}."""
    import time

    common = [*common, f"seed={seed}"]
    units = "dense_units=64,128,256,500"
    space = ["lr=tag(log,interval(1e-4,1e-1))", units, "dropout=interval(0,0.6)"]
    grids = {"grid": ("the issue's grid (lr 0.1/0.01/0.001)", "lr=0.1,0.01,0.001"),
             "grid_tuned": ("a grid holding the tuned lr (1e-3/3e-3/1e-2)", "lr=1e-3,3e-3,1e-2")}
    results = []  # (key, label, sweep result, epochs trained, seconds)
    for key, (label, lrs) in grids.items():
        start = time.perf_counter()
        result = _sweep([*common, lrs, units, "dropout=0,0.5"],
                        name=f"bench-{key}-{seed}-{stamp}")
        results.append((key, f"{label}, 24 configs", result, _epochs_used(result), time.perf_counter() - start))
    budget = results[0][3]

    def optuna(trials):  # a bigger budget resumes the same study
        return _sweep([*common, *space], strategy="optuna", trials=trials, pruner="median", seed=seed,
                      name=f"bench-optuna-{seed}-{stamp}")

    start = time.perf_counter()
    trials = 20
    result = optuna(trials)
    used = _epochs_used(result)
    results.append(("optuna", "optuna TPE + median pruner, 20 trials", result, used, time.perf_counter() - start))
    while used + epochs <= budget and trials < 80:  # one more trial cannot pass the grids' epochs
        trials += max(1, (budget - used) // epochs)
        result = optuna(trials)
        used += _epochs_used(result)
    if trials > 20:
        results.append(("optuna_equal_epochs", f"the same study resumed to {trials} trials (equal epochs)", result,
                        used, time.perf_counter() - start))
    chosen = {}
    for key, label, result, used, seconds in results:
        best = result.groups[0]
        chosen.setdefault(best.params, []).append(key)
        pruned = sum(r.state == "PRUNED" for r in result.records)
        report.add(f"sweep_{key}" + (f"_seed{seed}" if seed else ""),
                   {"best_val_acc": round(best.mean, 4), "test_acc": round(best.test_mean, 4),
                    "epochs": used, "pruned": pruned, "seconds": round(seconds)},
                   f"{f'seed {seed}: ' if seed else ''}{label}: best val_acc {best.mean:.4f} ({best.params}), "
                   f"its test_acc {best.test_mean:.4f}; {used} epochs trained, {pruned} pruned, {seconds:.0f} s "
                   f"(tf_cnn, 20% of train, {epochs} epochs per trial)")
    return chosen


def _tutorial_multirun(seeds: int) -> tuple:
    """The exercise sweep's configs as a plain Hydra --multirun of the one-file tutorial script (tutorial_hydra.py):
    (seconds, {(config, seed): test_acc}, how many configs)."""
    import json
    import subprocess
    import sys
    import tempfile
    import time
    from pathlib import Path

    from omegaconf import OmegaConf

    from cnnlab.schema import conf_dir

    spec = OmegaConf.load(conf_dir() / "sweep" / "exercise.yaml")
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "conf"
        (conf / "trial").mkdir(parents=True)
        base = {"seed": 0, "val_split": 0.1, "train_fraction": 0.2, "batch_size": 64, "epochs": 10, "lr": 1e-3,
                "dense_units": 64, "dropout": 0.0, "batch_norm": False}
        for o in spec.overrides[1:]:
            k, v = o.split("=")
            if k == "scheduler":  # constant: the tutorial script has no schedule
                continue
            base[k] = type(base[k])(float(v)) if k != "batch_norm" else v == "true"
        (conf / "config.yaml").write_text(OmegaConf.to_yaml({"defaults": ["_self_", {"trial": "t0"}], **base}))
        names = []
        for i, config in enumerate(spec.configs):
            values = {}
            for o in config:
                k, v = o.split("=")
                values[k] = v == "true" if v in ("true", "false") else type(base[k])(float(v))
            (conf / "trial" / f"t{i}.yaml").write_text("# @package _global_\n" + OmegaConf.to_yaml(values))
            names.append(f"t{i}")
        script = Path(__file__).with_name("tutorial_hydra.py")
        start = time.perf_counter()
        subprocess.run([sys.executable, str(script), "--config-dir", str(conf), "--multirun",
                        f"trial={','.join(names)}", f"seed={','.join(map(str, range(seeds)))}",
                        f"hydra.sweep.dir={tmp}/multirun"], check=True, capture_output=True, text=True,
                       cwd=script.parent)
        seconds = time.perf_counter() - start
        results = [json.loads(p.read_text()) for p in (Path(tmp) / "multirun").glob("*/result.json")]
    return seconds, {(int(r["trial"][1:]), r["seed"]): r["test_acc"] for r in results}, len(names)


def bench_exercise(report, accuracy: bool = False) -> None:
    """Issue 3: the exercise sweep against a plain Hydra --multirun of a one-file tutorial script, same configs and
    epochs; with accuracy=True every config runs with 3 seeds in both, so that accuracies compare beyond seed noise."""
    import statistics
    import time

    seeds = 3 if accuracy else 1
    stamp = time.strftime("%H%M%S")
    exercise = ["sweep=exercise", "data.train_fraction=0.2", "eval.test_every_epoch=false"]
    start = time.perf_counter()
    ours = _sweep(exercise, name=f"bench-exercise-{stamp}", repeats=seeds)
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    ours2 = _sweep(exercise, workers=2, name=f"bench-exercise-w2-{stamp}", repeats=seeds)
    ours2_s = time.perf_counter() - start
    hydra_s, hydra_acc, configs = _tutorial_multirun(seeds)
    # test accuracy by (config, seed) in both pipelines; cnnlab numbers repeats of config i T(i * seeds + r)
    by_trial = lambda result: {(int(r.trial[1:]) // seeds, int(r.trial[1:]) % seeds): r.metrics["test_acc"]  # noqa
                               for r in result.records}
    ours_acc, ours2_acc = by_trial(ours), by_trial(ours2)
    assert len(hydra_acc) == len(ours_acc) == len(ours2_acc) == configs * seeds

    def acc(table) -> str:
        """mean test_acc over the configs, as mean +- std over the seeds when there are several"""
        per_seed = [statistics.mean(table[i, r] for i in range(configs)) for r in range(seeds)]
        return f"{per_seed[0]:.4f}" if seeds == 1 else \
            f"{statistics.mean(per_seed):.4f} +- {statistics.stdev(per_seed):.4f} over {seeds} seeds"

    def config_acc(table, i: int) -> float:
        return statistics.mean(table[i, r] for r in range(seeds))

    what = f"{configs} configs{f' x {seeds} seeds' if seeds > 1 else ''}, 20% of train"
    report.add("exercise_cnnlab_s", round(ours_s), f"exercise sweep ({what}): cnnlab sweep {ours_s:.0f} s, "
               f"mean test_acc {acc(ours_acc)}, best config {max(config_acc(ours_acc, i) for i in range(configs)):.4f}")
    report.add("exercise_cnnlab_workers2_s", round(ours2_s), f"the same with --workers 2 (1 thread each): {ours2_s:.0f} s, "
               f"mean test_acc {acc(ours2_acc)}")
    report.add("exercise_hydra_s", round(hydra_s), f"the same {what} as a Hydra --multirun of a one-file tutorial "
               f"script (DataLoader, per-image transforms, fp32): {hydra_s:.0f} s, mean test_acc {acc(hydra_acc)}, "
               f"best config {max(config_acc(hydra_acc, i) for i in range(configs)):.4f}")
    report.add("exercise_speedup", round(hydra_s / ours_s, 2), f"sweep speed-up: {hydra_s / ours_s:.2f}x with one "
               f"worker, {hydra_s / ours2_s:.2f}x with --workers 2; per config cnnlab/tutorial test_acc"
               f"{' (mean of the seeds)' if seeds > 1 else ''}: " + ", ".join(
                   f"T{i} {config_acc(ours_acc, i):.3f}/{config_acc(hydra_acc, i):.3f}" for i in range(configs)))


def _fill_store(tmp: str, n: int = 1000) -> float:
    """A fresh store in `tmp` (CNNLAB_RUNS_DIR must point there) with `n` finished 10-epoch runs logged straight
    into it; returns the seconds that took."""
    import random
    import time

    from mlflow.entities import Metric, Param, RunTag

    from cnnlab.config import compose, flatten, resolve, to_dict
    from cnnlab.record import Store, Tag

    store = Store()
    client = store.client
    base = flatten(to_dict(resolve(compose([]))))
    rng = random.Random(0)
    start = time.perf_counter()
    for i in range(n):
        params = {**base, "lr": rng.choice([3e-4, 1e-3, 3e-3]), "dense_units": rng.choice([0, 64, 500]),
                  "dropout": rng.choice([0.0, 0.5]), "batch_norm": rng.choice([True, False]),
                  "split.train": 45000, "split.val": 5000, "split.test": 10000}
        run_id = store.create_run("cifar10", {}).run_id  # as train() does: a log ID claimed per run
        now = int(time.time() * 1000)
        metrics = [Metric(k, rng.random(), now, e) for e in range(1, 11)
                   for k in ("train_loss", "train_acc", "val_loss", "val_acc", "epoch_test_acc")]
        metrics += [Metric(k, rng.random(), now, 10) for k in
                    ["test_acc", "val_acc_best", "train_acc_final", "wall_time", "train_time"] +
                    [f"test_acc_class{c}" for c in range(10)]] + [Metric("epochs_run", 10, now, 10)]
        client.log_batch(run_id, metrics=metrics,
                         params=[Param(k, str(v)) for k, v in list(params.items())[:100]],
                         tags=[RunTag(Tag.RUN_DIR, f"{tmp}/cifar10/T{i}"), RunTag(Tag.STATE, "FINISHED")])
        client.set_terminated(run_id, "FINISHED")
    return time.perf_counter() - start


def bench_export(report, accuracy: bool = False) -> None:
    """Issue 4: export-log of 1,000 runs logged straight into a fresh store."""
    import tempfile
    import time
    from pathlib import Path

    from cnnlab import export
    from cnnlab import log as run_log
    from cnnlab.record import Store

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["CNNLAB_RUNS_DIR"] = tmp
        try:
            setup = _fill_store(tmp)
            store = Store(create=False)
            for suffix in (".xlsx", ".csv"):
                start = time.perf_counter()
                export.write(run_log.build(store, store.runs()), Path(tmp) / f"runs{suffix}")
                seconds = time.perf_counter() - start
                report.add(f"export_1000_{suffix[1:]}_s", round(seconds, 2),
                           f"export-log of 1,000 runs (10 epochs each) to {suffix}: {seconds:.1f} s "
                           f"(logging them took {setup:.0f} s)")
        finally:
            os.environ.pop("CNNLAB_RUNS_DIR", None)


def bench_listings(report, accuracy: bool = False) -> None:
    """Issue 17: the listing commands, each a fresh `cnnlab` process as a user runs it (median of 3), against
    the issue's targets; `runs` over a store of 1,000 runs."""
    import statistics
    import subprocess
    import sys
    import tempfile
    import time
    from pathlib import Path

    cnnlab = str(Path(sys.executable).with_name("cnnlab"))  # the installed console script
    dry_run = ["sweep", "lr=1e-3,3e-3", "dropout=0,0.5", "--dry-run"]
    commands = [("help", ["--help"], 0.5, True), ("models", ["models"], 2.0, True),
                ("describe", ["describe", "arch=vgg16"], 2.0, True), ("runs_1000", ["runs"], 1.5, True),
                ("sweep_dry_run", dry_run, 2.0, True), ("sweep_dry_run_fresh", dry_run, 2.0, False)]
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory() as fresh:
        env = {**os.environ, "CNNLAB_RUNS_DIR": tmp}
        os.environ["CNNLAB_RUNS_DIR"] = tmp
        try:
            setup = _fill_store(tmp)
        finally:
            os.environ.pop("CNNLAB_RUNS_DIR", None)
        for name, args, target, filled in commands:
            times = []
            for _ in range(3):
                start = time.perf_counter()
                done = subprocess.run([cnnlab, *args], env=env if filled else {**env, "CNNLAB_RUNS_DIR": fresh},
                                      capture_output=True, text=True)
                times.append(time.perf_counter() - start)
                if done.returncode != 0:
                    raise RuntimeError(f"cnnlab {' '.join(args)} failed: {done.stderr[-2000:]}")
            seconds = statistics.median(times)
            report.add(f"{name}_s", round(seconds, 2),
                       f"`cnnlab {' '.join(args)}`: {seconds:.2f} s (runs {', '.join(f'{t:.2f}' for t in times)}; "
                       f"target < {target} s: {'met' if seconds < target else 'NOT met'})"
                       + {"runs_1000": f"; the store holds 1,000 runs (logging them took {setup:.0f} s)",
                          "sweep_dry_run": "; the estimate from the store's past runs of the same model",
                          "sweep_dry_run_fresh": "; an empty store: the estimate from timed training steps"
                          }.get(name, ""))


def _cnnlab_fast(recipe: str, seed: int, run_id: str = None) -> dict:
    """`cnnlab train recipe=RECIPE seed=SEED` ("RECIPE" may carry overrides: "fast94_muon epochs=7") in a fresh
    process, timed as the peer is: the data-fitted layers (whitening), the training steps and the final TTA pass;
    not data loading or the per-epoch test."""
    from cnnlab.record import Store

    client = Store().client
    name, *extra = recipe.split()
    run_id = run_id or _cli_train([f"recipe={name}", f"seed={seed}", *extra])
    run = client.get_run(run_id)
    m, params = run.data.metrics, run.data.params
    history = lambda key: {h.step: h.value for h in client.get_metric_history(run_id, key)}  # noqa: E731
    # the images each epoch trained: whole batches (the last partial one is dropped), fewer in an epoch max_steps cut
    batch, per_epoch = int(params["batch_size"]), int(params["split.train"]) // int(params["batch_size"])
    steps_left = int(params["max_steps"]) or per_epoch * int(params["epochs"])
    images = {}
    for epoch in sorted(history("img_per_s")):
        images[epoch] = batch * min(per_epoch, steps_left)
        steps_left -= per_epoch
    steps_s = {e: images[e] / ips for e, ips in history("img_per_s").items()}
    elapsed, curve = m["build_time"], []
    for epoch, acc in sorted(history("epoch_test_acc").items()):
        elapsed += steps_s[epoch]
        curve.append((epoch, round(elapsed, 1), round(acc, 4)))
    train_s = m["build_time"] + sum(steps_s.values()) + m["test_time"]
    gflops = 3 * m["flops"] * sum(images.values()) / sum(steps_s.values()) / 1e9
    return {"tta_acc": m["test_acc"], "train_s": train_s, "steps_s": sum(steps_s.values()),
            "epochs": int(m["epochs_run"]), "curve": curve, "gflops": gflops, "params": int(m["params"]),
            "early": int(params.get("progressive_epochs", 0))}


def _fast_ratios(report, results: dict, peers: list) -> None:
    """Each result {name: (mean accuracy, mean seconds)} against the faster of the `peers` among them."""
    peers = {name: results[name] for name in peers}
    if not peers:
        return
    best = min(peers, key=lambda name: peers[name][1])  # the faster record holder
    peer_acc, peer_s = peers[best]
    for name, (acc, seconds) in results.items():
        if name != best:
            report.add(f"fast_ratio_{name}", round(seconds / peer_s, 3),
                       f"{name} against the {best} (the faster peer): {seconds / peer_s:.2f}x its training time "
                       f"(target <= 0.9), accuracy {acc - peer_acc:+.4f} (target >= 0)")


def bench_fast(report, accuracy: bool = False) -> None:
    """Issues 18 and 28: time to accuracy against the record holders, side by side on this CPU and this data copy: the
    ports of airbench94_muon (tests/bench/airbench_muon.py) and of the newer cifar10-speedrun (tests/bench/speedrun.py),
    then cnnlab's recipes. Each is timed as the records time themselves (whitening, training steps, final TTA).
    --accuracy: 3 seeds each, mean and std. CNNLAB_BENCH_PEERS / CNNLAB_BENCH_RECIPES choose (comma-separated)."""
    import statistics
    from types import SimpleNamespace

    from cnnlab import data

    from . import airbench_muon, speedrun
    from .common import matmul_peak

    peak = matmul_peak("bfloat16")
    report.add("matmul_bf16_gflops", round(peak), f"bf16 matmul peak (2048x2048): {peak:.0f} GFLOP/s")
    ds = data.load(SimpleNamespace(name="cifar10", root=None, download=False))
    seeds = (0, 1, 2) if accuracy else (0,)
    recipes = os.environ.get("CNNLAB_BENCH_RECIPES",
                             "fast94_progressive,fast94_speedrun,fast94_muon,fast94").split(",")
    ports = {"airbench94_muon port": airbench_muon, "cifar10-speedrun port": speedrun}
    chosen = os.environ.get("CNNLAB_BENCH_PEERS", ",".join(ports)).split(",")
    results = {}

    def peer(module, seed):
        r = module.train(ds.x_train, ds.y_train, ds.x_test, ds.y_test, seed=seed,
                         on_epoch=lambda e, t, a: print(f"  port epoch {e}: {t:.0f} s, test acc {a:.4f}", flush=True))
        steps = r.get("steps") or (len(ds.y_train) // module.BATCH) * r["epochs"]
        r["gflops"] = 3 * module.forward_flops() * module.BATCH * steps / r["steps_s"] / 1e9  # a step: ~3 forwards
        return r

    runners = [(name, lambda s, m=module: peer(m, s)) for name, module in ports.items() if name in chosen]
    runners += [(f"recipe={r}", lambda s, r=r: _cnnlab_fast(r, s)) for r in recipes if r]
    for name, one in runners:
        runs = []
        for seed in seeds:
            runs.append(one(seed))
            r = runs[-1]
            report.add(f"fast_{name}_seed{seed}", r,
                       f"{name} seed {seed}: TTA test_acc {r['tta_acc']:.4f} after {r['epochs']} epochs in {r['train_s']:.0f} s "
                       f"of training, {r['gflops']:.0f} GFLOP/s = {r['gflops'] / peak:.0%} of the bf16 peak"
                       f"{' (its smaller early epochs counted at 32 px)' if r.get('early') else ''}; curve "
                       "(epoch, s, acc without TTA): " + ", ".join(f"({e}, {t:.0f}, {a:.3f})" for e, t, a in r["curve"]))
        accs, times = [r["tta_acc"] for r in runs], [r["train_s"] for r in runs]
        results[name] = (statistics.mean(accs), statistics.mean(times))
        spread = lambda v, f: f" +- {statistics.stdev(v):{f}}" if len(v) > 1 else ""  # noqa: E731
        report.add(f"fast_{name}", {"acc_mean": round(statistics.mean(accs), 4),
                                    "train_s_mean": round(statistics.mean(times), 1), "seeds": len(runs),
                                    "params": runs[0]["params"]},
                   f"**{name}**: TTA accuracy {statistics.mean(accs):.4f}{spread(accs, '.4f')}, training "
                   f"{statistics.mean(times):.0f}{spread(times, '.0f')} s ({len(runs)} seed(s)), "
                   f"{runs[0]['params']:,} params")
    _fast_ratios(report, results, peers=[name for name in ports if name in results])


from .faults import bench_faults  # noqa: E402

def bench_report(report, accuracy: bool = False) -> None:
    """Issue 16: `cnnlab report` as a user runs it (a fresh process), against the targets: a run's page in under
    10 s (a run on real CIFAR-10 per architecture, from tf_cnn to googlenet's 2.9 GFLOPs per image) and a
    100-trial sweep's in under 20 s (an Optuna sweep with the median pruner on synthetic data)."""
    import re
    import subprocess
    import sys
    import tempfile
    import time
    from pathlib import Path

    cnnlab = str(Path(sys.executable).with_name("cnnlab"))

    def run(args, env):
        start = time.perf_counter()
        done = subprocess.run([cnnlab, *args], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"cnnlab {' '.join(args)} failed: {done.stderr[-2000:]}")
        return done.stdout, time.perf_counter() - start

    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "CNNLAB_RUNS_DIR": tmp}
        for arch in ("tf_cnn", "resnet18", "googlenet"):
            out, _ = run(["train", f"arch={arch}", "epochs=1", "data.train_fraction=0.02", "-q"], env)
            run_id = re.search(r"id=(T\d+)", out).group(1)
            page = Path(tmp) / f"{arch}.html"
            _, seconds = run(["report", run_id, "-o", str(page)], env)
            report.add(f"report_run_{arch}_s", round(seconds, 2),
                       f"`cnnlab report` of a {arch} run on CIFAR-10: {seconds:.1f} s, {page.stat().st_size / 1e6:.1f} "
                       f"MB (target < 10 s: {'met' if seconds < 10 else 'NOT met'})")
        space = ["lr=tag(log,interval(1e-4,1e-1))", "dropout=interval(0,0.5)", "dense_units=choice(32,64,128)",
                 "batch_norm=choice(true,false)"]
        _, setup = run(["sweep", "data=synthetic", "data.n_train=200", "data.n_test=100", "epochs=3",
                        "batch_size=50", *space, "--strategy", "optuna", "--pruner", "median", "--trials", "100",
                        "--name", "s100", "-q"], env)
        page = Path(tmp) / "s100.html"
        _, seconds = run(["report", "s100", "-o", str(page)], env)
        report.add("report_sweep_100_s", round(seconds, 2),
                   f"`cnnlab report` of a 100-trial Optuna sweep (4 parameters, median pruner): {seconds:.1f} s, "
                   f"{page.stat().st_size / 1e6:.1f} MB (target < 20 s: {'met' if seconds < 20 else 'NOT met'}; "
                   f"the sweep took {setup:.0f} s)")


def bench_evidence(report, accuracy: bool = False) -> None:
    """Issue 30: is dropout really better? tf_cnn (its recipe: 10 epochs) with dropout 0 and 0.5, 5 seeds each on
    the real data, and the verdict `cnnlab compare 'dropout=0' 'dropout=0.5'` gives (paired by seed)."""
    import time

    from cnnlab import comparison as compare
    from cnnlab.record import Store

    name = f"evidence-{time.strftime('%m%d-%H%M%S')}"
    start = time.perf_counter()
    result = _sweep(["arch=tf_cnn", "dropout=0,0.5"], repeats=5, name=name)
    seconds = time.perf_counter() - start
    found = compare.gather(Store(create=False), ["dropout=0", "dropout=0.5"], ["bench-sweep"], sweep=name)
    v = found.verdicts[0]
    for side in found.sides:
        tests = " ".join(f"{t:.4f}" for t in side.tests)
        report.add(f"evidence_{side.label}", side.tests, f"tf_cnn {side.label}: test_acc of seeds 0-4: {tests}")
    report.add("evidence_verdict", {"diff": v.diff, "low": v.low, "high": v.high, "p": v.p, "paired": v.paired},
               f"verdict: {v.words()} (sweep {name}: {result.ran} runs in {seconds / 60:.0f} min; "
               f"`cnnlab compare 'dropout=0' 'dropout=0.5' --experiment bench-sweep --sweep {name}`)")


TRANSFER_BUDGET = "2m"  # each target run: probe, fine-tune and from scratch in the same time


def bench_transfer(report, accuracy: bool = False) -> None:
    """Issue 31: a fast tf_cnn and a vgg_small source run on the real CIFAR-10, their accuracy on every target set
    in the cache (and on the synthetic corruptions, which need no file); then, on each cached target with a
    training split (STL-10, SVHN, an imported folder), probe vs fine-tune vs from scratch under the same budget.
    The question: does a CIFAR-10 model transferred to the target beat one trained from scratch there in the
    same time?"""
    from cnnlab.data import data_root
    from cnnlab.record import Store
    from cnnlab.target_data import OFFICIAL, present

    root = data_root()
    cached = present(root)
    evaluable = [t for t in cached if t != "svhn"]
    report.add("transfer_targets", cached, f"target sets in the cache ({root / 'targets'}): "
                                           f"{', '.join(cached) or 'none'}" + ("" if cached else
               f" (no real target file here: get them with `cnnlab data download NAME`, {', '.join(OFFICIAL)}); "
               "the sources are scored on the synthetic corruptions only"))
    sources = {}
    for arch, extra in (("tf_cnn", []), ("vgg_small", ["epochs=8"])):
        run_id = _cli_train([f"arch={arch}", *extra, f"eval.targets=[{','.join(['blur', 'contrast', *evaluable])}]"])
        record = Store().get(run_id)
        sources[arch] = record
        scores = {k[len("target_acc_"):]: round(v, 4) for k, v in record.metrics.items() if k.startswith("target_acc_")}
        report.add(f"transfer_source_{arch}", {"test_acc": round(record.metrics["test_acc"], 4), **scores},
                   f"source {arch} ({record.id}): test_acc {record.metrics['test_acc']:.4f}; targets "
                   + ", ".join(f"{k} {v:.4f}" for k, v in sorted(scores.items())))
    for target in [t for t in cached if t not in ("cifar10_1", "cifar10_c")]:
        for arch, source in sources.items():
            results = {}
            for mode in ("probe", "finetune", "none"):
                run_id = _cli_train([f"arch={arch}", f"data.name={target}", f"init_from={source.run_id}",
                                     f"transfer={mode}", f"budget={TRANSFER_BUDGET}"])
                results[mode] = round(Store().get(run_id).metrics["test_acc"], 4)
            better = max(results["probe"], results["finetune"]) > results["none"]
            report.add(f"transfer_{target}_{arch}", results,
                       f"{target} from {arch} ({source.id}) in {TRANSFER_BUDGET} each: probe {results['probe']:.4f}, "
                       f"fine-tune {results['finetune']:.4f}, from scratch {results['none']:.4f}: the transferred "
                       f"model {'beats' if better else 'does NOT beat'} one trained from scratch in the same time")


from .gpu import bench_gpu  # noqa: E402
from .team import bench_team  # noqa: E402

SYNTHETIC = {"faults", "listings", "team", "gpu"}  # sections that need no real CIFAR-10 (gpu uses it when cached)

ALL = {"faults": bench_faults, "train": bench_train, "zoo": bench_zoo, "sweep": bench_sweep, "exercise": bench_exercise, "export": bench_export,
       "fast": bench_fast, "budget": bench_budget, "listings": bench_listings, "report": bench_report, "team": bench_team,
       "gpu": bench_gpu, "evidence": bench_evidence, "transfer": bench_transfer}
