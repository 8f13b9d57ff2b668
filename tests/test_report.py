"""`cnnlab report` and `cnnlab compare`: the pages hold what the record and the model say, images that decode,
and say what is missing instead of failing."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
import sys

import pytest
import torch

from cnnlab import figures, look
from cnnlab.comparison import sparkline

TINY = ["data=synthetic", "data.n_train=400", "data.n_test=200", "batch_size=50", "epochs=2"]


def h2(page: str) -> list:
    return re.findall(r"<h2>([^<]*)</h2>", page)


def decoded(page: str) -> list:
    """Every embedded image, decoded (PIL raises on a broken one)."""
    from PIL import Image

    images = []
    for data in re.findall(r'src="data:image/png;base64,([^"]+)"', page):
        image = Image.open(io.BytesIO(base64.b64decode(data)))
        image.load()
        images.append(image)
    return images


def notes(page: str) -> list:
    return re.findall(r'<p class="missing">([^<]*)</p>', page)


# ---------------------------------------------------------------- the pieces


def test_each_hand_made_kernel_finds_the_filter_that_is_it():
    """A filter equal to a kernel (in all three channels) matches it with similarity 1, an inverted one with -1, and
    a 5x5 filter holding the kernel off-centre is found too (every 3x3 window counts)."""
    weights = torch.randn(8, 3, 5, 5) * 0.01
    sobel_x = torch.tensor(look.KERNELS["Sobel x"], dtype=torch.float32)
    laplacian = torch.tensor(look.KERNELS["Laplacian"], dtype=torch.float32)
    weights[2, :, 1:4, 1:4] += sobel_x
    weights[5, :, 2:5, 0:3] -= laplacian * 3
    found = {m.kernel: m for m in look.matches(weights)}
    assert found["Sobel x"].filter == 2 and found["Sobel x"].similarity > 0.99
    assert found["Laplacian"].filter == 5 and found["Laplacian"].similarity < -0.99
    assert all(-1.0001 <= m.similarity <= 1.0001 for m in found.values())


def test_the_pareto_front_keeps_runs_no_other_beats():
    points = [(100, 0.70), (50, 0.60), (200, 0.69), (400, 0.80), (50, 0.55), (300, 0.80)]
    assert figures.pareto_front(points) == [1, 0, 5]  # cheapest first; (400, .80) is beaten by (300, .80)


def test_sparklines_share_a_scale():
    assert sparkline({1: 0.0, 2: 0.5, 3: 1.0}, 0.0, 1.0) == "▁▅█"
    assert sparkline({1: 0.5}, 0.0, 1.0) == "▅" and sparkline({}, 0, 1) == ""
    assert sparkline({1: float("nan")}, 0.0, 1.0) == "·"


# ---------------------------------------------------------------- pages from a store


@pytest.fixture(scope="module")
def store_env(tmp_path_factory):
    """T0 (the baseline), T1 (dropout 0.3), sweep `sw` (two lr, two seeds each, and a PRUNED trial), built once.
    The sweep trains 3 epochs: after 2, both lr were still at chance on some CPUs, with the same val_acc for each
    seed, and the page rightly said "tied (identical)" where test_a_sweeps_report wants a p-value."""
    root = tmp_path_factory.mktemp("reports")
    env = {"CNNLAB_RUNS_DIR": str(root / "runs"), "CNNLAB_DATA_DIR": str(root / "data")}
    full = {**os.environ, **env}
    full.pop("MLFLOW_TRACKING_URI", None)
    for args in (["train", *TINY, "-q"], ["train", *TINY, "dropout=0.3", "-q"],
                 ["sweep", *TINY, "epochs=3", "lr=0.01,0.002", "--repeats", "2", "--name", "sw", "-q"]):
        proc = subprocess.run([sys.executable, "-m", "cnnlab.cli", *args], capture_output=True, text=True, env=full)
        assert proc.returncode == 0, proc.stderr
    code = ("from cnnlab.record import Store, Tag\n"
            "s = Store(); parent = s.sweep_parent(s.experiment_id('synthetic'), 'sw')\n"
            "run = s.create_run('synthetic', {Tag.SWEEP: 'sw', Tag.TRIAL: 'T4', Tag.SWEPT: '{\"lr\": \"0.05\"}'},\n"
            "                   parent_run_id=parent.run_id, log_id='sw/T4')\n"
            "run.log_metrics({'val_acc': 0.2, 'train_loss': 2.2}, step=1)\n"
            "run.end('PRUNED', 'pruned after epoch 1')\n")
    subprocess.run([sys.executable, "-c", code], check=True, env=full)
    return env


@pytest.fixture
def on_store(store_env, cli, monkeypatch):
    for k, v in store_env.items():
        monkeypatch.setenv(k, v)
    return cli


@pytest.mark.slow
def test_a_runs_report(on_store, tmp_path):
    out = tmp_path / "T1.html"
    code, stdout, err = on_store("report", "T1", "-o", str(out))
    assert code == 0, err
    assert "synthetic T1" in stdout and str(out) in stdout
    page = out.read_text()
    assert h2(page) == ["The run", "Learning curves", "Classes", "First-layer filters", "Feature maps",
                        "Architecture and cost", "Config"]
    assert notes(page) == []  # a finished run with its checkpoint lacks nothing
    images = decoded(page)
    assert len(images) >= 8 and all(i.width > 0 and i.height > 0 and i.getextrema() != ((255, 255),) * 3
                                    for i in images)
    # the five kernels, each with a filter of tf_cnn's first layer (32 of them)
    rows = re.findall(r"<tr><td>(Sobel x|Sobel y|Prewitt x|Prewitt y|Laplacian)</td><td class=\"num\">(\d+)</td>"
                      r"<td class=\"num\">([+-][\d.]+)</td></tr>", page)
    assert [r[0] for r in rows] == list(look.KERNELS) and all(0 <= int(r[1]) < 32 and abs(float(r[2])) <= 1
                                                               for r in rows)
    # the cost table sums to the parameters the run recorded
    from cnnlab.record import Store

    record = Store().find("T1")
    assert f"{int(record.metrics['params']):,} parameters" in page
    # the config against the baseline T0: dropout differs and is marked
    assert "Against synthetic&#x27;s baseline T0: Added dropout 0.3" in page
    assert re.search(r'<tr class="changed"><td>dropout</td><td>0.3</td><td>0.0</td></tr>', page)
    assert page.count("<figure>") == len(re.findall(r"→ <b>", page)) > 0  # mistakes, with true → predicted
    assert "reports" in Store().list_artifacts(record.run_id)  # logged to the run as well


@pytest.mark.slow
def test_a_sweeps_report(on_store, tmp_path):
    out = tmp_path / "sw.html"
    code, stdout, err = on_store("report", "sw", "-o", str(out))
    assert code == 0, err
    assert "sweep sw (5 runs)" in stdout
    page = out.read_text()
    assert h2(page) == ["Summary", "Optimisation history", "Parameters against the objective",
                        "Mean ± std per configuration", "Accuracy against cost", "Training log"]
    assert "4 FINISHED" in page and "1 PRUNED" in page
    assert len(decoded(page)) == 5  # history, curves, parallel coordinates, configs, Pareto
    assert re.search(r"<td>lr</td><td class=\"num\">1.000</td>", page)  # the one varied parameter explains all
    assert "no error bars" not in page  # two seeds per config: error bars drawn, and a standing for each
    assert re.search(r"<td>lr=0\.\d+</td><td class=\"num\">2</td><td>[\d.]+ ± [\d.]+</td><td>[\d.]+ ± [\d.]+</td>"
                     r"<td>best</td>", page)
    assert re.search(r"<td>lr=0\.\d+</td><td class=\"num\">2</td>.*<td>(tied|below) \(p[=<][\d.e-]+\)</td>", page)
    assert "Tied with the best (not separated by val_acc over their seeds at 95%)" in page
    log_rows = re.findall(r"<tr(?: class=\"best\")?><td>(sw/T\d)</td>", page.split("<h2>Training log</h2>")[1])
    assert sorted(log_rows) == ["sw/T0", "sw/T1", "sw/T2", "sw/T3", "sw/T4"]


@pytest.mark.slow
def test_an_experiments_report_and_what_is_missing(on_store, tmp_path):
    code, stdout, err = on_store("report", "synthetic", "-o", str(tmp_path / "e.html"))
    assert code == 0, err and "experiment synthetic (7 runs)" in stdout
    page = (tmp_path / "e.html").read_text()
    assert re.search(r"<td>dropout</td>", page) and re.search(r"<td>lr</td>", page)  # what varies across runs
    # a KILLED run without a checkpoint, and a run still RUNNING: the page says what is missing, exit 0
    from cnnlab.record import Store

    store = Store()
    killed = store.create_run("synthetic", {})
    killed.end("KILLED", "signal 15 in epoch 1")
    running = store.create_run("synthetic", {})
    for run in (killed, running):
        out = tmp_path / f"{run.id}.html"
        code, _, err = on_store("report", run.id, "-o", str(out))
        assert code == 0, err
        page = out.read_text()
        assert "The model: no checkpoint" in page and "No filters: no checkpoint" in page
        assert "No epoch was recorded" in page
    assert "RUNNING: still training" in (tmp_path / f"{running.id}.html").read_text()
    assert "signal 15 in epoch 1" in (tmp_path / f"{killed.id}.html").read_text()
    running.end("FINISHED")
    code, _, err = on_store("report", "nothing-of-that-name")
    assert code == 2 and "Nothing called 'nothing-of-that-name'" in err and "synthetic" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_compare_shows_what_differs(on_store, tmp_path):
    code, out, err = on_store("compare", "T0", "T1", "sw/T0")
    assert code == 0, err
    assert re.search(r"dropout\s+│\s+0\s+│\s+0.3\s+│\s+0\s", out)
    assert re.search(r"lr\s+│\s+0.003\s+│\s+0.003\s+│\s+0.01\s", out)
    assert "batch_size" not in out and not re.search(r"│ seed\s", out)  # the same in all, or bookkeeping
    # sw/T0 has a second seed: one seed against two says no interval can be computed
    assert re.search(r"seeds\s+│\s+1\s+│\s+1\s+│\s+2\s", out)
    assert "no difference can be shown with 1 and 2 seeds" in " ".join(out.split())
    assert re.search(r"val_acc \([\d.]+\.\.[\d.]+\)\s+│\s+[▁-█]{2}\s", out)
    code, out, err = on_store("compare", "T0", "T1", "--html", "-o", str(tmp_path / "c.html"))
    assert code == 0, err
    page = (tmp_path / "c.html").read_text()
    assert h2(page) == ["What differs", "Scores", "Curves", "Over seeds"] and len(decoded(page)) == 1
    assert "Verdict (test accuracy): no difference can be shown with 1 seed each" in page
    for args, message in ((["T0"], "two runs or configurations or more"), (["T0", "T0"], "a second time"), (["T0", "T99"], "No run")):
        code, _, err = on_store("compare", *args)
        assert code == 2 and message in err and "Traceback" not in err


@pytest.mark.slow
@pytest.mark.browser
def test_a_report_in_a_real_browser(on_store, tmp_path):
    """Headless Chromium opens the page offline: every image decodes (natural size > 0), no console error,
    and a screenshot shows something."""
    from PIL import Image

    from tests.test_ui import chromium

    out = tmp_path / "T0.html"
    assert on_store("report", "T0", "-o", str(out))[0] == 0
    probe = ("<script>window.__errors = [];"
             "addEventListener('error', e => __errors.push(String(e.message || (e.target && e.target.src || '')"
             ".slice(0, 80))), true);"
             "addEventListener('load', () => { const imgs = [...document.images];"
             "document.body.setAttribute('data-probe', JSON.stringify({images: imgs.length,"
             "broken: imgs.filter(i => !i.complete || i.naturalWidth === 0).length, errors: __errors})); });"
             "</script>")
    probed = tmp_path / "probed.html"
    probed.write_text(out.read_text().replace("<head>", "<head>" + probe, 1))
    browser = chromium()
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--disable-background-networking", f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr",
             "--virtual-time-budget=10000", "--window-size=1400,3000"]
    dom = subprocess.run([*flags, "--dump-dom", probed.as_uri()], capture_output=True, text=True, timeout=120)
    found = json.loads(re.search(r"data-probe=\"([^\"]*)\"", dom.stdout).group(1).replace("&quot;", '"'))
    assert found["images"] >= 8 and found["broken"] == 0 and found["errors"] == [], found
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", out.as_uri()], capture_output=True, timeout=120)
    image = Image.open(shot).convert("L")
    assert image.size == (1400, 3000) and sum(1 for n in image.histogram() if n) > 50  # text and pictures, not a blank page


def test_mistakes_are_drawn_from_every_class_of_a_test_set_stored_in_class_order(tmp_path, monkeypatch):
    """An image folder's test set is stored class by class: the report samples across it (seeded, stratified),
    not its first images, which would all be one class."""
    from cnnlab.config import compose
    from cnnlab.data import import_dataset
    from cnnlab.record import Store
    from cnnlab.training import train
    from tests.test_data import make_folder

    import_dataset(make_folder(tmp_path / "f", n_train=10, n_test=20))  # test/: 20 cats, then 20 dogs, 20 frogs
    train(compose(["data=cifar10", "data.download=false", "arch=lenet5", "epochs=1", "batch_size=10",
                   "val_split=0"]), quiet=True)
    monkeypatch.setattr(look, "IMAGES", 15)
    monkeypatch.setattr(look, "MIN_IMAGES", 15)
    loaded = look.load(Store().find("T0"))
    assert sorted(loaded.y_test.tolist()) == [0] * 5 + [1] * 5 + [2] * 5
    assert loaded.index.tolist() != list(range(15))
    again = look.load(Store().find("T0"))
    assert torch.equal(again.index, loaded.index)  # the same sample each time: seeded
    assert torch.equal(loaded.x_test[3], look.load(Store().find("T0")).x_test[3])


def _swept_runs(values, n_params: int):
    import json as _json

    from cnnlab.record import Record, Tag

    runs = []
    for i, value in enumerate(values):
        swept = {f"p{k}": str(0.1 * ((i * (k + 1)) % 5 + 1)) for k in range(n_params)}  # as sweeps record them
        runs.append(Record(f"r{i}", f"s/T{i}", f"s/T{i}", "e", "1", "FINISHED", i, {}, {"val_acc": value},
                           tags={Tag.SWEPT: _json.dumps(swept)}))
    return runs, {r.run_id: r.metrics["val_acc"] for r in runs}


def test_the_parameter_section_reads_well_with_many_parameters_and_says_why_without_importances():
    from cnnlab.reporting import PARALLEL_AXES, _space_section

    runs, values = _swept_runs([0.2, 0.4, 0.5, 0.3, 0.6, 0.7, 0.45, 0.55], n_params=9)
    page = _space_section(runs, values, "val_acc", "maximize", "sweep")
    assert f"The {PARALLEL_AXES} most important of 8 parameters that vary" in page  # p4 is constant
    runs, values = _swept_runs([0.5] * 6, n_params=2)  # every run alike: Optuna's 'zero total variance'
    page = _space_section(runs, values, "val_acc", "maximize", "sweep")
    assert "every finished run has the same val_acc" in page and "variance" not in page


def test_a_one_epoch_trial_is_drawn_as_a_point():
    from cnnlab import figures

    fig = figures.trial_curves([("s/T0", {1: 0.4}, "FINISHED"), ("s/T1", {1: 0.5}, "FINISHED")], "val_acc", "s/T1")
    lines = [line for line in fig.axes[0].get_lines() if len(line.get_xdata())]
    assert len(lines) == 2 and all(line.get_marker() == "o" for line in lines)
