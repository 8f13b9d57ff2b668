"""`cnnlab ui`: serves this project's store on loopback, prints the runs-table URL, stops with its group."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ui(cli):
    """A trained run, then `cnnlab ui` in a subprocess: yields (url, run name, process)."""
    assert cli("train", "data=synthetic", "data.n_train=300", "data.n_test=100", "epochs=1", "-q")[0] == 0
    from cnnlab.record import Store

    client = Store().client
    run = client.search_runs([client.get_experiment_by_name("synthetic").experiment_id])[0]
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "cnnlab.cli", "ui", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("MLflow UI: "):
        proc.kill()
        pytest.fail(f"cnnlab ui printed {line!r}; stderr: {proc.stderr.read()}")
    yield line.split(": ", 1)[1].strip(), run, proc, port
    stop(proc)


def stop(proc) -> None:
    """End a `cnnlab ui` as a user would (Ctrl-C), by its PID."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
def test_ui_url_api_and_clean_stop(ui, cli, tmp_path):
    url, run, proc, port = ui
    assert cli("export-log", str(tmp_path / "log.csv"))[0] == 0  # the workbook links where the UI serves
    import pandas as pd

    link = pd.read_csv(tmp_path / "log.csv")["MLFLOW"][0]
    assert link == f"http://127.0.0.1:{port}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}" \
                   "?workflowType=machine_learning"
    assert url == (f"http://127.0.0.1:{port}/#/experiments/{run.info.experiment_id}/runs"
                   "?workflowType=machine_learning&orderByKey=metrics.%60val_acc_best%60&orderByAsc=false")
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/2.0/mlflow/runs/search", method="POST",
                                     data=json.dumps({"experiment_ids": [run.info.experiment_id]}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        names = [r["info"]["run_name"] for r in json.load(response)["runs"]]
    assert names == [run.info.run_name]
    assert not listening_on_other_interfaces(port)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)
    deadline = time.time() + 10
    while listening(port) and time.time() < deadline:
        time.sleep(0.2)
    assert not listening(port)  # the server's whole process group is gone
    assert server_processes(port) == []


def listening_on_other_interfaces(port: int) -> bool:
    """True if the port also answers on a non-loopback address of this machine."""
    try:
        addresses = {a[4][0] for a in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)}
    except socket.gaierror:
        return False
    for address in addresses - {"127.0.0.1"}:
        if address.startswith("127."):
            continue
        with socket.socket() as s:
            s.settimeout(1)
            if s.connect_ex((address, port)) == 0:
                return True
    return False


def test_ui_unknown_experiment_is_a_clear_error(cli):
    assert cli("train", "data=synthetic", "data.n_train=300", "data.n_test=100", "epochs=1", "-q")[0] == 0
    code, _, err = cli("ui", "--experiment", "nope")
    assert code == 2 and "Unknown experiment 'nope'" in err


def chromium() -> str:
    """The system Chromium, installed with apt when missing (the check installs what it needs)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("Chromium is missing and cannot be installed here (needs root and apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
    subprocess.run(["apt-get", "install", "-y", "-q", "chromium"], env=env, check=True, capture_output=True,
                   timeout=1200)
    return shutil.which("chromium")


@pytest.mark.browser
def test_a_real_browser_finds_the_runs(ui, tmp_path):
    url, run, proc, port = ui
    browser = chromium()
    dom = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
         "--disable-quic", f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=30000",
         "--window-size=1600,1000", "--dump-dom", url],
        capture_output=True, text=True, timeout=180).stdout
    assert run.info.run_name in dom, dom[-2000:]
    assert "Sort: val_acc_best" in dom  # the printed URL opens the table best first


@pytest.mark.slow
def test_ctrl_c_stops_it_even_when_started_with_sigint_ignored(cli):
    """A background job from a script (or a parent such as a test runner) can hand SIGINT down ignored."""
    assert cli("train", "data=synthetic", "data.n_train=300", "data.n_test=100", "epochs=1", "-q")[0] == 0
    proc = subprocess.Popen([sys.executable, "-m", "cnnlab.cli", "ui", "--port", str(free_port())],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        assert proc.stdout.readline().startswith("MLflow UI: ")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
    finally:
        stop(proc)


def server_processes(port: int) -> list:
    """PIDs of processes serving `port` (pgrep's `--` ends its options: the pattern starts with a dash)."""
    return subprocess.run(["pgrep", "-f", "--", f"--port {port}"], capture_output=True, text=True).stdout.split()


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGHUP])
def test_the_server_never_outlives_cnnlab_ui(cli, signum):
    """kill -9 of `cnnlab ui`, or its terminal closing (SIGHUP): its MLflow server stops too."""
    assert cli("train", "data=synthetic", "data.n_train=300", "data.n_test=100", "epochs=1", "-q")[0] == 0
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "cnnlab.cli", "ui", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().startswith("MLflow UI: ")
        assert server_processes(port)
        proc.send_signal(signum)
        proc.wait(timeout=30)
        deadline = time.time() + 30
        while (server_processes(port) or listening(port)) and time.time() < deadline:
            time.sleep(0.5)
        assert server_processes(port) == [] and not listening(port)
    finally:
        stop(proc)


def test_a_taken_port_is_refused(cli):
    assert cli("train", "data=synthetic", "data.n_train=300", "data.n_test=100", "epochs=1", "-q")[0] == 0
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        code, out, err = cli("ui", "--port", str(taken.getsockname()[1]))
    assert code == 2 and "is taken" in err and "MLflow UI:" not in out


def test_without_experiment_the_latest_one_opens(cli):
    for experiment in ("older", "newer"):
        assert cli("train", "data=synthetic", "data.n_train=300", "data.n_test=100", "epochs=1",
                   f"experiment={experiment}", "-q")[0] == 0
    from cnnlab.record import Store

    assert Store().latest_experiment() == "newer"
    code, out, err = cli("runs", "--format", "tsv")  # every command's default: the latest experiment
    assert code == 0, err
    assert len(out.strip().splitlines()) == 2 and "\tFINISHED" in out
