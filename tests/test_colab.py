"""The Colab quickstart runs top to bottom (tiny variant, CPU)."""

import os

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("BEVJAX_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("BEVJAX_NOTEBOOK_VARIANT", "tiny")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    nb = nbformat.read(os.path.join(ROOT, "colab", "quickstart.ipynb"), as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": ROOT}})
    try:
        client.execute()
    except Exception as err:  # the cell and its error, not a kernel traceback dump
        pytest.fail(f"notebook failed: {err}")
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert any("image/png" in o.get("data", {}) for o in outputs), "the prediction picture is not shown"
    assert any("mIoU" in str(o.get("data", o.get("text", ""))) for o in outputs)
