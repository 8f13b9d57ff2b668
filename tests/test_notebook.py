"""The notebook API (cnnlab/api.py) in a real notebook: tests/notebooks/quickstart.ipynb executed by a Jupyter
kernel (nbclient), as Jupyter and Colab run it."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).parent / "notebooks" / "quickstart.ipynb"


def outputs(cell, kind: str, output_type: str = "execute_result") -> str:
    """The text of a cell's outputs of one MIME type (text/plain, text/html), of its value (execute_result) or of
    what it displayed (display_data); kind "stream": its stdout and stderr."""
    if kind == "stream":
        return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream")
    return "".join(o.get("data", {}).get(kind, "") for o in cell.outputs if o.output_type == output_type)


def test_the_quickstart_notebook_trains_lists_and_shows_a_report(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    trained, listed, shown = code[1], code[2], code[3]
    assert outputs(trained, "text/plain").startswith("('T0', 'FINISHED', ")
    assert "epoch 2/2" in outputs(trained, "stream")  # the progress bar, drawn in the notebook
    assert "run T0" in outputs(trained, "text/plain", "display_data")  # and the run's lines
    table = outputs(listed, "text/html")  # the log, a DataFrame rendered as a table
    assert "<table" in table and "T0" in table and "ACC" in table
    page = outputs(shown, "text/html")  # the run's self-contained page, inline
    assert page.startswith("<iframe srcdoc=") and "synthetic T0" in page and len(page) > 10_000
    assert (tmp_path / "reports" / "synthetic-T0.html").exists()
