"""The experiment record: log IDs assigned once, one store layer, one summary, no import cycle."""

from __future__ import annotations

import ast
import math
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from cnnlab import log as run_log
from cnnlab.errors import CnnlabError
from cnnlab.schema import runs_dir
from cnnlab.record import Store, Tag

TINY = ["data=synthetic", "data.n_train=300", "data.n_test=100", "epochs=1", "batch_size=50"]
PACKAGE = Path(__file__).resolve().parent.parent / "cnnlab"


def ids_in(out: str) -> list:
    """The ID column of `cnnlab runs` piped output (tab-separated, a header first), top to bottom."""
    lines = out.strip().splitlines()
    assert lines[0].split("\t")[0] == "id"
    return [line.split("\t")[0] for line in lines[1:]]


@pytest.fixture
def three_runs(cli):
    """T0 tf_cnn, T1 vgg_small (narrow), and T2 a run that was KILLED (a record ended by the store's own call)."""
    assert cli("train", *TINY, "-q")[0] == 0
    assert cli("train", *TINY, "arch=vgg_small", "width=0.125", "-q")[0] == 0
    store = Store()
    run = store.create_run("synthetic", {Tag.RUN_DIR: str(runs_dir() / "gone")})
    run.end("KILLED", "signal 15 in epoch 1")
    return store


def test_ids_are_the_same_under_every_filter(cli, three_runs):
    code, out, err = cli("runs")
    assert code == 0, err
    assert ids_in(out) == ["T0", "T1", "T2"]
    assert ids_in(cli("runs", "--arch", "vgg_small")[1]) == ["T1"]
    assert ids_in(cli("runs", "--status", "KILLED")[1]) == ["T2"]
    assert ids_in(cli("runs", "--status", "FINISHED", "--sort", "id", "--top", "1")[1]) == ["T0"]
    sorted_ids = ids_in(cli("runs", "--sort", "test_acc")[1])
    assert sorted(sorted_ids) == ["T0", "T1", "T2"] and sorted_ids[-1] == "T2"  # no score: last, still T2
    # the run's own name is its ID, in the MLflow UI too
    assert [r.name for r in three_runs.runs()] == ["T0", "T1", "T2"]


@pytest.mark.slow
def test_evaluate_takes_what_runs_printed_and_says_what_it_resolved(cli, three_runs):
    vgg = three_runs.runs(archs=["vgg_small"])[0]
    printed = ids_in(cli("runs", "--arch", "vgg_small")[1])[0]
    code, out, err = cli("evaluate", printed, "targets=[blur]")
    assert code == 0, err
    assert f"evaluating synthetic T1 (run {vgg.run_id}" in out
    assert "target_acc_blur" in three_runs.get(vgg.run_id).metrics
    assert "target_acc_blur" not in three_runs.runs(archs=["tf_cnn"])[0].metrics  # the other T-run untouched
    code, out, err = cli("evaluate", vgg.run_id[:8], "targets=[contrast]")  # a run-ID prefix
    assert code == 0 and "evaluating synthetic T1" in out, err


def test_ambiguous_or_unknown_references_are_refused(cli, three_runs):
    assert cli("train", *TINY, "experiment=other", "-q")[0] == 0  # another experiment's T0
    code, _, err = cli("evaluate", "T0")
    assert code == 2 and "names 2 runs" in err and "synthetic: T0" in err and "other: T0" in err
    code, _, err = cli("evaluate", "T9")
    assert code == 2 and "No run 'T9'" in err and "Traceback" not in err
    record = three_runs.find("T0", ["other"])
    assert record.experiment == "other" and record.id == "T0"


def test_quotes_in_references_never_break_the_filter(three_runs):
    for ref in ("it's", 'say "x"', "both ' and \""):
        with pytest.raises(CnnlabError, match="No run"):
            three_runs.find(ref)


def test_runs_created_at_once_on_a_local_store_are_numbered_without_gaps():
    """Claims take turns on a local store: eight creators at once get T0..T7, none skipped (a skipped number
    is a hole in the student's log)."""
    import threading

    Store().experiment_id("synthetic")
    ids, barrier = [], threading.Barrier(8)

    def create():
        store = Store()  # a store of its own, as a separate process has
        barrier.wait()
        ids.append(store.create_run("synthetic", {}).id)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(ids, key=lambda i: int(i[1:])) == [f"T{n}" for n in range(8)]


@pytest.mark.slow
def test_four_trainings_at_once_on_a_fresh_store_get_distinct_ids():
    assert not (runs_dir() / "mlflow.db").exists()
    procs = [subprocess.Popen([sys.executable, "-m", "cnnlab.cli", "train", *TINY, "arch=lenet5", f"seed={i}", "-q"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(4)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [err[-2000:] for _, err in outs]
    printed = sorted(re.search(r"id=(T\d+)", out).group(1) for out, _ in outs)
    assert printed == ["T0", "T1", "T2", "T3"]
    records = Store().runs()
    assert sorted(r.id for r in records) == printed and all(r.state == "FINISHED" for r in records)
    assert sorted(p.name for p in (runs_dir() / "synthetic").iterdir()) == printed  # run directories named alike


@pytest.mark.slow
def test_sweep_summary_and_export_agree(cli, tmp_path):
    from cnnlab.sweeps import Sweep, load_spec

    args = ["lr=0.003,0.001", *TINY]
    first = Sweep(load_spec(args, repeats=2, name="rep"), quiet=True).run()
    again = Sweep(load_spec(args, repeats=2, name="rep"), force=True, quiet=True).run()  # attempts, not seeds
    assert first.ran == again.ran == 4
    store = Store()
    records = store.runs(sweep="rep")
    assert sorted(r.id for r in records) == sorted([f"rep/T{i}" for i in range(4)] + [f"rep/T{i}-2" for i in range(4)])
    assert {r.attempt for r in records} == {1, 2}
    summary = {g.params: (g.n, g.mean, g.std, g.test_mean, g.test_std) for g in again.groups}
    assert sorted(summary) == ["lr=0.001", "lr=0.003"] and {v[0] for v in summary.values()} == {2}
    assert all(set(g.ids) <= {f"rep/T{i}-2" for i in range(4)} for g in again.groups)  # the latest attempts
    out = tmp_path / "log.xlsx"
    assert cli("export-log", str(out), "--sweep", "rep")[0] == 0
    sheet = pd.read_excel(out, sheet_name="Sweeps")
    exported = {row["CONFIG"]: tuple(row[k] for k in ("SEEDS", "MEAN", "STD", "TEST MEAN", "TEST STD"))
                for _, row in sheet.iterrows()}
    assert exported.keys() == summary.keys()
    for key, values in summary.items():
        assert exported[key] == pytest.approx(values)
    log = run_log.build(store, records)
    assert [(g.params, g.n, g.mean) for g in log.groups] == [(g.params, g.n, g.mean) for g in again.groups]


def test_one_seed_shows_no_spread(cli):
    code, out, err = cli("sweep", "lr=0.003,0.001", *TINY, "-q")
    assert code == 0, err
    assert "± 0.0000" not in out and "±" not in out


# ---------------------------------------------------------------- the shape of the package


def imports(path: Path) -> set:
    """The cnnlab modules `path` imports, at any depth of its code (function-level imports included)."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    package = package.removesuffix(".__init__")
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("cnnlab")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("cnnlab"):
                continue
            for alias in node.names:  # `from . import data`: the submodule itself
                sub = f"{target}.{alias.name}"
                found.add(sub if (PACKAGE.parent / Path(*sub.split("."))).with_suffix(".py").exists()
                          or (PACKAGE.parent / Path(*sub.split(".")) / "__init__.py").exists() else target)
    return {m.removesuffix(".__init__") for m in found}


def test_no_import_cycle():
    graph = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        graph[name] = imports(path) - {name}
    assert "cnnlab.record.store" in graph and graph["cnnlab.config"] >= {"cnnlab.schema"}
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_only_the_record_package_speaks_to_mlflow():
    speakers = sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                      if re.search(r"^\s*(import mlflow|from mlflow)", p.read_text(), flags=re.M))
    assert speakers and all(s.startswith("record/") for s in speakers), speakers


def test_tag_names_are_the_stores_constants():
    """Other modules name cnnlab's tags through record.Tag, never as string literals."""
    literal = re.compile(r"""["']cnnlab\.(id|seq|state|end_reason|run_dir|sweep|sweep_parent|trial|attempt|trial_key|"""
                         r"""config_key|swept)["']""")
    offenders = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")
                 if p.name != "vocabulary.py" and literal.search(p.read_text())]
    assert offenders == []


@pytest.mark.slow
def test_runs_recorded_before_log_ids_get_theirs_once(cli, three_runs):
    """A store written by an earlier cnnlab: runs without the ID tag (a single run named by date, a trial)."""
    client = three_runs.client
    exp = three_runs.experiment_id("synthetic")
    old = client.create_run(exp, run_name="tf_cnn-20261120-101010-abc123", tags={Tag.STATE: "FINISHED"})
    trial = client.create_run(exp, run_name="T4", tags={Tag.SWEEP: "old", Tag.TRIAL: "T4"})
    for run in (old, trial):
        client.set_terminated(run.info.run_id, "FINISHED")
    first = {r.run_id: r.id for r in Store().runs()}
    assert first[old.info.run_id] == "T3" and first[trial.info.run_id] == "old/T4"
    assert {r.run_id: r.id for r in Store().runs()} == first  # kept, not renumbered
    assert ids_in(cli("runs", "--status", "FINISHED")[1])[-2:] == ["T3", "old/T4"]


def test_piped_runs_keep_every_column_and_other_formats(cli, three_runs):
    code, out, err = cli("runs")
    lines = out.strip().splitlines()
    header = lines[0].split("\t")
    assert code == 0 and all(len(line.split("\t")) == len(header) for line in lines)
    assert {"id", "changes", "test acc", "status"} <= set(header)  # nothing folded away at any width
    code, out, _ = cli("runs", "--format", "csv")
    import csv

    rows = list(csv.reader(out.splitlines()))
    assert rows[0] == header and [r[0] for r in rows[1:]] == ["T0", "T1", "T2"]
    code, out, _ = cli("runs", "--format", "md")
    assert out.splitlines()[0].startswith("| id |") and out.count("\n| T") == 3
    code, out, _ = cli("runs", "--format", "table")
    assert "3 run(s)" in out and "┃ id" in out
    code, _, err = cli("runs", "--format", "xml")
    assert code == 2 and "valid formats" in err


def test_the_sqlite_reader_reads_what_mlflows_client_reads(cli, three_runs):
    """Store.runs reads a SQLite store's tables directly (fast); MLflow's client must see the very same records:
    single runs, a sweep's parent and trials, a KILLED run, a RUNNING one, a NaN metric, deleted runs left out,
    and the filters."""
    assert cli("sweep", "lr=0.003,0.001", *TINY, "--name", "s", "-q")[0] == 0
    client = three_runs.client
    nan_run = three_runs.create_run("other", {})
    client.log_metric(nan_run.run_id, "val_loss", float("nan"))
    client.log_param(nan_run.run_id, "note", "it's \"quoted\"")
    gone = three_runs.create_run("other", {})
    gone.end("FAILED", "for deletion")
    client.delete_run(gone.run_id)
    fast = Store(create=False)
    slow = Store(create=False, reader="client")  # as for a store of another kind: every read through MLflow's client
    assert type(fast.reader).__name__ == "SqliteReader" and type(slow.reader).__name__ == "ClientReader"
    for kwargs in ({}, {"parents": True}, {"experiments": ["synthetic"], "sweep": "s"}, {"states": ["KILLED"]},
                   {"experiments": ["other"]}, {"since": fast.runs()[1].start_time}):
        a, b = fast.runs(**kwargs), slow.runs(**kwargs)
        assert a and repr(a) == repr(b) and [r.tags for r in a] == [r.tags for r in b], kwargs  # repr: NaN == NaN
    others = fast.runs(["other"])
    assert [r.run_id for r in others] == [nan_run.run_id] and others[0].state == "RUNNING"
    assert math.isnan(others[0].metrics["val_loss"]) and others[0].params["note"] == "it's \"quoted\""
    exp = fast.experiment_id("synthetic", create=False)
    assert repr(fast.first_single_run(exp)) == repr(slow.first_single_run(exp))
    assert fast.first_single_run(exp).id == "T0"
    parent = fast.sweep_parent(exp, "s")
    assert repr(parent) == repr(slow.sweep_parent(exp, "s")) and parent.is_sweep_parent
    assert repr(fast.children(parent.run_id, exp)) == repr(slow.children(parent.run_id, exp))
    assert [r.id for r in fast.children(parent.run_id, exp)] == ["s/T0", "s/T1"]
    assert fast.experiments() == slow.experiments()
    for ref in ("T1", "s/T1", nan_run.run_id[:8]):
        assert repr(fast.find(ref)) == repr(slow.find(ref)), ref
    def refusal(store, ref):
        try:
            store.find(ref)
        except CnnlabError as exc:
            return str(exc)

    for ref in ("T0", "nope", "abcd"):  # ambiguous (this experiment's T0 and other's), unknown, no such prefix
        assert refusal(fast, ref) == refusal(slow, ref) is not None, ref
    ids, keys = [r.run_id for r in fast.runs(parents=True)] + [nan_run.run_id], [*run_log.CURVE_KEYS, "lr"]
    histories = fast.histories(ids, keys)
    def ordered(h):  # repr compares NaN with NaN; the order of the metrics within a run is no matter
        return repr({run: sorted(metrics.items()) for run, metrics in h.items()})

    assert ordered(histories) == ordered(slow.histories(ids, keys))
    assert math.isnan(fast.histories([nan_run.run_id], ["val_loss"])[nan_run.run_id]["val_loss"][0])
    assert sum(len(steps) for h in histories.values() for steps in h.values()) > 20
    nan_run.end("FINISHED")
