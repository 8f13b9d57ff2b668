"""`make bench ARGS=faults`: the store under the faults a user meets (issue 14), many rounds each.

(a) four `cnnlab train` at once on a fresh store; (b) Ctrl-C at a random moment of a first train;
(c) SIGKILL of a `--workers 2` sweep parent, then the same command again; (d) SIGKILL of a train,
then the next command. Each round runs in a fresh runs directory on synthetic data and counts runs
recorded, lost, duplicated, left RUNNING, processes left alive and stores left unusable.

(e) hostile archives for `cnnlab data import` (tests/bench/archives.py: traversal and special members,
1 GiB decompression bombs in .tar.gz and .zip, a 12000x12000 PNG), each imported once over a good
cache: its exit code, what it said, whether the cache survived, and the import's max RSS (goal: under
300 MB whatever the archive says).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

TINY = ["data=synthetic", "data.n_train=300", "data.n_test=100", "epochs=1", "batch_size=50", "arch=lenet5"]
SLOW = ["data=synthetic", "data.n_train=3000", "data.n_test=100", "batch_size=50"]
MARKERS = ("cnnlab", "multiprocessing.spawn")


def as_from_a_terminal() -> None:
    """In the child before exec: SIGINT and SIGQUIT at their defaults, as for a command typed in a terminal. A
    bench started in the background of a script inherits them ignored, and Ctrl-C would then test nothing."""
    for sig in (signal.SIGINT, signal.SIGQUIT):
        signal.signal(sig, signal.SIG_DFL)


def _cli(env, *args, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "cnnlab.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=as_from_a_terminal, **kwargs)


def _ours(runs: Path) -> list:
    """PIDs of live processes of this round (their command line or environment names its runs directory)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if int(proc.name) == os.getpid() or (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            if str(runs).encode() in (proc / "environ").read_bytes() and \
                    any(m.encode() in (proc / "cmdline").read_bytes() for m in MARKERS):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def _wait(condition, timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


def _inspect(env, runs: Path, expected_finished: int, tally: Counter) -> None:
    """Open the store as the next command would and count what it holds."""
    alive = _ours(runs)
    if alive and not _wait(lambda: not _ours(runs), 30):
        tally["processes left alive"] += len(_ours(runs))
        for pid in _ours(runs):
            os.kill(pid, signal.SIGKILL)
    listed = subprocess.run([sys.executable, "-m", "cnnlab.cli", "runs", "--status", "FINISHED"], env=env,
                            capture_output=True, text=True)
    empty = "No runs" in listed.stderr or "Unknown experiment" in listed.stderr  # opened fine, holds none yet
    if listed.returncode != 0 and not empty:
        tally["stores left unusable"] += 1
        return
    from cnnlab.record import Store

    os.environ["CNNLAB_RUNS_DIR"] = str(runs)
    try:
        if not (runs / "mlflow.db").exists():
            tally["runs lost"] += expected_finished
            return
        records = Store().runs()
    finally:
        os.environ.pop("CNNLAB_RUNS_DIR")
    finished = [r for r in records if r.state == "FINISHED"]
    tally["runs recorded"] += len(records)
    tally["runs lost"] += max(0, expected_finished - len({r.trial_key for r in finished}))
    tally["runs duplicated"] += sum(n - 1 for n in Counter(r.id for r in records).values() if n > 1)
    tally["runs duplicated"] += sum(n - 1 for n in Counter((r.sweep, r.trial_key) for r in finished
                                                           if r.sweep).values() if n > 1)
    tally["runs left RUNNING"] += sum(r.state == "RUNNING" for r in records)


def _failed(tally: Counter, stderr: str) -> None:
    """Count a command that failed, keeping the last line it said."""
    tally["commands failed"] += 1
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    tally[f"why: {(lines or ['(nothing)'])[-1][:200]}"] += 1


def four_at_once(env, runs: Path, rng, tally: Counter) -> None:
    procs = [_cli(env, "train", *TINY, f"seed={i}", "-q") for i in range(4)]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        if proc.returncode != 0:
            _failed(tally, err)
    _inspect(env, runs, 4, tally)


def ctrl_c_first_train(env, runs: Path, rng, tally: Counter) -> None:
    proc = _cli(env, "train", *TINY, "-q")
    time.sleep(rng.uniform(0.2, 3.0))
    proc.send_signal(signal.SIGINT)
    try:
        proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        tally["commands hung"] += 1
        proc.kill()
        proc.communicate()
    if proc.returncode not in (130, -signal.SIGINT):
        tally["Ctrl-C not obeyed"] += 1
    again = subprocess.run([sys.executable, "-m", "cnnlab.cli", "train", *TINY, "seed=9", "-q"], env=env,
                           capture_output=True, text=True)
    if again.returncode != 0:
        _failed(tally, again.stderr)
    _inspect(env, runs, 1, tally)


def kill_sweep_parent(env, runs: Path, rng, tally: Counter) -> None:
    args = ["sweep", "lr=0.003,0.001", *SLOW, "epochs=3", "--workers", "2", "--name", "faults", "-q"]
    proc = _cli(env, *args)
    logs = [runs / "synthetic" / "faults" / t / "train.log" for t in ("T0", "T1")]
    _wait(lambda: all(p.exists() and "epoch 1/" in p.read_text() for p in logs), 300)
    time.sleep(rng.uniform(0, 1.5))
    proc.kill()
    proc.communicate(timeout=60)
    again = subprocess.run([sys.executable, "-m", "cnnlab.cli", *args], env=env, capture_output=True, text=True)
    if again.returncode != 0:
        _failed(tally, again.stderr)
    _inspect(env, runs, 2, tally)


def kill_train(env, runs: Path, rng, tally: Counter) -> None:
    proc = _cli(env, "train", *SLOW, "epochs=30", "-q")
    log = runs / "synthetic" / "T0" / "train.log"
    _wait(lambda: log.exists() and "epoch 1/" in log.read_text(), 300)
    time.sleep(rng.uniform(0, 2))
    proc.kill()
    proc.communicate(timeout=60)
    _inspect(env, runs, 0, tally)


CASES = {"(a) 4 trains at once on a fresh store": four_at_once,
         "(b) Ctrl-C at a random moment of a first train": ctrl_c_first_train,
         "(c) SIGKILL of a --workers 2 sweep parent, then resume": kill_sweep_parent,
         "(d) SIGKILL of a train, then the next command": kill_train}


def _import_rss(env, path: Path) -> tuple:
    """(exit code, last line of stderr, max RSS in MB) of `cnnlab data import PATH`."""
    proc = subprocess.Popen([sys.executable, "-m", "cnnlab.cli", "data", "import", str(path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    lines = [line for line in err.strip().splitlines() if line.strip()] or ["(nothing)"]
    return proc.returncode, lines[-1][:160], usage.ru_maxrss / 1024


def bench_archives(report) -> None:
    from . import archives

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "CNNLAB_DATA_DIR": str(tmp / "data"), "CNNLAB_RUNS_DIR": str(tmp / "runs")}
        good = archives.traversal(tmp / "good.tar.gz", per_class=10)
        subprocess.run([sys.executable, "-m", "cnnlab.cli", "data", "import", str(good)], env=env, check=True,
                       capture_output=True)
        cache = tmp / "data" / "cifar10.npz"
        before = cache.read_bytes()
        cases = {"traversal, FIFO and symlink members": archives.traversal(tmp / "hostile.tar.gz"),
                 "1 GiB member in a .tar.gz": archives.bomb(tmp / "bomb.tar.gz", 1 << 30),
                 "1 GiB member in a .zip": archives.bomb(tmp / "bomb.zip", 1 << 30),
                 "12000x12000 PNG": archives.pixel_bomb(tmp / "pixels", 12000)}
        for label, path in cases.items():
            size = path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*.png"))
            rc, said, rss = _import_rss(env, path)
            kept = cache.read_bytes() == before
            report.add(f"faults_archive_{label.split()[0]}", {"rc": rc, "max_rss_mb": round(rss), "cache_kept": kept,
                                                                "input_bytes": size, "said": said},
                       f"(e) {label} ({size / 1e6:.2f} MB): rc {rc}, max RSS {rss:.0f} MB, cache "
                       f"{'kept' if kept else 'REPLACED'}; {said}")


def bench_faults(report, accuracy: bool = False) -> None:
    rounds = int(os.environ.get("CNNLAB_FAULT_ROUNDS", 20))
    only = os.environ.get("CNNLAB_FAULT_CASES", "abcde")  # e.g. "b": that scenario alone
    rng = random.Random(0)
    if "e" in only:
        bench_archives(report)
    for label, case in CASES.items():
        if label[1] not in only:
            continue
        tally: Counter = Counter()
        start = time.perf_counter()
        for _ in range(rounds):
            with tempfile.TemporaryDirectory() as tmp:
                runs = Path(tmp) / "runs"
                env = {**os.environ, "CNNLAB_RUNS_DIR": str(runs), "CNNLAB_DATA_DIR": str(Path(tmp) / "data")}
                case(env, runs, rng, tally)
        keys = ("runs recorded", "runs lost", "runs duplicated", "runs left RUNNING", "processes left alive",
                "stores left unusable", "commands failed", "commands hung", "Ctrl-C not obeyed")
        reasons = {k: n for k, n in tally.items() if k.startswith("why: ")}
        report.add(f"faults_{case.__name__}", {**{k: tally[k] for k in keys}, "failures": reasons},
                   f"{label}, {rounds} rounds ({time.perf_counter() - start:.0f} s): "
                   + ", ".join(f"{k} {tally[k]}" for k in keys)
                   + "".join(f"; {n} x {k}" for k, n in reasons.items()))
