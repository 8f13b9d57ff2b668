"""Team mode on real engines: `cnnlab team up` (PostgreSQL from the system's package, an MLflow server with
basic auth) on loopback ports, and `cnnlab sweep` workers in separate working directories that share nothing
but its URLs and credentials.

PostgreSQL runs as user postgres when the tests run as root: its directory is made under /var/tmp, which that
user can reach (pytest's own temporary directories are private). Without PostgreSQL these tests are skipped,
except where CNNLAB_REQUIRE_TEAM=1 (CI installs PostgreSQL and sets it, so they always run there).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from tests.bench.team import running_team
from tests.helpers import wait_for

pytestmark = [pytest.mark.team, pytest.mark.slow]

TINY = ["data=synthetic", "data.n_train=300", "data.n_test=100", "batch_size=100"]
SPACE = "lr=tag(log,interval(1e-4,1e-2))"


def _postgres_missing() -> bool:
    from cnnlab.errors import CnnlabError
    from cnnlab.team import pg_program

    try:
        pg_program("initdb")
        return False
    except CnnlabError:
        return True


@pytest.fixture(scope="module")
def team():
    """`cnnlab team up` for the module's tests (the bench's running_team); `cnnlab team down` after them."""
    if _postgres_missing():
        if os.environ.get("CNNLAB_REQUIRE_TEAM") == "1":
            pytest.fail("PostgreSQL is not installed, and CNNLAB_REQUIRE_TEAM=1 says these tests must run")
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    with running_team() as (directory, env, log):
        yield {"dir": directory, "env": env, "log": log}
    assert not (directory / "team.json").exists()


def _env(team, workdir: Path, **extra) -> dict:
    env = {**os.environ, **team["env"], "CNNLAB_RUNS_DIR": str(workdir / "runs"),
           "CNNLAB_DATA_DIR": str(workdir / "data"), "CNNLAB_TRIAL_HEARTBEAT": "1", **extra}
    return env


def _worker(team, workdir: Path, *args: str) -> subprocess.Popen:
    """`cnnlab sweep ARGS` in its own working directory and process group, output to workdir/out.txt."""
    workdir.mkdir(parents=True, exist_ok=True)
    out = open(workdir / "out.txt", "wb")
    return subprocess.Popen([sys.executable, "-m", "cnnlab.cli", "sweep", *args, "-q"], cwd=workdir,
                            env=_env(team, workdir), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _finish(proc: subprocess.Popen, workdir: Path, timeout: float = 400) -> str:
    try:
        proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return (workdir / "out.txt").read_text(errors="replace")


@pytest.fixture
def server(team, monkeypatch):
    """This test process as a client of the team's servers."""
    for key, value in team["env"].items():
        monkeypatch.setenv(key, value)
    from cnnlab.record import Store

    return Store(create=False)


def _study(team, name: str):
    import optuna

    from cnnlab.sweeps.strategies.optuna_search import storage

    return optuna.load_study(study_name=name, storage=storage(team["env"]["CNNLAB_STORAGE"]))


def _sweep_runs(store, name: str):
    """(parents, children) of sweep `name` on the server."""
    if "synthetic" not in store.experiments():  # nothing recorded yet
        return [], []
    runs = store.runs(["synthetic"], sweep=name, parents=True)
    parents = [r for r in runs if r.is_sweep_parent]
    children = [r for r in runs if r.sweep == name and not r.is_sweep_parent]
    return parents, children


def _complete(study) -> list:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def _cmdlines() -> str:
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            pass
    return "\n".join(found)


def test_two_first_starts_at_once_make_one_sweep_that_both_work_on(team, server, tmp_path):
    args = ["--strategy", "optuna", "--trials", "6", SPACE, *TINY, "epochs=2", "--name", "pair"]
    a = _worker(team, tmp_path / "a", *args)
    b = _worker(team, tmp_path / "b", *args)
    listed = []  # every process's command line, read over and over until both workers train (or are done)

    def both_started() -> bool:
        listed.append(_cmdlines())
        return all(p.poll() is not None or any((tmp_path / w).rglob("train.log")) for p, w in ((a, "a"), (b, "b")))

    wait_for(both_started, timeout=300, what="both workers to start training")
    secrets = [team["env"]["PGPASSWORD"], team["env"]["MLFLOW_TRACKING_PASSWORD"]]
    assert not any(s in text for text in listed for s in secrets)  # no password on any command line (`ps`)
    out_a, out_b = _finish(a, tmp_path / "a"), _finish(b, tmp_path / "b")
    assert a.returncode == 0 and b.returncode == 0, out_a + out_b
    assert "Traceback" not in out_a + out_b

    assert len(_complete(_study(team, "pair"))) == 6  # one study: two would hold 6 each
    parents, children = _sweep_runs(server, "pair")
    assert len(parents) == 1 and parents[0].state == "FINISHED"
    finished = [r for r in children if r.state == "FINISHED"]
    assert sorted(r.trial for r in finished) == sorted(f"T{t.number}" for t in _complete(_study(team, "pair")))
    owners = {r.tags["cnnlab.owner"].split()[1] for r in finished}
    assert owners == {str(a.pid), str(b.pid)}  # both trained some of it
    assert all(r.parent_run_id == parents[0].run_id for r in children)

    # the checkpoint went to the server: a third directory that trained nothing evaluates it
    best = finished[0]
    code = subprocess.run([sys.executable, "-m", "cnnlab.cli", "evaluate", best.run_id[:12], "targets=[blur]"],
                          cwd=tmp_path, env=_env(team, tmp_path / "c"), capture_output=True, text=True, timeout=300)
    assert code.returncode == 0, code.stderr
    assert "target_acc_blur" in code.stdout

    # the views read the server as they read a local store; no password reaches the record or the workbook
    workbook = tmp_path / "log.xlsx"
    for command in (["runs", "--sweep", "pair"], ["export-log", str(workbook)], ["ui"]):
        done = subprocess.run([sys.executable, "-m", "cnnlab.cli", *command], cwd=tmp_path,
                              env=_env(team, tmp_path / "c"), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert not any(s in done.stdout + done.stderr for s in secrets)
    assert "pair/T" in subprocess.run([sys.executable, "-m", "cnnlab.cli", "runs", "--sweep", "pair"], cwd=tmp_path,
                                      env=_env(team, tmp_path / "c"), capture_output=True, text=True).stdout
    with zipfile.ZipFile(workbook) as z:
        text = "".join(z.read(n).decode(errors="replace") for n in z.namelist() if n.endswith(".xml"))
    assert "pair/T" in text and not any(s in text for s in secrets)
    for record in children + parents:
        values = " ".join(map(str, [*record.params.values(), *record.tags.values()]))
        assert not any(s in values for s in secrets)
    logs = [team["log"], team["dir"] / "mlflow.log", team["dir"] / "postgres.log",
            *(tmp_path / w / "out.txt" for w in "ab"), *tmp_path.glob("*/runs/**/*.log")]
    assert len(logs) > 5
    for log in logs:
        assert not any(s in log.read_text(errors="replace") for s in secrets), log


def _fresh_database(name: str) -> str:
    """A new, empty database on the team's PostgreSQL (its URL and password from the `server` fixture's
    environment); its URL."""
    import sqlalchemy

    server = os.environ["CNNLAB_STORAGE"].rsplit("/", 1)[0]
    engine = sqlalchemy.create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return f"{server}/{name}"


def test_openers_of_a_fresh_database_take_turns_making_optunas_tables(team, server):
    """Two workers starting at once on a fresh database both made Optuna's tables, and one failed ("type
    studydirection already exists"; CI saw it): an opener waits while another holds the tables lock."""
    import threading

    import sqlalchemy
    from sqlalchemy.pool import NullPool

    from cnnlab.sweeps.strategies.optuna_search import TABLES_LOCK, storage

    url = _fresh_database("turns")
    engine = sqlalchemy.create_engine(url, poolclass=NullPool)
    tables = lambda: sqlalchemy.inspect(engine).get_table_names()  # noqa: E731
    waiting = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
    opened = []
    with engine.connect() as holder:
        holder.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": TABLES_LOCK})
        opener = threading.Thread(target=lambda: opened.append(storage(url)))
        opener.start()
        wait_for(lambda: holder.execute(sqlalchemy.text(waiting)).scalar() == 1, 60, "the opener to wait")
        assert not opened and tables() == []
    opener.join(60)
    assert opened and "studies" in tables()
    engine.dispose()


def test_a_worker_killed_mid_trial_is_retried_elsewhere_and_nothing_is_lost_or_doubled(team, server, tmp_path):
    first = _worker(team, tmp_path / "a", "--strategy", "optuna", "--trials", "4", SPACE, *TINY, "epochs=6",
                    "data.n_train=1200", "--name", "crash")
    deadline = time.time() + 180
    while True:  # wait until the first worker trains a trial that has logged an epoch
        assert first.poll() is None and time.time() < deadline, (tmp_path / "a" / "out.txt").read_text()
        _, children = _sweep_runs(server, "crash")
        mine = [r for r in children if r.state == "RUNNING" and "train_loss" in r.metrics]
        if mine:
            break
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGKILL)  # mid-trial: it has 5 epochs to go (a sleep here let it finish on a fast CPU)
    first.wait()
    shutil.rmtree(tmp_path / "a")  # as if on another machine: the joiner cannot resume from its checkpoint
    joiner = _worker(team, tmp_path / "b", "--join", "crash")
    out = _finish(joiner, tmp_path / "b")
    assert joiner.returncode == 0, out

    study = _study(team, "crash")
    complete = _complete(study)
    assert len(complete) == 4
    parents, children = _sweep_runs(server, "crash")
    assert not [r for r in children + parents if r.state == "RUNNING"]
    finished = [r for r in children if r.state == "FINISHED"]
    assert sorted(r.trial for r in finished) == sorted(f"T{t.number}" for t in complete)  # none twice
    assert len({r.trial_key for r in finished}) == 4
    assert server.get(mine[0].run_id).state == "KILLED"
    # the killed trial ran again with its values, in the joiner
    retried = [t for t in complete if t.system_attrs.get("failed_trial") is not None]
    assert len(retried) == 1
    assert retried[0].params == next(t for t in study.trials if f"T{t.number}" == mine[0].trial).params


def test_a_postgres_restart_mid_sweep_loses_nothing(team, server, tmp_path):
    worker = _worker(team, tmp_path / "a", "--strategy", "optuna", "--trials", "4", SPACE, *TINY, "epochs=3",
                     "--name", "restart")
    deadline = time.time() + 180
    while not [r for r in _sweep_runs(server, "restart")[1] if r.state == "FINISHED"]:
        assert worker.poll() is None and time.time() < deadline, (tmp_path / "a" / "out.txt").read_text()
        time.sleep(0.5)
    postmaster = int((team["dir"] / "pg" / "postmaster.pid").read_text().split()[0])
    os.kill(postmaster, signal.SIGINT)  # PostgreSQL's fast shutdown; `team up` starts it again
    out = _finish(worker, tmp_path / "a")
    assert worker.returncode == 0, out
    assert "Traceback" not in out
    assert len(_complete(_study(team, "restart"))) == 4
    parents, children = _sweep_runs(server, "restart")
    assert [r.state for r in parents] == ["FINISHED"]
    assert sorted(r.state for r in children) == ["FINISHED"] * 4
    assert "PostgreSQL stopped" in team["log"].read_text()


def test_a_trial_no_worker_took_does_not_hold_the_sweep(team, server, tmp_path):
    """An ask cut off by a database restart after it made its trial leaves it RUNNING with no heartbeat, which
    Optuna never finds stale: the sweep fails it and goes on instead of waiting for it forever."""
    args = ["--strategy", "optuna", SPACE, *TINY, "epochs=1", "--name", "orphan"]
    first = _worker(team, tmp_path / "a", *args, "--trials", "2")
    assert _finish(first, tmp_path / "a", timeout=200) and first.returncode == 0
    _study(team, "orphan").ask()  # as an interrupted ask leaves it
    again = _worker(team, tmp_path / "b", *args, "--trials", "3")
    out = _finish(again, tmp_path / "b", timeout=120)
    assert again.returncode == 0, out
    states = sorted(t.state.name for t in _study(team, "orphan").trials)
    assert states == ["COMPLETE", "COMPLETE", "COMPLETE", "FAIL"]


def test_without_credentials_the_server_says_not_authorised(team, server, tmp_path):
    env = _env(team, tmp_path)
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        env.pop(key)
    done = subprocess.run([sys.executable, "-m", "cnnlab.cli", "runs"], env=env, capture_output=True, text=True)
    assert done.returncode == 2 and "not authorising" in done.stderr and "Traceback" not in done.stderr
    done = subprocess.run([sys.executable, "-m", "cnnlab.cli", "sweep", "--strategy", "optuna", SPACE, *TINY,
                           "--name", "refused"], env=env, capture_output=True, text=True)
    assert done.returncode == 2 and "not authorising" in done.stderr
    with pytest.raises(KeyError):  # refused before it made anything: a study would wait for a parent run
        _study(team, "refused")
    env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"] = "admin", "wrong"
    done = subprocess.run([sys.executable, "-m", "cnnlab.cli", "runs"], env=env, capture_output=True, text=True)
    assert done.returncode == 2 and "whose password it refused" in done.stderr
    env["CNNLAB_STORAGE"] = env["CNNLAB_STORAGE"].replace("cnnlab@", "cnnlab:wrong-password@")
    env.pop("PGPASSWORD")
    done = subprocess.run([sys.executable, "-m", "cnnlab.cli", "sweep", "--join", "pair"], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 2 and "cannot open the database" in done.stderr
    assert "wrong-password" not in done.stderr and "cnnlab:***@" in done.stderr


def test_team_status_says_what_is_up(team, tmp_path):
    done = subprocess.run([sys.executable, "-m", "cnnlab.cli", "team", "status", "--dir", str(team["dir"])],
                          capture_output=True, text=True)
    assert done.returncode == 0
    assert done.stdout.count("answering") == 2 and "NOT" not in done.stdout
    assert team["env"]["PGPASSWORD"] not in done.stdout
    assert oct((team["dir"] / "secrets.env").stat().st_mode & 0o777) == "0o600"
    # the password hashes, the auth config and the artifacts: not readable by other local users past the server
    modes = {name: oct((team["dir"] / name).stat().st_mode & 0o777) for name in ("auth.db", "basic_auth.ini",
                                                                              "artifacts")}
    assert modes == {"auth.db": "0o600", "basic_auth.ini": "0o600", "artifacts": "0o700"}
    done = subprocess.run([sys.executable, "-m", "cnnlab.cli", "team", "status", "--dir", str(tmp_path / "none")],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "No team is up" in done.stderr


def test_a_missing_extra_or_a_taken_port_is_a_clear_error(cli, monkeypatch, tmp_path):
    """Before anything starts: no PostgreSQL cluster is made, no server is started."""
    import importlib.util
    import socket

    find_spec = importlib.util.find_spec
    with monkeypatch.context() as m:
        m.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "flask_wtf" else find_spec(name, *a))
        code, _, err = cli("team", "up", "--dir", str(tmp_path / "team"))
    assert code == 2 and "Flask-WTF" in err and "cnnlab[team]" in err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        code, _, err = cli("team", "up", "--dir", str(tmp_path / "team"), "--pg-port", str(taken.getsockname()[1]))
    assert code == 2 and "is taken" in err
    assert not (tmp_path / "team" / "pg").exists()
