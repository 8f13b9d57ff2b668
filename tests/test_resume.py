"""`cnnlab train resume=RUN`: a killed run continues from its last whole epoch to the uninterrupted result."""

from __future__ import annotations

import signal

import pytest

from cnnlab.config import compose
from cnnlab.errors import Interrupted
from cnnlab.record import Store
from cnnlab.training import train

# threads=2: bit-exact only at a fixed thread count (the default follows the machine's load, and a sum split over
# another number of threads rounds differently), as the README says of repeats on a busy machine
SMALL = ["data=synthetic", "data.n_train=600", "data.n_test=200", "batch_size=50", "epochs=4", "threads=2"]
CURVE = ("train_loss", "train_acc", "val_loss", "val_acc", "epoch_test_acc", "lr")


def stop_after(epoch_to_stop: int):
    def on_epoch(epoch, metrics):
        if epoch == epoch_to_stop:
            raise Interrupted(signal.SIGTERM)  # what train() raises when SIGTERM arrives

    return on_epoch


@pytest.mark.slow
@pytest.mark.parametrize("recipe", [
    ["dropout=0.25", "scheduler=onecycle"],  # dropout and augmentation draw random numbers, the schedule steps
    ["recipe=fast94", "width=0.25", "ema=0.9", "val_split=0.1"],  # lookahead, EMA, alternating flips, triangle
])
def test_a_killed_run_resumes_to_the_uninterrupted_result(recipe):
    overrides = SMALL + recipe
    whole = train(compose(overrides), quiet=True)
    with pytest.raises(Interrupted):
        train(compose(overrides), on_epoch=stop_after(2), quiet=True)
    store = Store()
    killed = store.find("T1")
    assert killed.state == "KILLED"
    resumed = train(None, resume=killed, quiet=True)
    assert (resumed.id, resumed.run_id, resumed.status) == ("T1", killed.run_id, "FINISHED")
    assert [[h.get(k) for k in CURVE] for h in resumed.history] == [[h.get(k) for k in CURVE] for h in whole.history]
    assert resumed.metrics["test_acc"] == whole.metrics["test_acc"]
    record = store.get(killed.run_id)
    assert record.state == "FINISHED" and not record.reason
    steps = [m.step for m in store.client.get_metric_history(killed.run_id, "train_loss")]
    assert steps == [1, 2, 3, 4]  # the same run, each epoch once


@pytest.mark.slow
def test_resume_refuses_what_cannot_be_resumed(cli):
    assert cli("train", *SMALL[:4], "epochs=1", "-q")[0] == 0
    code, _, err = cli("train", "resume=T0")
    assert code == 2 and "FINISHED: there is nothing to resume" in err
    code, _, err = cli("train", "resume=T0", "lr=0.1")
    assert code == 2 and "give it alone" in err
    with pytest.raises(Interrupted):
        train(compose(SMALL), on_epoch=stop_after(1), quiet=True)
    code, out, err = cli("train", "resume=T1", "-q")
    assert code == 0 and "resuming synthetic T1" in err and "id=T1" in out, err


def test_a_signal_while_last_pt_is_written_still_records_the_epoch_whole(monkeypatch):
    """SIGINT in the middle of writing last.pt: the epoch's checkpoint and metrics land together, the run ends
    KILLED after that epoch, and it resumes from there."""
    import os

    from cnnlab import checkpoint

    real = checkpoint.save

    def interrupted_write(path, state):
        if path.name == "last.pt":
            tmp = path.with_suffix(".tmp")
            import torch

            torch.save(state, tmp)
            os.kill(os.getpid(), signal.SIGINT)  # the handler runs here, between the write and the move
            os.replace(tmp, path)
        else:
            real(path, state)

    monkeypatch.setattr(checkpoint, "save", interrupted_write)
    with pytest.raises(Interrupted):
        train(compose(SMALL[:4] + ["epochs=2"]), quiet=True)
    killed = Store().find("T0")
    assert killed.state == "KILLED"
    assert (killed.run_dir / "last.pt").exists() and not (killed.run_dir / "last.tmp").exists()
    steps = [m.step for m in Store().client.get_metric_history(killed.run_id, "train_loss")]
    assert steps == [1]
    assert "resume it after epoch 1" in (killed.run_dir / "train.log").read_text()
    monkeypatch.setattr(checkpoint, "save", real)
    resumed = train(None, resume=killed, quiet=True)
    assert resumed.status == "FINISHED" and len(resumed.history) == 2


def test_two_resumes_at_once_one_runs_the_other_is_told_it_is_running():
    """Both read the run as KILLED; the second to reopen it gets the 'still RUNNING' error, not MLflow's traceback
    from deleting a tag the first had deleted."""
    from cnnlab.errors import CnnlabError

    with pytest.raises(Interrupted):
        train(compose(SMALL[:4] + ["epochs=2"]), on_epoch=stop_after(1), quiet=True)
    killed = Store().find("T0")
    assert killed.state == "KILLED"
    first = Store().reopen(killed)
    with pytest.raises(CnnlabError, match="still RUNNING"):
        Store().reopen(killed)  # the same stale record, as the second process read it
    first.end("KILLED", "test")
    assert Store().get(killed.run_id).state == "KILLED"
