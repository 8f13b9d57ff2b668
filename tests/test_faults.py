"""Nothing lost, nothing injected: each finding of the adversarial pass (issue 14) as a regression test."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

from cnnlab.schema import runs_dir
from cnnlab.record import Store, Tag
from tests.helpers import wait_for
from cnnlab.record.writer import Writer
from cnnlab.errors import Interrupted

TINY = ["data=synthetic", "data.n_train=300", "data.n_test=100", "epochs=1", "batch_size=50"]
LONG = ["data=synthetic", "data.n_train=3000", "data.n_test=100", "epochs=50", "batch_size=50"]


def cnnlab(*args, env=None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cnnlab.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, **kwargs)


def as_from_a_terminal() -> None:
    """In a child before exec: SIGINT at its default, as for a command typed in a terminal (a test run started
    in the background of a script inherits it ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def children_of(pid: int) -> list:
    """PIDs whose parent is `pid`."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# ---------------------------------------------------------------- the store


def test_an_interrupted_creation_is_recovered(cli):
    runs = runs_dir()
    runs.mkdir(parents=True)
    (runs / ".mlflow.db.99999.tmp").write_bytes(b"half a schema")  # a creation killed before it moved in place
    with sqlite3.connect(runs / "mlflow.db") as db:  # what an older cnnlab left: tables, no version, no runs
        db.execute("CREATE TABLE experiments (experiment_id INTEGER)")
        db.execute("CREATE TABLE _alembic_tmp_tags (key TEXT)")
    code, _, err = cli("train", *TINY, "-q")
    assert code == 0, err
    assert "half-made store with no runs" in err
    assert not (runs / ".mlflow.db.99999.tmp").exists() and list(runs.glob("mlflow.db.incomplete-*"))
    assert [r.id for r in Store().runs()] == ["T0"]


def test_a_store_with_runs_is_never_rebuilt_and_garbage_is_refused(cli):
    assert cli("train", *TINY, "-q")[0] == 0
    db = runs_dir() / "mlflow.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE _alembic_tmp_tags (key TEXT)")  # an upgrade interrupted halfway
    before = db.read_bytes()
    code, _, err = cli("runs")
    assert code == 2 and "half-migrated" in err and "mlflow db upgrade" in err and "Traceback" not in err
    assert db.read_bytes() == before
    db.write_bytes(b"this is not a database" * 100)
    code, _, err = cli("runs")
    assert code == 2 and "not a readable MLflow store" in err and "Traceback" not in err
    assert db.read_bytes() == b"this is not a database" * 100


@pytest.mark.slow
def test_ctrl_c_while_a_first_train_creates_the_store_leaves_it_usable():
    for delay in (0.3, 0.9, 1.6):
        proc = subprocess.Popen([sys.executable, "-m", "cnnlab.cli", "train", *TINY, "-q"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=as_from_a_terminal)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode in (130, -signal.SIGINT), (delay, err[-3000:])  # never swallowed, wherever it lands
        done = cnnlab("train", *TINY, "-q")
        assert done.returncode == 0, done.stderr[-2000:]
        shutil.rmtree(runs_dir())


def cut_by(signum: int):
    """What a signal landing inside OmegaConf raises: its cleanup fails on the half-done state, and the library
    wraps that failure in an error of its own, which holds the interrupt only as context (seen in CI)."""
    from hydra.errors import ConfigCompositionException

    def cut(*args, **kwargs):
        try:
            try:
                raise Interrupted(signum)
            finally:
                None._invalidate_flags_cache()
        except AttributeError as exc:
            raise ConfigCompositionException(str(exc)) from exc

    return cut


def test_a_signal_a_library_wrapped_still_ends_the_command_as_a_signal(cli, monkeypatch):
    import hydra

    import cnnlab

    monkeypatch.setattr(hydra, "compose", cut_by(signal.SIGINT))
    code, _, err = cli("train", *TINY, "-q")
    assert code == 130 and "error" not in err, err  # not "Bad config override(s)" with exit 2
    with pytest.raises(KeyboardInterrupt):  # in a notebook, the interrupt it is
        cnnlab.train(*TINY, quiet=True)
    assert not runs_dir().exists() or not Store().runs()


def test_a_wrapped_signal_during_training_records_the_run_killed():
    from cnnlab.config import compose
    from cnnlab.training import train

    def on_epoch(epoch, metrics):
        cut_by(signal.SIGTERM)()

    with pytest.raises(Interrupted) as raised:
        train(compose([*TINY, "epochs=2"]), on_epoch=on_epoch, quiet=True)
    assert raised.value.exit_code == 143
    record = Store().find("T0")
    assert record.state == "KILLED", (record.state, record.reason)


@pytest.mark.slow
def test_a_copied_store_is_self_contained(cli, tmp_path, monkeypatch):
    assert cli("train", *TINY, "-q")[0] == 0
    original = runs_dir()
    copy = tmp_path / "runs2"
    shutil.copytree(original, copy, symlinks=True)
    before = sorted(p for p in (original / "mlartifacts").rglob("*") if p.is_file())
    monkeypatch.setenv("CNNLAB_RUNS_DIR", str(copy))
    code, out, err = cli("train", *TINY, "-q")
    assert code == 0, err
    assert sorted(p for p in (original / "mlartifacts").rglob("*") if p.is_file()) == before  # untouched
    record = Store().find("T1")
    assert (copy / "mlartifacts").as_uri() in Store().client.get_run(record.run_id).info.artifact_uri
    assert {a for a in Store().list_artifacts(record.run_id)} >= {"checkpoint", "train.log"}
    assert Store().find("T0").run_dir == copy / "synthetic" / "T0"  # the copy's own run directory
    code, out, err = cli("evaluate", "T0", "targets=[blur]")
    assert code == 0 and "target_acc_blur" in out, err


@pytest.mark.slow
def test_a_sigkilled_train_is_marked_killed_by_the_next_command():
    proc = subprocess.Popen([sys.executable, "-m", "cnnlab.cli", "train", *LONG, "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    log = runs_dir() / "synthetic" / "T0" / "train.log"
    wait_for(lambda: log.exists() and "epoch 1/" in log.read_text(), what="the first epoch")
    proc.kill()
    proc.communicate(timeout=30)
    listed = cnnlab("runs", "--status", "KILLED")  # a view shows it KILLED, and writes nothing
    assert listed.returncode == 0 and "T0" in listed.stdout and not listed.stderr, listed.stderr
    record = Store().find("T0")
    assert record.state == "KILLED" and "ended without ending it" in record.reason
    assert Store().client.get_run(record.run_id).info.status == "RUNNING"
    trained = cnnlab("train", *TINY, "-q")  # the next command that writes ends it KILLED, saying so once
    assert "synthetic T0 was left RUNNING by process" in trained.stderr and "marked KILLED" in trained.stderr
    assert Store().client.get_run(record.run_id).info.status == "KILLED"
    assert "note:" not in cnnlab("train", *TINY, "-q").stderr


@pytest.mark.slow
def test_sigkill_of_a_sweep_parent_ends_its_workers_and_the_resume_duplicates_nothing():
    # 20 epochs of about half a second: a trial that started first is still training when the other has done an
    # epoch (with 3, in CI beside another test, T0 had finished by then: the kill found nothing of it to stop)
    args = ["sweep", "lr=0.003,0.001", "data=synthetic", "data.n_train=3000", "data.n_test=100", "epochs=20",
            "batch_size=50", "--workers", "2", "--name", "two", "-q"]
    proc = subprocess.Popen([sys.executable, "-m", "cnnlab.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    logs = [runs_dir() / "synthetic" / "two" / t / "train.log" for t in ("T0", "T1")]
    wait_for(lambda: all(p.exists() and "epoch 1/" in p.read_text() for p in logs), what="both trials training")
    workers = [p for p in children_of(proc.pid) if "multiprocessing" in Path(f"/proc/{p}/cmdline").read_text()]
    assert len(workers) >= 2
    proc.kill()
    proc.communicate(timeout=30)
    wait_for(lambda: not any(alive(p) for p in workers), timeout=30, what="the workers to end")
    # each worker ends its run KILLED as it goes; in CI, beside another test, T0 still read RUNNING here, its owner
    # not yet gone (the processes found above need not be every worker). Wait for that event; a run whose process
    # died first is ended by the next command's first step (upkeep), as `cnnlab sweep` says
    def ended() -> bool:
        Store().upkeep()
        return all(r.state != "RUNNING" for r in Store().runs(sweep="two"))

    wait_for(ended, timeout=120, what="the trials' runs to end")
    children = [r for r in Store().runs(sweep="two")]
    assert sorted((r.id, r.state) for r in children) == [("two/T0", "KILLED"), ("two/T1", "KILLED")]
    resumed = cnnlab(*args, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "two/T0 resumed from its last whole epoch" in resumed.stdout
    runs = Store().runs(sweep="two")  # the killed trials continued in their own runs: nothing twice
    assert sorted((r.id, r.state) for r in runs) == [("two/T0", "FINISHED"), ("two/T1", "FINISHED")]
    parent = Store().runs(parents=True, sweep="two")
    assert [r.state for r in parent if r.is_sweep_parent] == ["FINISHED"]


# ---------------------------------------------------------------- the data cache


def test_import_refuses_another_class_set_and_cleans_temporaries(tmp_path):
    from tests.test_data import make_folder

    from cnnlab import data

    data.import_dataset(make_folder(tmp_path / "three"))
    cache = data.data_root() / data.CACHE_NAME
    before = cache.read_bytes()
    two = make_folder(tmp_path / "two")
    shutil.rmtree(two / "train" / "frog")
    shutil.rmtree(two / "test" / "frog")
    stray = cache.parent / ".cifar10-999999-abc.npz"  # left by an import that was killed
    stray.write_bytes(b"partial")
    with pytest.raises(data.CnnlabError, match="missing frog.*--force"):
        data.import_dataset(two)
    assert cache.read_bytes() == before and not stray.exists()
    assert data.import_dataset(two, force=True)["classes"] == ["cat", "dog"]


def test_garbage_cache_and_truncated_zip_are_clean_errors(cli, tmp_path):
    from tests.test_data import make_folder

    folder = make_folder(tmp_path / "src")
    archive = tmp_path / "c.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in folder.rglob("*.png"):
            z.write(f, f.relative_to(folder).as_posix())
    archive.write_bytes(archive.read_bytes()[:len(archive.read_bytes()) // 2])
    code, _, err = cli("data", "import", str(archive))
    assert code == 2 and "zip file that cannot be read to its end" in err
    cache = Path(os.environ["CNNLAB_DATA_DIR"]) / "cifar10.npz"
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_bytes(b"garbage" * 100)
    code, _, err = cli("train", "epochs=1", "-q")
    assert code == 2 and "data cache" in err and "unreadable" in err and "Traceback" not in err
    code, _, err = cli("data", "info")
    assert code == 2 and "unreadable" in err


# ---------------------------------------------------------------- injection and names


@pytest.mark.slow
def test_names_are_never_formulas(cli, tmp_path):
    evil = '=HYPERLINK("evil.example","click me")'
    assert cli("sweep", "lr=0.003,0.001", *TINY, "--name", evil, "-q")[0] == 0
    assert cli("train", *TINY, "experiment='=2+5'", "-q")[0] == 0
    out = tmp_path / "log.xlsx"
    assert cli("export-log", str(out), "--experiment", "synthetic", "--experiment", "=2+5")[0] == 0
    from openpyxl import load_workbook

    wb = load_workbook(out)
    cells = [c for ws in wb for row in ws.iter_rows() for c in row]
    assert not [c.coordinate for c in cells if c.data_type == "f"]
    assert any(isinstance(c.value, str) and c.value.startswith(evil) for c in cells)
    csv = tmp_path / "log.csv"
    assert cli("export-log", str(csv), "--experiment", "=2+5", "--experiment", "synthetic")[0] == 0
    text = csv.read_text()
    assert f"'{evil}".replace('"', '""') in text and "\n=" not in text and ",=" not in text


def test_names_stay_inside_runs(cli, tmp_path):
    outside = tmp_path / "abs"
    assert cli("train", *TINY, f"experiment={outside}", "run_name=../../escape", "-q")[0] == 0
    assert cli("sweep", "lr=0.003,0.001", *TINY, "--name", "../../../sweep-escape", "-q")[0] == 0
    made = [p for p in tmp_path.rglob("*") if p.is_dir()]
    assert not outside.exists() and not [p for p in made if "escape" in p.name and runs_dir() not in p.parents]
    exp = Store().experiments()
    assert str(outside) in exp  # the store keeps the name as given
    assert [r.name for r in Store().runs([str(outside)])] == ["../../escape"]


def test_quotes_in_names(cli):
    assert cli("sweep", "lr=0.003,0.001", *TINY, "--name", "it's", "-q")[0] == 0
    code, out, err = cli("runs", "--sweep", "it's")
    assert code == 0 and len(out.strip().splitlines()) == 3, err
    code, _, err = cli("runs", "--sweep", "a'b\"c")
    assert code == 2 and "No runs match" in err
    code, _, err = cli("evaluate", "x'y")
    assert code == 2 and "No run \"x'y\"" in err and "Traceback" not in err


def test_unknown_keys_are_refused_with_or_without_plus(cli):
    for override in ("+dropuot=0.5", "dropuot=0.5", "+data.n_trian=5"):
        code, _, err = cli("train", override, "--cfg")
        assert code == 2 and "Did you mean" in err and "+" not in err.split("Did you mean")[1], err
    assert not (runs_dir() / "mlflow.db").exists()


# ---------------------------------------------------------------- hangs


@pytest.mark.slow
def test_a_server_that_does_not_answer_fails_fast(cli, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    code, _, err = cli("train", *TINY, "-q")
    assert code == 2 and "http://127.0.0.1:9 does not answer" in err
    listener = socket.socket()  # accepts connections, never answers
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    try:
        uri = f"http://127.0.0.1:{listener.getsockname()[1]}"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        start = time.perf_counter()
        code, _, err = cli("runs")
        assert code == 2 and f"{uri} does not answer" in err and time.perf_counter() - start < 30
    finally:
        listener.close()


def test_a_storage_without_its_driver_leaves_nothing_running(cli):
    code, _, err = cli("sweep", "--strategy", "optuna", "lr=tag(log,interval(1e-4,1e-2))", *TINY,
                       "--storage", "mysql://nobody@127.0.0.1/nowhere", "-q")
    assert code == 2 and "driver is not installed" in err and "Traceback" not in err
    assert not (runs_dir() / "mlflow.db").exists() or not Store().runs(states=["RUNNING"], parents=True)


# ---------------------------------------------------------------- clean messages instead of tracebacks


@pytest.mark.parametrize("args, needle", [
    (["train", "lr=inf"], "lr=inf is not a finite number"),
    (["train", "width=inf"], "width=inf is not a finite number"),
    (["describe", "image_size=abc"], "image_size=abc: expected an integer"),
    (["describe", "num_classes=0"], "num_classes=0: expected an integer"),
    (["describe", "width=inf"], "width=inf is out of range"),
    (["sweep", "--strategy", "optuna", "lr=tag(log,interval(0,0.1))", "epochs=1"], "a log interval needs low > 0"),
    (["sweep", "--strategy", "random", "lr=interval(0.1,0.001)", "epochs=1"], "an interval needs low < high"),
    (["sweep", "lr=0.1,0.01", "--workers", "0"], "--workers 0: give 1 or more"),
    (["sweep", "lr=0.1,0.01", "--workers", "-5"], "--workers -5: give 1 or more"),
])
def test_bad_input_is_one_clean_message(cli, args, needle):
    code, out, err = cli(*args)
    assert code == 2 and needle in err and "Traceback" not in err + out, err


def test_a_damaged_checkpoint_is_a_clean_error(cli):
    assert cli("train", *TINY, "-q")[0] == 0
    best = runs_dir() / "synthetic" / "T0" / "best.pt"
    good = best.read_bytes()
    import torch

    state = torch.load(best, weights_only=True)
    state["model"] = {k: v[..., :1] for k, v in state["model"].items()}  # tampered: other shapes
    torch.save(state, best)
    for content in (None, good[:len(good) // 2], b"garbage"):
        if content is not None:
            best.write_bytes(content)
        code, _, err = cli("evaluate", "T0", "targets=[blur]")
        assert code == 2 and "checkpoint" in err and "damaged" in err and "Traceback" not in err, err


def test_export_onto_a_directory_or_an_unwritable_place(cli, tmp_path):
    assert cli("train", *TINY, "-q")[0] == 0
    (tmp_path / "dir.xlsx").mkdir()
    code, _, err = cli("export-log", str(tmp_path / "dir.xlsx"), "--force")
    assert code == 2 and "is a directory" in err
    code, _, err = cli("export-log", "/proc/x.csv")
    assert code == 2 and "Cannot write /proc/x.csv" in err and "Traceback" not in err


def test_a_read_only_runs_directory_is_a_clean_error(cli, monkeypatch):
    monkeypatch.setenv("CNNLAB_RUNS_DIR", "/proc/cnnlab-runs")
    code, _, err = cli("train", *TINY, "-q")
    assert code == 2 and "not writable" in err and "Traceback" not in err


def test_nan_validation_loss_is_divergence(cli, monkeypatch):
    import cnnlab.engine as engine

    real = engine.evaluate

    def overflowing(model, batches, *args, **kwargs):
        return real(model, batches, *args, **kwargs)._replace(loss=float("nan"))

    monkeypatch.setattr(engine, "evaluate", overflowing)
    code, _, err = cli("train", *TINY, "-q")
    assert code == 1 and "val loss became nan" in err
    assert Store().find("T0").state == "FAILED"


@pytest.mark.slow
def test_a_huge_grid_says_so_and_plans_in_milliseconds_per_trial(cli):
    space = [f"{k}={','.join(str(v) for v in values)}" for k, values in
             (("lr", [1e-4, 3e-4, 1e-3, 3e-3]), ("dropout", [0, 0.1, 0.2, 0.3]), ("weight_decay", [0, 1e-4, 5e-4, 1e-3]),
              ("label_smoothing", [0, 0.05, 0.1, 0.2]), ("seed", [0, 1, 2, 3]))]  # one model and batch to time
    code, out, err = cli("sweep", *space, "--dry-run")
    assert code == 0, err
    assert "note: 1,024 trials" in err and out.count("\n") >= 1024


@pytest.mark.slow
def test_reusing_a_sweep_name_with_another_space_is_refused(cli):
    assert cli("sweep", "lr=0.003,0.001", *TINY, "--name", "mine", "-q")[0] == 0
    code, _, err = cli("sweep", "dropout=0,0.5", *TINY, "--name", "mine", "-q")
    assert code == 2 and "already exists with another spec" in err and "mine-2" in err
    assert len(Store().runs(sweep="mine")) == 2
    assert cli("sweep", "lr=0.003,0.001", *TINY, "--name", "mine", "-q")[0] == 0  # the same spec resumes


def test_a_relative_sqlite_uri_is_the_working_directorys(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mlflow.db")  # as MLflow's docs write it
    code, _, err = cli("train", *TINY, "-q")
    assert code == 0, err
    assert (tmp_path / "mlflow.db").is_file() and (tmp_path / "mlartifacts").is_dir()
    code, out, err = cli("runs")
    assert code == 0 and out.splitlines()[1].startswith("T0\t"), err


def _disk_full(*args, **kwargs):
    import errno

    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_is_one_paragraph_and_reading_still_works(cli, monkeypatch):
    """The run that hits a full disk ends in one paragraph; every command that reads goes on working, and shows that
    run KILLED (its process is gone) though the store cannot mark it so yet; the next command that writes does."""
    assert cli("train", *TINY, "-q")[0] == 0
    with monkeypatch.context() as full:
        full.setattr(Writer, "log_metrics", _disk_full)
        full.setattr(Writer, "end", _disk_full)
        code, out, err = cli("train", *TINY, "-q")
        assert code == 1 and "is full" in err and "Free some space" in err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
        # the second run is left RUNNING by a process that is gone (as a SIGKILL would leave it)
        record = Store().find("T1")
        Store().client.set_tag(record.run_id, Tag.OWNER, f"{socket.gethostname()} 999999 1")
        code, out, err = cli("runs", "--format", "tsv")
        assert code == 0 and not err, err  # a view writes nothing, so the full disk does not show
        assert "T0" in out and "T1\t" in out and "KILLED" in out
        assert Store().client.get_run(record.run_id).info.status == "RUNNING"  # shown so, not written
        code, out, err = cli("train", *TINY, "-q")  # a command that writes tries to end it, and says it cannot
        assert code == 1 and "is full: the store is read as it is" in err, err
    code, out, err = cli("train", *TINY, "-q")
    assert code == 0 and "marked KILLED" in err, err
    assert Store().client.get_run(record.run_id).info.status == "KILLED"


@pytest.fixture
def read_only_after(tmp_path):
    """A small tmpfs holding the runs directory, remounted read-only when the test says so (needs root and
    mount(8); skipped elsewhere: there, a read-only directory cannot be made for root to meet)."""
    mount = tmp_path / "mnt"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "none", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    try:
        yield mount, lambda: subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
def test_a_read_only_runs_directory_is_one_paragraph_for_sweep_and_report_still_writes(read_only_after, tmp_path):
    mount, make_read_only = read_only_after
    env = {**os.environ, "CNNLAB_RUNS_DIR": str(mount / "runs")}

    def cnnlab(*args):  # in processes of their own: a store left open here would keep the mount busy
        return subprocess.run([sys.executable, "-m", "cnnlab.cli", *args], env=env, capture_output=True, text=True)

    assert cnnlab("train", *TINY, "-q").returncode == 0
    make_read_only()
    swept = cnnlab("sweep", *TINY, "lr=0.01,0.02", "-q")
    assert swept.returncode == 1 and "is read-only" in swept.stderr and "Traceback" not in swept.stderr
    assert len(swept.stderr.strip().splitlines()) == 1
    reported = cnnlab("report", "T0", "-o", str(tmp_path / "r.html"))
    assert reported.returncode == 0, reported.stderr
    assert (tmp_path / "r.html").stat().st_size > 1000
    listed = cnnlab("runs", "--format", "tsv")
    assert listed.returncode == 0 and "T0" in listed.stdout


def test_no_name_becomes_a_file_name_that_reads_as_an_option():
    """A report, run or experiment directory named `-rf` or `--force` would be read as an option by the next
    shell command that names it."""
    from types import SimpleNamespace

    from cnnlab.reporting import default_path
    from cnnlab.schema import safe_name

    for name in ("-rf", "--force", "-"):
        assert not safe_name(name).startswith("-"), name
        assert safe_name(name) != safe_name("rf") or name != "-rf"  # changed names keep apart (a hash)
    page = default_path(SimpleNamespace(kind="run", name="T0", record=SimpleNamespace(experiment="-rf")))
    assert not page.name.startswith("-")


@pytest.mark.parametrize("status, body", [(404, b"Not Found"), (200, b"<html>a web page</html>")])
def test_a_tracking_uri_that_is_not_an_mlflow_server_is_one_paragraph(cli, monkeypatch, status, body):
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            self.send_response(status)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{server.server_address[1]}/not-mlflow")
        code, _, err = cli("runs")
        assert code == 2 and "answers, but not as an MLflow tracking server does" in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1
    finally:
        server.shutdown()
        server.server_close()
