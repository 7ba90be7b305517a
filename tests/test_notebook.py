"""Runs notebooks/quickstart.ipynb top to bottom (small settings, real offline weights) with nbclient."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_NER_NB_SMALL", "1")
    monkeypatch.setenv("LLM_NER_NB_OUT", str(tmp_path / "nb"))
    nb = nbformat.read(ROOT / "notebooks" / "quickstart.ipynb", as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    assert (tmp_path / "nb" / "report" / "report.html").is_file()
    # every code cell ran, and the training cell displayed the test metrics dict
    assert all(c.execution_count for c in nb.cells if c.cell_type == "code")
    shown = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if "data" in o]
    assert any("'f1'" in o["data"].get("text/plain", "") for o in shown)
