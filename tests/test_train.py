"""`cnnlab train` end to end on synthetic data: what it records, how it ends, that it is repeatable."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from cnnlab.config import compose
from cnnlab.recorder import new_run_dir
from cnnlab.schema import runs_dir
from cnnlab.training import train

SMALL = ["data=synthetic", "data.n_train=600", "data.n_test=200", "batch_size=50"]


def only_run(client, experiment="synthetic"):
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    return runs[0]


def test_train_records_params_metrics_artifacts(cli, mlflow_client):
    code, out, err = cli("train", *SMALL, "epochs=2", "dropout=0.25", "-q")
    assert code == 0, err
    run = only_run(mlflow_client)
    assert run.info.status == "FINISHED"
    assert run.data.params["dropout"] == "0.25" and run.data.params["arch.name"] == "tf_cnn"
    assert run.data.params["data.name"] == "synthetic" and run.data.params["split.train"] == "540"
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "epoch_test_acc", "lr", "epoch_time", "img_per_s"):
        assert [m.step for m in mlflow_client.get_metric_history(run.info.run_id, key)][:2] == [1, 2], key
    metrics = run.data.metrics
    assert metrics["params"] == 122_570 and metrics["flops"] > 1e6 and metrics["wall_time"] > 0
    assert 0 <= metrics["test_acc"] <= 1 and "test_acc_class3" in metrics
    assert len(mlflow_client.get_metric_history(run.info.run_id, "test_acc")) == 1  # the final score, once
    tags = run.data.tags
    assert tags["cnnlab.overrides"] == " ".join(SMALL + ["epochs=2", "dropout=0.25"])
    assert tags["cnnlab.precision"] in ("bf16", "fp32") and tags["cnnlab.torch"] == torch.__version__
    artifacts = {a.path for a in mlflow_client.list_artifacts(run.info.run_id)}
    assert {"config", "checkpoint", "per_class.csv", "confusion.png", "train.log"} <= artifacts
    # the run directory
    assert tags["cnnlab.run_dir"] == f"synthetic/{run.info.run_name}"  # relative to the store: it can move
    run_dir = runs_dir() / tags["cnnlab.run_dir"]
    assert "dropout: 0.25" in (run_dir / ".hydra" / "config.yaml").read_text()
    assert "- dropout=0.25" in (run_dir / ".hydra" / "overrides.yaml").read_text()
    assert f"test_acc={metrics['test_acc']:.4f}" in out
    # the checkpoint is a plain state_dict that loads safely and reproduces the score
    state = torch.load(run_dir / "best.pt", weights_only=True)
    assert state["config"]["dropout"] == 0.25 and state["epoch"] == metrics["best_epoch"]


def test_checkpoint_reproduces_test_accuracy():
    from cnnlab import data
    from cnnlab.config import resolve
    from cnnlab.models import build_model
    from cnnlab.engine import evaluate

    cfg = compose(SMALL + ["epochs=2", "precision=fp32"])
    result = train(cfg, quiet=True)
    state = torch.load(result.run_dir / "best.pt", weights_only=True)
    model = build_model(resolve(cfg))
    model.load_state_dict(state["model"])
    ds = data.synthetic(600, 200)
    batches = data.Batches(ds.x_test, ds.y_test, 100, mean=ds.mean, std=ds.std)
    assert evaluate(model, batches, None, 10).acc == pytest.approx(result.metrics["test_acc"])


@pytest.mark.slow
def test_same_seed_same_metrics_other_seed_other_metrics():
    runs = [train(compose(SMALL + ["epochs=2", f"seed={s}"]), quiet=True) for s in (1, 1, 2)]
    curve = lambda r: [(h["train_loss"], h["val_acc"], h["epoch_test_acc"]) for h in r.history]  # noqa: E731
    assert curve(runs[0]) == curve(runs[1])
    assert curve(runs[0]) != curve(runs[2])


def test_nan_loss_ends_failed_with_reason(cli, mlflow_client):
    code, _, err = cli("train", *SMALL, "epochs=3", "optimizer=sgd", "lr=1e30", "-q")
    assert code == 1
    assert "diverged" in err and "Traceback" not in err
    run = only_run(mlflow_client)
    assert run.info.status == "FAILED"
    assert "nan" in run.data.tags["cnnlab.end_reason"].lower() or "inf" in run.data.tags["cnnlab.end_reason"]


def test_early_stopping_and_other_image_size():
    result = train(compose(SMALL + ["epochs=6", "early_stopping=1", "lr=1e-9", "image_size=40"]), quiet=True)
    assert result.status == "FINISHED"
    assert result.metrics["epochs_run"] == 2  # val_acc cannot improve with lr=1e-9


def test_run_dirs_never_collide(tmp_path):
    dirs = {new_run_dir(tmp_path / "exp", "T3") for _ in range(3)}  # a taken name gets a suffix
    assert sorted(d.name for d in dirs) == ["T3", "T3-2", "T3-3"]


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_ends_run_killed_and_keeps_last_checkpoint(tmp_path, mlflow_client, signum, code):
    proc = subprocess.Popen(
        [sys.executable, "-m", "cnnlab.cli", "train", "data=synthetic", "data.n_train=3000", "epochs=200", "-q"],
        env={**os.environ, "CNNLAB_RUNS_DIR": str(runs_dir())}, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    logs = []
    while time.time() < deadline and not any("epoch 1/" in p.read_text() for p in logs):
        time.sleep(0.2)
        logs = list(runs_dir().glob("synthetic/*/train.log"))
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    run = only_run(mlflow_client)
    assert run.info.status == "KILLED"
    assert (runs_dir() / run.data.tags["cnnlab.run_dir"] / "last.pt").exists()
    assert "interrupted" in (runs_dir() / run.data.tags["cnnlab.run_dir"] / "train.log").read_text()


@pytest.mark.slow
def test_mlflow_preload_thread_does_not_race_the_client(tmp_path):
    """train() imports MLflow in a thread while the data loads; a client made meanwhile must wait for it
    (two threads importing MLflow at once fail with a circular-import error)."""
    code = "from cnnlab import record; record.preload(); record.Store(); print('ok')"
    for _ in range(3):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env={**os.environ, "CNNLAB_RUNS_DIR": str(tmp_path)})
        assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


@pytest.mark.slow
def test_synthetic_runs_keep_to_their_own_experiment_and_do_not_saturate(cli):
    """data=synthetic lands in experiment `synthetic` (not cifar10's log, best and Pareto front) unless one is
    named, and is hard enough that a few epochs do not reach 100% (a sweep on it ranks something)."""
    from cnnlab.record import Store

    code, out, err = cli("train", "data=synthetic", "epochs=2", "-q")
    assert code == 0, err
    record = Store().find("T0")
    assert record.experiment == "synthetic" and "/synthetic/T0" in out
    assert max(record.metrics["val_acc_best"], record.metrics["test_acc"]) < 0.95
    code, out, err = cli("train", "data=synthetic", "data.n_train=300", "data.n_test=100", "epochs=1",
                         "experiment=my runs")
    assert code == 0, err
    assert Store().find("T0", ["my runs"]).experiment == "my runs"
    assert "next: cnnlab report T0 --experiment 'my runs'" in err  # what to look at next, ready to paste
