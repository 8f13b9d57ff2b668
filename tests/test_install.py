"""Installed like any tool: the wheel carries its configs, and runs go to the user's project."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cnnlab.schema import SOURCE_ROOT

TINY = ["data=synthetic", "data.n_train=300", "data.n_test=100", "epochs=1", "batch_size=50"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """cnnlab's wheel installed into a fresh virtualenv: its own cnnlab, the test environment's dependencies
    (a path file, instead of installing torch's 5 GB again)."""
    import shutil

    root = tmp_path_factory.mktemp("install")
    source = root / "source"  # a copy: building in place would leave build/ and *.egg-info in the checkout
    at_root = {".git", ".venv", "runs", "reports", "data", "build", "dist", ".pytest_cache"}
    shutil.copytree(SOURCE_ROOT, source, ignore=lambda folder, names: [
        n for n in names if (Path(folder) == SOURCE_ROOT and n in at_root) or n == "__pycache__"
        or n.endswith(".egg-info")])
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(root / "dist")], check=True, capture_output=True)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = next((venv / "lib").glob("python*/site-packages"))
    (site / "dependencies.pth").write_text("\n".join(p for p in sys.path if p.endswith("site-packages")) + "\n")
    wheel = next((root / "dist").glob("cnnlab-*.whl"))
    subprocess.run([venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True)
    return venv


def run(venv: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("CNNLAB_RUNS_DIR", "CNNLAB_CONF_DIR", "PYTHONPATH")}
    return subprocess.run([str(venv / "bin" / "cnnlab"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_the_wheel_trains_and_sweeps_in_an_empty_directory(installed, tmp_path):
    where = subprocess.run([installed / "bin" / "python", "-c", "import cnnlab.schema as s; print(s.package_conf())"],
                           cwd=tmp_path, capture_output=True, text=True, check=True).stdout.strip()
    assert where.startswith(str(installed)) and Path(where, "config.yaml").is_file()  # configs inside the package
    empty = tmp_path / "empty"
    empty.mkdir()
    done = run(installed, empty, "train", *TINY, "-q")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "run_dir=" + str(empty / "runs" / "synthetic" / "T0") in done.stdout
    swept = run(installed, empty, "sweep", "lr=0.003,0.001", *TINY, "--name", "s", "-q")
    assert swept.returncode == 0, swept.stderr[-2000:]
    listed = run(installed, empty / "runs", "runs", "--sweep", "s")  # from inside the project too
    assert listed.returncode == 0 and len(listed.stdout.strip().splitlines()) == 3, listed.stderr


@pytest.mark.slow
def test_a_project_layers_its_own_presets_over_cnnlabs(installed, tmp_path):
    project = tmp_path / "project"
    made = run(installed, tmp_path, "init", "project")
    assert made.returncode == 0, made.stderr
    assert (project / "conf" / "config.yaml").is_file() and (project / "runs").is_dir()
    (project / "conf" / "arch" / "mynet.yaml").write_text("# @package _global_\narch:\n  name: lenet5\nepochs: 1\n")
    (project / "conf" / "sweep" / "mine.yaml").write_text("strategy: grid\nspace: [\"lr=0.01,0.02\"]\n")
    deep = project / "notebooks" / "week1"
    deep.mkdir(parents=True)
    shown = run(installed, deep, "train", "arch=mynet", "--cfg")
    assert shown.returncode == 0 and "name: lenet5" in shown.stdout and "epochs: 1" in shown.stdout, shown.stderr
    assert "name: vgg_small" in run(installed, deep, "train", "arch=vgg_small", "--cfg").stdout  # cnnlab's own
    plan = run(installed, deep, "sweep", "sweep=mine", "data=synthetic", "--dry-run")
    assert plan.returncode == 0 and "2 trial(s)" in plan.stdout, plan.stderr
    done = run(installed, deep, "train", "arch=mynet", *TINY[:3], "-q")
    assert done.returncode == 0 and str(project / "runs" / "synthetic" / "T0") in done.stdout, done.stderr[-2000:]
    again = run(installed, tmp_path, "init", "project")
    assert again.returncode == 2 and "already" in again.stderr
