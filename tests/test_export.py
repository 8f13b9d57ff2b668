"""export-log, runs and evaluate: the training log from what MLflow holds."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from cnnlab import export
from cnnlab import log as run_log
from cnnlab.log import describe_changes

BASE = {"arch.name": "tf_cnn", "dense_units": 64, "dropout": 0.0, "batch_norm": False, "pool": "max",
        "activation": "relu", "optimizer": "adam", "lr": 3e-4, "batch_size": 50}
EXERCISE_CHANGES = {
    "T0": "baseline", "T1": "no architecture change", "T2": "no architecture change",
    "T3": "no architecture change", "T4": "Increase dense units 64→500", "T5": "Removed dense layer",
    "T6": "Increase dense units 64→500; added dropout 0.5",
    "T7": "Increase dense units 64→500; added dropout 0.5; batch norm on",
}
TINY_DATA = ["data=synthetic", "data.n_train=300", "data.n_test=100"]


def test_changes_read_like_the_course():
    assert describe_changes(BASE, {**BASE, "dense_units": 500}) == "Increase dense units 64→500"
    assert describe_changes(BASE, {**BASE, "dense_units": 0}) == "Removed dense layer"
    assert describe_changes(BASE, {**BASE, "dense_units": 500, "dropout": 0.5, "batch_norm": True}) == \
        "Increase dense units 64→500; added dropout 0.5; batch norm on"
    assert describe_changes(BASE, {**BASE, "lr": 1e-3, "batch_size": 100}) == ""  # own columns, not changes
    assert describe_changes(BASE, {**BASE, "pool": "min", "activation": "gelu"}) == \
        "Min pooling instead of max; activation relu→gelu"
    assert describe_changes({**BASE, "dropout": 0.5}, BASE) == "Removed dropout"
    assert describe_changes(BASE, {**BASE, "arch.name": "vgg_small", "arch.blocks": 3}) == \
        "Architecture tf_cnn→vgg_small; arch.blocks None→3"


@pytest.fixture(scope="module")
def exercise_store(tmp_path_factory):
    """The exercise sweep on tiny synthetic data, plus two standalone runs in another experiment (built once)."""
    root = tmp_path_factory.mktemp("exercise")
    env = {"CNNLAB_RUNS_DIR": str(root / "runs"), "CNNLAB_DATA_DIR": str(root / "data")}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        commands = [["sweep", "sweep=exercise", *TINY_DATA, "-q"]]
        for extra in (["dropout=0.3"], ["dropout=0.3", "batch_norm=true", "eval.targets=[blur,contrast]"]):
            commands.append(["train", *TINY_DATA, "epochs=1", "experiment=solo", *extra, "-q"])
        for args in commands:
            proc = subprocess.run([sys.executable, "-m", "cnnlab.cli", *args], capture_output=True, text=True)
            assert proc.returncode == 0, proc.stderr
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return env


@pytest.fixture(scope="module")
def one_run_store(tmp_path_factory):
    """A store holding one tiny training run (built once for the module's refusal cases)."""
    root = tmp_path_factory.mktemp("one_run")
    env = {**os.environ, "CNNLAB_RUNS_DIR": str(root / "runs"), "CNNLAB_DATA_DIR": str(root / "data")}
    proc = subprocess.run([sys.executable, "-m", "cnnlab.cli", "train", *TINY_DATA, "epochs=1", "-q"], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return {k: env[k] for k in ("CNNLAB_RUNS_DIR", "CNNLAB_DATA_DIR")}


@pytest.fixture
def exercise(exercise_store, cli, monkeypatch):
    """`cli` on the exercise store."""
    for k, v in exercise_store.items():
        monkeypatch.setenv(k, v)
    return cli


@pytest.mark.slow
def test_exercise_workbook(exercise, tmp_path):
    cli = exercise
    out = tmp_path / "runs.xlsx"
    code, stdout, err = cli("export-log", str(out), "--sweep", "exercise")
    assert code == 0, err
    assert "wrote 8 run(s)" in stdout
    table = pd.read_excel(out, sheet_name="Training log", header=1)
    assert list(table["ID"]) == [f"exercise/T{i}" for i in range(8)]  # a trial's log ID names its sweep
    assert dict(zip(table["ID"], table["ARCHITECTURE CHANGES"])) == {f"exercise/{k}": v
                                                                     for k, v in EXERCISE_CHANGES.items()}
    assert list(table["BATCH SIZE"]) == [50, 100, 100, 100, 100, 100, 100, 100]
    assert list(table["EPOCH"]) == [5, 5, 10, 10, 10, 10, 10, 10]
    assert list(table["LR"]) == [3e-4, 3e-4, 3e-4, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3]
    # DATA SETS and TEST SPLIT as the course codes them, the Legend sheet saying what each code is
    assert set(table["IMAGE SIZE"]) == {"32x32"} and set(table["TEST SPLIT"]) == {"T0"}
    assert set(table["DATA SETS"]) == {"D0"}
    legend = pd.read_excel(out, sheet_name="Legend")
    assert legend.values.tolist() == [["D0", "synthetic (270 train)"], ["T0", "val 10% / synthetic test 100"]]
    assert list(table["FILE"]) == [f"synthetic/exercise/T{i}" for i in range(8)]
    # values read back exactly as built
    from cnnlab.record import Store

    store = Store()
    built = run_log.build(store, store.runs(["synthetic"], sweep="exercise")).table
    pd.testing.assert_frame_equal(table.drop(columns="MLFLOW"), built.drop(columns="MLFLOW").astype(
        table.drop(columns="MLFLOW").dtypes.to_dict()), check_dtype=False)
    # Source Dataset: the held-out accuracies, ACC AVG their config's mean test accuracy (one seed: its own)
    start = list(table.columns).index("ACC VAL")
    assert list(table.columns[start:start + 3]) == ["ACC VAL", "ACC TEST", "ACC AVG"]
    assert "TRAINING CHANGES" not in table.columns  # the exercise changes nothing but architecture and columns
    assert (abs(table["ACC AVG"] - table["ACC TEST"]) < 1e-9).all()
    assert "ACC STD" not in table.columns and "N" not in table.columns  # no repeats: no spread columns

    from openpyxl import load_workbook

    wb = load_workbook(out)
    assert wb.sheetnames == ["Training log", "Curves", "Charts", "Per class", "Sweeps", "Legend"]
    ws = wb["Training log"]
    merged = {str(r) for r in ws.merged_cells.ranges}
    headers = {ws.cell(row=1, column=int(r.min_col)).value: str(r) for r in ws.merged_cells.ranges}
    assert "Source Dataset" in headers and headers["Source Dataset"] in merged
    assert ws.freeze_panes == "B3" and ws.auto_filter.ref.startswith("A2:")
    assert ws.row_dimensions[2].height >= 30
    assert len(ws.conditional_formatting) >= 4  # a colour scale per accuracy column
    link_col = [c.value for c in ws[2]].index("MLFLOW") + 1
    links = [ws.cell(row=r, column=link_col).hyperlink.target for r in range(3, 11)]
    assert links == list(built["MLFLOW"])  # the whole URL behind a short text that stays on the page
    assert links[0].startswith("http://127.0.0.1:5000/#/experiments/") and "workflowType=machine_learning" in links[0]
    best_row = int(table["ACC VAL"].idxmax()) + 3
    assert ws.cell(row=best_row, column=1).font.b and ws.cell(row=best_row, column=1).fill.fgColor.rgb.endswith("FFF2CC")
    curves = pd.read_excel(out, sheet_name="Curves")
    assert set(curves["ID"]) == set(table["ID"]) and len(curves) == 5 + 5 + 6 * 10
    assert len(wb["Charts"]._charts) == 3  # one a printed page
    per_class = pd.read_excel(out, sheet_name="Per class")
    assert list(per_class.columns) == ["ID"] + [f"class{i}" for i in range(10)]
    sweeps = pd.read_excel(out, sheet_name="Sweeps")
    assert len(sweeps) == 8 and set(sweeps["SWEEP"]) == {"exercise"} and (sweeps["SEEDS"] == 1).all()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("soffice") is None or shutil.which("pdftotext") is None,
                    reason="LibreOffice or poppler is not installed (.ci/run installs them)")
def test_the_workbook_prints_readably(exercise, tmp_path):
    """Rendered by LibreOffice as a user prints it: every header and value whole, text at a readable size."""
    out = tmp_path / "runs.xlsx"
    assert exercise("export-log", str(out), "--experiment", "synthetic", "--experiment", "solo")[0] == 0
    subprocess.run(["soffice", "--headless", "--convert-to", "pdf", "--outdir", str(tmp_path), str(out)],
                   check=True, capture_output=True, timeout=300)
    pdf = tmp_path / "runs.pdf"
    text = subprocess.run(["pdftotext", "-layout", str(pdf), "-"], capture_output=True, text=True).stdout
    words = set(text.split())
    table = pd.read_excel(out, sheet_name="Training log", header=1)
    for header in table.columns:  # headers wrap at spaces but are never cut inside a word
        assert set(str(header).split()) <= words, header
    assert set(table["ID"]) <= words
    for change in table["ARCHITECTURE CHANGES"]:  # long texts wrap within their cell, nothing lost
        assert set(change.split()) <= words, change
    for config in pd.read_excel(out, sheet_name="Sweeps")["CONFIG"]:
        assert set(config.split()) <= words, config
    boxes = subprocess.run(["pdftotext", "-bbox", "-f", "1", "-l", "1", str(pdf), "-"], capture_output=True,
                           text=True).stdout
    heights = [float(b) - float(a) for a, b in re.findall(r'yMin="([\d.]+)" xMax="[\d.]+" yMax="([\d.]+)"', boxes)]
    assert heights and sorted(heights)[len(heights) // 2] >= 6  # points: read, not squinted at (3 pt before)
    from openpyxl import load_workbook

    from cnnlab.columns import GROUPS

    pages = len(load_workbook(out)["Training log"].col_breaks.brk) + 1  # as cnnlab planned them
    for n in range(1, pages + 1):  # LibreOffice made no others: each page of the log has its group headers
        page_text = subprocess.run(["pdftotext", "-f", str(n), "-l", str(n), str(pdf), "-"], capture_output=True,
                                   text=True).stdout
        assert any(group in page_text for group in GROUPS) and "ID" in page_text.split(), (n, page_text[:300])
    page_text = subprocess.run(["pdftotext", "-f", str(pages + 1), "-l", str(pages + 1), str(pdf), "-"],
                               capture_output=True, text=True).stdout
    assert "epoch" in page_text and not any(group in page_text for group in GROUPS)  # the Curves sheet follows
    subprocess.run(["pdftoppm", "-r", "40", "-png", "-f", "1", "-l", "1", str(pdf), str(tmp_path / "page")],
                   check=True, capture_output=True)
    page = next(tmp_path.glob("page*.png"))
    assert page.stat().st_size > 5000  # a page with content, rasterised


@pytest.mark.slow
def test_standalone_runs_compare_with_the_previous_run_and_show_targets(exercise, tmp_path):
    out = tmp_path / "solo.csv"
    code, _, err = exercise("export-log", str(out), "--experiment", "solo")
    assert code == 0, err
    table = pd.read_csv(out)
    assert list(table["ARCHITECTURE CHANGES"]) == ["baseline", "Batch norm on"]
    assert table.loc[1, "ACC BLUR"] > 0 and table.loc[1, "ACC CONTRAST"] > 0
    assert table.loc[1, "TARGET ACC AVG"] == pytest.approx((table.loc[1, "ACC BLUR"] + table.loc[1, "ACC CONTRAST"]) / 2)
    assert pd.isna(table.loc[0, "ACC BLUR"])  # not measured: blank, not 0
    md = tmp_path / "solo.md"
    assert exercise("export-log", str(md), "--experiment", "solo", "--baseline", table.loc[1, "RUN ID"])[0] == 0
    text = md.read_text()
    assert text.count("\n| T") == 2 and "Batch norm off" in text and "| baseline |" in text


@pytest.mark.slow
def test_evaluate_logs_target_scores_into_the_run(exercise):
    from cnnlab.record import Store

    client = Store().client
    exp = client.get_experiment_by_name("solo")
    run = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])[0]
    code, out, err = exercise("evaluate", run.info.run_name, "targets=[gaussian_noise,jpeg]", "severity=5")
    assert code == 0, err
    metrics = client.get_run(run.info.run_id).data.metrics
    assert 0 <= metrics["target_acc_gaussian_noise"] <= 1 and "target_acc_jpeg" in metrics
    assert f"target_acc_jpeg {metrics['target_acc_jpeg']:.4f}" in out
    code, _, err = exercise("evaluate", run.info.run_name, "targets=[fog]")
    assert code == 2 and "Unknown target set(s) fog" in err
    code, _, err = exercise("evaluate", "no-such-run")
    assert code == 2 and "No run 'no-such-run'" in err


@pytest.mark.slow
def test_runs_table_sort_top_and_only_changed(exercise):
    code, out, err = exercise("runs", "--sweep", "exercise", "--sort", "val_acc", "--top", "3", "--only-changed")
    assert code == 0, err
    header = out.splitlines()[0]
    assert len(out.strip().splitlines()) == 4  # piped: a header and the 3 rows, tab-separated
    assert "changes" in header and "test acc" in header
    assert "arch" not in header and "data" not in header and "status" not in header  # same in every row
    code, out, _ = exercise("runs", "--experiment", "solo")
    assert len(out.strip().splitlines()) == 3 and "Batch norm" in out


@pytest.mark.parametrize("args, needle", [
    (["export-log", "x.pdf"], "unknown format .pdf"),
    (["export-log", "/no/such/dir/x.xlsx"], "does not exist"),
])
def test_a_bad_destination_is_refused_before_the_store_is_read(cli, tmp_path, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(*args)
    assert code == 2 and needle in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args, needle", [
    (["export-log", "x.xlsx", "--experiment", "nope"], "Unknown experiment(s) nope"),
    (["export-log", "x.xlsx", "--status", "DONE"], "Unknown status DONE"),
    (["export-log", "x.xlsx", "--since", "yesterday"], "expected a date"),
    (["runs", "--sort", "colour"], "valid keys are"),
])
def test_bad_export_input_exits_2(one_run_store, cli, tmp_path, monkeypatch, args, needle):
    for k, v in one_run_store.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(*args)
    assert code == 2 and needle in err and "Traceback" not in err
    assert not (tmp_path / "x.xlsx").exists()


def test_empty_store_and_unwritable_directory(cli, tmp_path):
    code, _, err = cli("export-log", str(tmp_path / "a.xlsx"))
    assert code == 2 and "No runs recorded yet" in err
    assert not (tmp_path / "runs" / "mlflow.db").exists()  # reading never creates a store
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user who can write anywhere")
        code, _, err = cli("export-log", str(locked / "a.xlsx"))
        assert code == 2 and "not writable" in err
    finally:
        locked.chmod(0o700)


def test_never_clobbers_and_writes_atomically(cli, tmp_path, monkeypatch):
    assert cli("train", *TINY_DATA, "epochs=1", "-q")[0] == 0
    out = tmp_path / "log.xlsx"
    out.write_bytes(b"precious")
    code, _, err = cli("export-log", str(out))
    assert code == 2 and "--force" in err and out.read_bytes() == b"precious"

    def crash(log, path):
        Path(path).write_bytes(b"half a workbook")
        raise RuntimeError("disk full")

    from cnnlab.record import Store

    store = Store()
    with monkeypatch.context() as patched, pytest.raises(RuntimeError):
        patched.setattr(export, "_write_xlsx", crash)
        export.write(run_log.build(store, store.runs()), out, force=True)
    assert out.read_bytes() == b"precious"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".log.xlsx")] == []
    assert cli("export-log", str(out), "--force")[0] == 0
    assert out.read_bytes()[:2] == b"PK"  # a real workbook now


@pytest.mark.slow
def test_changes_are_against_the_experiment_baseline_and_seeds_are_averaged(cli, tmp_path):
    for extra in ([], ["arch=vgg_small", "width=0.125"], ["optimizer=sgd", "momentum=0.9"], ["seed=1"]):
        assert cli("train", *TINY_DATA, "epochs=1", "lr=1e-3", "scheduler=constant", *extra, "-q")[0] == 0
    out = tmp_path / "log.csv"
    assert cli("export-log", str(out))[0] == 0
    table = pd.read_csv(out).set_index("ID")
    import csv

    rows = list(csv.reader(out.read_text().splitlines()))
    assert {row[rows[0].index("N")] for row in rows[1:]} <= {"1", "2"}  # counts as integers, not 1.0
    assert table.loc["T2", "ARCHITECTURE CHANGES"] == "no architecture change"  # against T0, not the row above
    assert table.loc["T2", "TRAINING CHANGES"] == "Optimizer adam→sgd"
    assert table.loc["T1", "ARCHITECTURE CHANGES"].startswith("Architecture tf_cnn→vgg_small")
    # T0 and T3 are one configuration with two seeds: ACC AVG is their mean test accuracy, with STD and N
    both = table.loc[["T0", "T3"], "ACC TEST"]
    assert table.loc["T0", "ACC AVG"] == pytest.approx(both.mean()) == table.loc["T3", "ACC AVG"]
    assert table.loc["T0", "N"] == 2 and table.loc["T0", "ACC STD"] == pytest.approx(both.std())
    assert table.loc["T1", "N"] == 1 and pd.isna(table.loc["T1", "ACC STD"])
    md = tmp_path / "log.md"
    assert cli("export-log", str(md))[0] == 0
    mflops = f"{table.loc['T0', 'MFLOPS']:,.2f}"
    assert f"| {mflops} |" in md.read_text() and "| 0.0010 |" not in md.read_text()  # each column its format


@pytest.mark.slow
@pytest.mark.parametrize("width", [80, 100, 160])
def test_runs_table_fits_the_terminal_and_never_cuts_a_value(exercise, monkeypatch, width):
    """At any width the table fits, and each value shown is whole: an ID, lr 0.0003, FINISHED; the columns that
    do not fit are named under it."""
    monkeypatch.setenv("COLUMNS", str(width))
    code, out, err = exercise("runs", "--sweep", "exercise", "--format", "table")
    assert code == 0, err
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= width
    cells = {cell.strip() for line in lines for cell in line.replace("┃", "│").split("│")}
    assert {f"exercise/T{i}" for i in range(8)} <= cells
    assert "FINISHED" in cells
    if width < 160:
        assert "not shown at" in out
    code, tsv, _ = exercise("runs", "--sweep", "exercise", "--format", "tsv")
    header = tsv.splitlines()[0].split("\t")
    shown = [h for h in header if any(h == cell for cell in cells)]
    for h in ("lr", "batch", "epochs"):
        if h in shown:  # a number column that is shown holds its values whole
            column = [row.split("\t")[header.index(h)] for row in tsv.splitlines()[1:]]
            assert set(column) <= cells


def test_runs_csv_writes_numbers_plainly():
    from cnnlab import columns, render

    wall = next(c for c in columns.COLUMNS if c != columns.TARGETS and c.header == "WALL TIME (S)")
    n = next(c for c in columns.COLUMNS if c != columns.TARGETS and c.header == "N")
    assert render.lines("csv", [wall, n], [[1080.7, 1.0]]) == "time (s),seeds\n1080.7,1"
    assert render.lines("tsv", [wall, n], [[float("nan"), None]]) == "time (s)\tseeds\n\t"


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_exports_and_the_data_cache_follow_the_umask(one_run_store, cli, monkeypatch, tmp_path, umask, mode):
    from cnnlab import data
    from tests.test_data import make_folder

    for k, v in one_run_store.items():
        monkeypatch.setenv(k, v)
    old = os.umask(umask)
    try:
        for name in ("log.xlsx", "log.csv", "log.md"):
            code, _, err = cli("export-log", str(tmp_path / name))
            assert code == 0, err
            assert (tmp_path / name).stat().st_mode & 0o777 == mode, name
        monkeypatch.setenv("CNNLAB_DATA_DIR", str(tmp_path / "cache"))
        data.import_dataset(make_folder(tmp_path / "folder"))
        assert (tmp_path / "cache" / data.CACHE_NAME).stat().st_mode & 0o777 == mode
    finally:
        os.umask(old)


def test_every_run_is_charted_one_chart_a_page():
    """18 runs: two charts per curve (runs 1-12 and 13-18), never 'the first 12 of 18', each on its own page."""
    from types import SimpleNamespace

    from openpyxl import Workbook

    from cnnlab import export

    curves = pd.DataFrame([{"ID": f"T{i}", "epoch": e, "val_acc": 0.1 * e, "epoch_test_acc": 0.1 * e,
                            "val_loss": 1 / e} for i in range(18) for e in (1, 2)])
    wb = Workbook()
    export._write_curves(wb, SimpleNamespace(curves=curves))
    charts = wb["Charts"]._charts
    titles = [c.title.tx.rich.p[0].r[0].t for c in charts]
    assert len(charts) == 6 and "validation accuracy (runs 13-18 of 18)" in titles
    assert sorted(len(c.series) for c in charts) == [6, 6, 6, 12, 12, 12]
    assert len(wb["Charts"].row_breaks.brk) == 6


def test_a_group_header_is_repeated_on_each_printed_page_it_spans():
    from openpyxl import Workbook

    from cnnlab import columns as cols
    from cnnlab.export import _write_headers

    shown = cols.expand(["blur", "contrast"])
    ws = Workbook().active
    widths = [30] * len(shown)  # wide columns: groups span pages
    pages = _write_headers(ws, shown, widths)
    assert len(pages) > 2
    for page in pages:
        page = ([1] if page is pages[0] else []) + page  # the ID column (A) prints on every page, merged on the first
        for group in {shown[c - 1].group for c in page}:
            first = min(c for c in page if shown[c - 1].group == group)
            assert ws.cell(row=1, column=first).value == group, (page, group)


@pytest.mark.parametrize("metrics, says", [({}, "with TTA on the 50% least confident"),
                                           ({"tta_share_used": 0.2}, "with TTA on the 20% least confident"),
                                           ({"tta_share_used": 0.0}, "with TTA on none")])
def test_the_test_split_says_how_many_test_images_tta_scored(metrics, says):
    """tta_share=0.5, but a budget= run whose time ran out during its final test scored fewer with TTA: the legend of
    TEST SPLIT says what the run did (runs recorded before tta_share_used: what it asked)."""
    from cnnlab.log import Row
    from cnnlab.record.vocabulary import Record

    params = {"tta": True, "tta_share": 0.5, "val_split": 0.1, "data.name": "cifar10", "split.test": 10000}
    record = Record(run_id="r", id="T0", name="n", experiment="e", experiment_id="0", state="FINISHED", start_time=0,
                    params=params, metrics=metrics)
    assert Row(record, "", "", None, "", Path(".")).test_split.endswith(f"test 10k {says}")
