"""`make bench ARGS=team`: the same 40-trial tiny Optuna sweep on the local store (SQLite + a journal), on a
team's servers with one worker and with two, and on the servers with two workers of which three get SIGKILL
mid-sweep (each replaced by a new joiner). Every worker is its own `cnnlab sweep` process in its own working
directory, with one CPU thread (threads=1), as workers on separate machines would be; synthetic data.

`running_team` (also the tests' fixture) runs `cnnlab team up` on free loopback ports in a directory under
/var/tmp (PostgreSQL runs as user postgres when we are root, and must reach it).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

TRIALS = 40
SWEEP = ["--strategy", "optuna", "--trials", str(TRIALS), "lr=tag(log,interval(1e-4,1e-2))", "data=synthetic",
         "data.n_train=2000", "data.n_test=100", "epochs=3", "batch_size=100", "threads=1", "experiment=bench-team",
         "-q"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_team():
    """`cnnlab team up` in its own process group; yields (team directory, the client environment of secrets.env,
    the path of its log); `cnnlab team down` after, and its group killed if it lingers."""
    root = Path(tempfile.mkdtemp(prefix="cnnlab-team-", dir="/var/tmp"))
    root.chmod(0o755)
    directory, log_path = root / "team", root / "up.log"
    log = open(log_path, "wb")
    up = subprocess.Popen([sys.executable, "-m", "cnnlab.cli", "team", "up", "--dir", str(directory),
                           "--port", str(_free_port()), "--pg-port", str(_free_port())],
                          stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 180
        while not (directory / "team.json").exists():
            if up.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"cnnlab team up did not come up:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)
        env = {}
        for line in (directory / "secrets.env").read_text().splitlines():
            if "=" in line and not line.startswith("#"):
                key, value = line.split("=", 1)
                env[key] = value
        env.pop("CNNLAB_TEAM_SECRET_KEY", None)
        yield directory, env, log_path
        down = subprocess.run([sys.executable, "-m", "cnnlab.cli", "team", "down", "--dir", str(directory)],
                              capture_output=True, text=True, timeout=120)
        if down.returncode != 0:
            raise RuntimeError(f"cnnlab team down failed: {down.stderr}")
        up.wait(timeout=60)
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def _worker(workdir: Path, env: dict, *args: str) -> subprocess.Popen:
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **env, "CNNLAB_RUNS_DIR": str(workdir / "runs"), "CNNLAB_DATA_DIR": str(workdir / "data")}
    out = open(workdir / "out.txt", "ab")
    return subprocess.Popen([sys.executable, "-m", "cnnlab.cli", "sweep", *args], cwd=workdir, env=env,
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


@contextmanager
def _client(env: dict):
    """This process as a client of the team's servers, for the length of the block."""
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        from cnnlab.record import Store

        yield Store(create=False)
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def _mid_trial(env: dict, name: str, procs: dict, timeout: float = 120):
    """A worker (its Popen) that is training a trial which has logged an epoch, or None."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        with _client(env) as store:
            if "bench-team" in store.experiments():
                for r in store.runs(["bench-team"], sweep=name, states=["RUNNING"]):
                    pid = int(r.tags.get("cnnlab.owner", "- 0").split()[1])
                    if "train_loss" in r.metrics and pid in procs and procs[pid][0].poll() is None:
                        return procs[pid]
        time.sleep(0.3)
    return None


def _sweep(tmp: Path, env: dict, name: str, workers: int, kills: int = 0) -> float:
    """Wall seconds of the sweep `name` with `workers` processes (the first starts it, the others join); with
    `kills`, that many times a worker that is mid-trial gets SIGKILL, its working directory is deleted (as if its
    machine were gone: nobody resumes from its checkpoint) and a new joiner takes its place."""
    start = time.perf_counter()
    first = _worker(tmp / f"{name}-w0", env, *SWEEP, "--name", name)
    procs = {first.pid: (first, tmp / f"{name}-w0")}
    time.sleep(3)  # the first start makes the study; the others join it
    for i in range(1, workers):
        p = _worker(tmp / f"{name}-w{i}", env, "--join", name, "-q")
        procs[p.pid] = (p, tmp / f"{name}-w{i}")
    for k in range(kills):
        time.sleep(random.uniform(1, 4))
        found = _mid_trial(env, name, procs)
        if found is None:
            break
        victim, workdir = found
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait()
        shutil.rmtree(workdir)
        p = _worker(tmp / f"{name}-r{k}", env, "--join", name, "-q")
        procs[p.pid] = (p, tmp / f"{name}-r{k}")
    for p, _ in procs.values():
        p.wait(timeout=3600)
    return time.perf_counter() - start


def _count(env: dict, name: str) -> dict:
    """What the record and the study hold of sweep `name`."""
    import optuna
    from optuna.trial import TrialState

    from cnnlab.sweeps.strategies.optuna_search import storage

    with _client(env) as store:
        runs = store.runs(["bench-team"], sweep=name, parents=True)
        study = optuna.load_study(study_name=name, storage=storage(env["CNNLAB_STORAGE"]))
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    finished = [r for r in runs if not r.is_sweep_parent and r.state == "FINISHED"]
    keys = [r.trial_key for r in finished]
    return {"completed": len(complete), "lost": TRIALS - len(complete),
            "duplicated": len(keys) - len(set(keys)) + max(0, len(finished) - len(complete)),
            "running": sum(r.state == "RUNNING" for r in runs),
            "killed_runs": sum(r.state == "KILLED" for r in runs if not r.is_sweep_parent),
            "retried": sum(t.system_attrs.get("failed_trial") is not None for t in complete)}


def bench_team(report, accuracy: bool = False) -> None:
    """Issue 15: what the servers cost per trial, what a second worker buys, and what 3 kills lose."""
    from .common import matmul_peak

    report.add("peak", {"fp32": round(matmul_peak("float32")), "bf16": round(matmul_peak("bfloat16"))},
               f"matmul peak here: fp32 {matmul_peak('float32'):.0f} GFLOP/s, bf16 {matmul_peak('bfloat16'):.0f} "
               "GFLOP/s (2 threads)")
    tmp = Path(tempfile.mkdtemp(prefix="cnnlab-bench-team-"))
    try:
        start = time.perf_counter()
        _worker(tmp / "sqlite", {}, *SWEEP, "--name", "sqlite").wait()
        sqlite = time.perf_counter() - start
        report.add("sqlite_1", {"seconds": round(sqlite, 1), "trials_per_hour": round(TRIALS * 3600 / sqlite)},
                   f"local store (SQLite + journal), 1 worker: {TRIALS} trials in {sqlite:.0f} s, "
                   f"{TRIALS * 3600 / sqlite:.0f} trials/hour")
        with running_team() as (directory, env, log):
            env = {**env, "CNNLAB_TRIAL_HEARTBEAT": "5"}
            results = {}
            for workers in (1, 2):
                name = f"server-{workers}"
                seconds = _sweep(tmp, {**env}, name, workers)
                results[workers] = seconds
                counts = _count(env, name)
                report.add(f"server_{workers}", {"seconds": round(seconds, 1), **counts,
                                                 "trials_per_hour": round(TRIALS * 3600 / seconds)},
                           f"team servers, {workers} worker(s): {TRIALS} trials in {seconds:.0f} s, "
                           f"{TRIALS * 3600 / seconds:.0f} trials/hour; completed {counts['completed']}")
            overhead = (results[1] - sqlite) / TRIALS
            report.add("overhead_per_trial", round(overhead, 2),
                       f"the servers' overhead: {overhead:.2f} s per trial ({results[1]:.0f} s against {sqlite:.0f} s "
                       f"for {TRIALS} trials, one worker each); a second worker: {results[1] / results[2]:.2f}x the "
                       "throughput of one")
            seconds = _sweep(tmp, env, "kills", 2, kills=3)
            counts = _count(env, "kills")
            met = counts["lost"] == 0 and counts["duplicated"] == 0 and counts["running"] == 0
            report.add("kills", {"seconds": round(seconds, 1), **counts},
                       f"2 workers, 3 of them SIGKILLed mid-trial (their directories deleted, each replaced by a new joiner): {TRIALS} trials in "
                       f"{seconds:.0f} s; completed {counts['completed']}, lost {counts['lost']}, duplicated "
                       f"{counts['duplicated']}, runs left RUNNING {counts['running']}, killed runs "
                       f"{counts['killed_runs']}, trials retried {counts['retried']} (target 0 lost, 0 duplicated, "
                       f"0 RUNNING: {'met' if met else 'NOT met'})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
