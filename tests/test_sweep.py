"""`cnnlab sweep`: expansion, validation, resume/dedupe, failure isolation, signals, workers, Optuna."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from cnnlab.schema import runs_dir
from cnnlab.errors import CnnlabError
from cnnlab.sweeps import Sweep, expand, load_spec

TINY = ["data=synthetic", "data.n_train=300", "data.n_test=100", "epochs=1", "batch_size=50"]


def children(client, experiment="synthetic"):
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "cnnlab.sweep_parent" in r.data.tags]
    kids = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return parents, kids


def test_grid_expands_to_the_cartesian_product():
    spec = load_spec(["lr=0.1,0.01", "dropout=0,0.5", "epochs=1"])
    trials = expand(spec)
    assert [t.id for t in trials] == ["T0", "T1", "T2", "T3"]
    assert [t.params for t in trials] == [{"lr": "0.1", "dropout": "0"}, {"lr": "0.1", "dropout": "0.5"},
                                          {"lr": "0.01", "dropout": "0"}, {"lr": "0.01", "dropout": "0.5"}]
    assert all(t.overrides[-1] == "epochs=1" for t in trials)  # command-line fixed overrides come last
    assert len({t.key for t in trials}) == 4


def test_range_choice_and_repeats():
    spec = load_spec(["depth=range(1,3)", "arch=vgg_small", "activation=choice(relu,gelu)"], repeats=2)
    trials = expand(spec)
    assert len(trials) == 2 * 2 * 2
    assert [t.params.get("seed") for t in trials[:2]] == ["0", "1"]
    assert trials[0].group == trials[1].group and trials[0].key != trials[1].key


def test_random_is_seeded_and_respects_bounds():
    args = ["lr=tag(log,interval(1e-4,1e-1))", "dense_units=int(interval(16,512))", "dropout=0,0.5"]
    a = expand(load_spec(args, strategy="random", trials=6, seed=3))
    b = expand(load_spec(args, strategy="random", trials=6, seed=3))
    assert [t.overrides for t in a] == [t.overrides for t in b] and len(a) == 6
    for t in a:
        values = dict(o.split("=", 1) for o in t.overrides)
        assert 1e-4 <= float(values["lr"]) <= 1e-1 and 16 <= int(values["dense_units"]) <= 512


def test_named_sweep_file_and_command_line_win():
    spec = load_spec(["sweep=exercise", "epochs=1"])
    assert spec.strategy == "list" and spec.name == "exercise"
    trials = expand(spec)
    assert len(trials) == 8 and trials[0].params == {}
    # the command line wins, and each key is given once: trials that set epochs=10 run 1 epoch and say so
    assert all([o for o in t.overrides if o.startswith("epochs=")] == ["epochs=1"] for t in trials)
    assert all("epochs" not in t.params for t in trials) and trials[2].params == {"batch_size": "100"}


@pytest.mark.parametrize("args, options, needle", [
    (["no_such_key=1,2"], {}, "no_such_key"),
    (["lr=choice()"], {}, "empty choice"),
    (["dropout=interval(0,0.5)"], {}, "cannot be a grid"),
    (["depth=range(a,b)"], {}, "range"),
    (["lr=0.1,0.01"], {"pruner": "median"}, "needs --strategy optuna"),
    (["lr=0.1,0.01", "lr=0.5"], {}, "both fixed and swept"),
    (["lr=0.1,0.01"], {"strategy": "bayes"}, "Unknown sweep strategy"),
    (["lr=0.1,0.01"], {"metric": "test_acc"}, "the test set is never used to choose"),
    (["sweep=nope"], {}, "No sweep named 'nope'"),
    (["epochs=1"], {}, "Nothing to sweep"),
    (["dropout=0,1.5"], {}, "dropout=1.5 is out of range"),
])
def test_bad_specs_fail_before_anything_runs(args, options, needle):
    with pytest.raises(CnnlabError, match=needle.replace("(", r"\(").replace("[", r"\[")):
        Sweep(load_spec(args, **options)).plan()
    assert not (runs_dir() / "mlflow.db").exists()


def test_cli_bad_sweep_exits_2(cli):
    code, _, err = cli("sweep", "dropout=interval(0,0.5)", *TINY)
    assert code == 2 and "cannot be a grid" in err and "Traceback" not in err


@pytest.mark.slow
def test_grid_sweep_records_parent_and_children_then_resumes_with_nothing(cli, mlflow_client):
    code, out, err = cli("sweep", "lr=0.003,0.001", "dropout=0,0.5", *TINY, "-q")
    assert code == 0, err
    parents, kids = children(mlflow_client)
    assert len(parents) == 1 and len(kids) == 4
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.params["strategy"] == "grid"
    sweep = parent.data.tags["cnnlab.sweep_parent"]
    assert sorted(k.info.run_name for k in kids) == [f"{sweep}/T{i}" for i in range(4)]  # as the MLflow UI lists them
    assert all(k.info.status == "FINISHED" and k.data.tags["mlflow.parentRunId"] == parent.info.run_id for k in kids)
    assert "best_val_acc" in parent.data.metrics and parent.data.metrics["n_finished"] == 4
    assert {a.path for a in mlflow_client.list_artifacts(parent.info.run_id)} >= {"summary.csv", "sweep.yaml"}
    # captured like a pipe: the summary is not wrapped at 80 columns, the parent run ID stays whole
    assert f"parent run {parent.info.run_id}\n" in out and max(map(len, out.splitlines())) > 80
    code, out, _ = cli("sweep", "lr=0.003,0.001", "dropout=0,0.5", *TINY, "-q")
    assert code == 0 and "nothing to run, 4 trial(s) already FINISHED" in out
    assert len(children(mlflow_client)[1]) == 4


@pytest.mark.slow
def test_failed_trial_does_not_stop_the_sweep(cli, mlflow_client):
    code, out, _ = cli("sweep", "lr=1e30,0.001", "optimizer=sgd", *TINY, "-q")
    assert code == 0
    _, kids = children(mlflow_client)
    states = {float(json.loads(k.data.tags["cnnlab.swept"])["lr"]): k.info.status for k in kids}
    assert states == {1e30: "FAILED", 0.001: "FINISHED"}
    assert "T0 FAILED" in out and "Diverged" in out
    # every trial failing is a failed command
    code, _, _ = cli("sweep", "lr=1e30,1e31", "optimizer=sgd", *TINY, "-q")
    assert code == 1


@pytest.mark.slow
def test_sigterm_kills_cleanly_and_rerun_completes_only_the_rest(mlflow_client):
    args = [sys.executable, "-m", "cnnlab.cli", "sweep", "lr=0.003,0.001,0.0003", "dropout=0,0.5",
            "data=synthetic", "data.n_train=600", "epochs=2", "-q"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    finished = 0
    while finished < 2:
        line = proc.stdout.readline()
        assert line, "sweep ended early"
        finished += " FINISHED " in line
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 143
    parents, kids = children(mlflow_client)
    assert parents[0].info.status == "KILLED"
    assert not [k for k in kids if k.info.status == "RUNNING"]
    done_before = sum(k.info.status == "FINISHED" for k in kids)
    assert 2 <= done_before < 6
    rerun = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"ran {6 - done_before} trial(s), skipped {done_before} already FINISHED" in rerun.stdout
    parents, kids = children(mlflow_client)
    assert parents[0].info.status == "FINISHED"
    assert sum(k.info.status == "FINISHED" for k in kids) == 6


@pytest.mark.slow
def test_two_workers_on_a_fresh_store(cli):
    from cnnlab.record import Store

    assert not (runs_dir() / "mlflow.db").exists()
    code, out, err = cli("sweep", "lr=0.003,0.001", "dropout=0,0.25,0.5", *TINY, "--workers", "2", "-q")
    assert code == 0, err
    _, kids = children(Store().client)
    assert len(kids) == 6 and all(k.info.status == "FINISHED" for k in kids)
    assert len({k.data.tags["cnnlab.trial_key"] for k in kids}) == 6


def optuna_args(pruner: str) -> list:
    """An 8-trial Optuna sweep over a learning-rate range wide enough that the median pruner prunes."""
    return ["sweep", "--strategy", "optuna", "--trials", "8", "--pruner", pruner, "lr=tag(log,interval(1e-5,1e-2))",
            "data=synthetic", "data.n_train=300", "epochs=4", "--name", "opt", "-q"]


@pytest.mark.slow
def test_optuna_prunes_records_and_continues_the_study(cli, mlflow_client):
    import optuna

    args = optuna_args("median")
    code, out, err = cli(*args)
    assert code == 0, err
    _, kids = children(mlflow_client)
    assert len(kids) == 8
    states = [k.data.tags["cnnlab.state"] for k in kids]
    assert states.count("FINISHED") >= 4 and set(states) == {"FINISHED", "PRUNED"}, states
    journal = runs_dir() / "synthetic" / "opt" / "optuna.journal"
    study = optuna.load_study(study_name="opt", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))))
    assert len(study.trials) == 8
    # a bigger budget continues the same study
    code, out, _ = cli(*[a if a != "8" else "10" for a in args])
    assert code == 0 and "ran 2 trial(s)" in out
    assert len(children(mlflow_client)[1]) == 10


@pytest.mark.slow
def test_the_chosen_pruner_judges_the_trials(cli, mlflow_client):
    # the same space as above, where the median pruner prunes: --pruner none must prune nothing
    code, out, err = cli(*optuna_args("none"))
    assert code == 0, err
    _, kids = children(mlflow_client)
    assert [k.data.tags["cnnlab.state"] for k in kids] == ["FINISHED"] * 8


@pytest.mark.slow
def test_join_through_a_database_storage(tmp_path, cli, mlflow_client):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    base = ["sweep", "--strategy", "optuna", "--trials", "3", "dropout=interval(0,0.5)", *TINY, "--name", "shared",
            "--storage", url, "-q"]
    assert cli(*base)[0] == 0
    code, out, err = cli("sweep", "--join", "shared", "--storage", url, "-q")
    assert code == 0, err
    assert "nothing to run, the Optuna study already has its 3 trial(s)" in out  # the budget was already spent
    code, _, err = cli("sweep", "--join", "nosuch", "--storage", url)
    assert code == 2 and "No Optuna study named 'nosuch'" in err


def test_every_strategy_is_found_after_one_was_imported_directly():
    """`--join` imports the Optuna strategy's module before any lookup: the others must still register."""
    code = ("import cnnlab.sweeps.strategies.optuna_search\n"
            "from cnnlab.sweeps.strategies import strategies\nprint(' '.join(strategies()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["grid", "list", "optuna", "random"]


def test_a_database_that_never_answered_is_not_retried_for_minutes(monkeypatch):
    """A database that has not answered once in this process is more likely a wrong URL than a restart: it is given
    FIRST_PATIENCE seconds, not PATIENCE; once it has answered, a silence is waited out as before."""
    import sqlalchemy.exc

    from cnnlab.errors import CnnlabError
    from cnnlab.sweeps.strategies import optuna_search as o

    slept = []
    monkeypatch.setattr(o.time, "sleep", slept.append)
    clock = iter(range(0, 10_000, 1))
    monkeypatch.setattr(o.time, "time", lambda: next(clock))
    monkeypatch.setattr(o, "_answered", False)

    def silent():
        raise sqlalchemy.exc.OperationalError("connect", {}, Exception("connection refused"))

    with pytest.raises(CnnlabError, match="does not answer .*check the --storage URL"):
        o.retrying(silent, "opening the Optuna database")
    assert sum(slept) <= o.FIRST_PATIENCE
    calls = []

    def back_after_three():
        calls.append(1)
        if len(calls) < 4:
            silent()
        return "ok"

    assert o.retrying(lambda: "first answer", "opening") == "first answer"
    slept.clear()
    assert o.retrying(back_after_three, "reading the study") == "ok"
    assert slept == [1.0, 2.0, 4.0]


def test_a_sqlite_storage_in_a_missing_directory_is_one_paragraph_at_once(cli, tmp_path):
    code, out, err = cli("sweep", "lr=0.01,0.02", *TINY, "--strategy", "optuna", "--trials", "2",
                         "--storage", f"sqlite:///{tmp_path}/missing/dir/x.db")
    assert code == 2 and "the directory" in err and "does not exist" in err and "Traceback" not in err


def test_ctrl_c_right_after_the_parent_run_is_made_ends_it_killed(cli, mlflow_client, monkeypatch):
    from cnnlab.errors import Interrupted
    from cnnlab.sweeps.parent import ParentRun

    def interrupted(self, force):
        raise Interrupted(2)  # Ctrl-C between creating the parent run and starting the trials

    monkeypatch.setattr(ParentRun, "resume", interrupted)
    code, _, _ = cli("sweep", "lr=0.003,0.001", *TINY, "-q")
    assert code == 130
    parents, kids = children(mlflow_client)
    assert len(parents) == 1 and not kids
    assert parents[0].data.tags["cnnlab.state"] == "KILLED" and parents[0].info.status == "KILLED"


@pytest.mark.slow
def test_an_optuna_sweep_prints_no_experimental_warnings(tmp_path):
    """Optuna calls the heartbeat machinery 'experimental': what it does is what cnnlab needs, and a user is not
    told so twice per trial (a subprocess: pytest would capture the warnings itself)."""
    proc = subprocess.run([sys.executable, "-m", "cnnlab.cli", "sweep", "--strategy", "optuna", "--trials", "2",
                           "dropout=interval(0,0.5)", *TINY, "-q"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "Warning" not in proc.stderr, proc.stderr


def test_a_note_about_another_workers_trial_says_how_it_stands_at_the_end():
    """A team worker found T3 running elsewhere when it started; by its end T3 had finished: the note says so,
    not a stale 'still running'."""
    from cnnlab.record import Record, Tag

    def record(run_id, state):
        return Record(run_id, f"s/T{run_id}", f"s/T{run_id}", "e", "1", state, 0, {}, {},
                      tags={Tag.OWNER: "host 4242 1"})

    from cnnlab.sweeps.parent import ParentRun

    parent = ParentRun.__new__(ParentRun)
    parent.running_at_start = {"3": record("3", "RUNNING"), "4": record("4", "RUNNING")}
    notes = parent.running_notes([record("3", "FINISHED"), record("4", "RUNNING")])
    assert notes == ["s/T3 was running in another process, which ended it FINISHED",
                     "s/T4 is still running (process 4242): not started again"]


def test_optunas_private_api_is_used_only_in_one_module_and_works_on_the_installed_release(tmp_path):
    """cnnlab.sweeps.optuna_private was checked against the releases in CHECKED: another release fails here (check
    each call again, then widen the range); each call is exercised on a real study with heartbeats."""
    import re
    from pathlib import Path

    import optuna
    from optuna.trial import TrialState
    from packaging.version import Version

    from cnnlab.sweeps import optuna_private as private

    low, high = map(Version, private.CHECKED)
    assert low <= Version(optuna.__version__) < high, (optuna.__version__, private.CHECKED)
    package = Path(private.__file__).resolve().parents[1]
    reaching = [str(p.relative_to(package)) for p in package.rglob("*.py")
                if p.name != "optuna_private.py" and re.search(r"\._storage\b|\._study_id\b|\._trial_id\b", p.read_text())]
    assert reaching == []

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'o.db'}", heartbeat_interval=60)
    study = optuna.create_study(storage=storage, study_name="s")
    assert private.has_heartbeats(study)
    assert not private.has_heartbeats(optuna.create_study())  # in memory: no heartbeats
    asked = [study.ask(), study.ask()]
    private.mark(study, asked[0].number, "beating", asked[0].number)
    private.beat(study, asked[0].number)
    live = private.live_trial(study, asked[0].number)  # reports from "another process"
    live.report(0.5, 1)
    frozen = {t.number: t for t in study.get_trials(deepcopy=False)}
    assert frozen[0].system_attrs["beating"] == 0 and frozen[0].intermediate_values == {1: 0.5}
    private.fail(study, frozen[1])
    assert [t.state for t in study.get_trials()] == [TrialState.RUNNING, TrialState.FAIL]
