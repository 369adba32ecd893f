"""The Colab quickstart runs top to bottom (tiny variant) on 8 forced CPU devices, as on an 8-core TPU.

The kernel inherits this process's environment: ``XLA_FLAGS`` gives its JAX 8 host devices, so the tiny
config's batch of 2 has to be scaled to 8 (unscaled, the trainer fails: ``batch_size=2 must be divisible by the
8 devices``). bevjax is installed already, so the notebook neither clones nor installs.
"""

import os

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _text(output) -> str:
    if output.get("output_type") == "stream":
        return output.get("text", "")
    if output.get("output_type") == "error":
        return "\n".join(output.get("traceback", []))
    return str(output.get("data", {}).get("text/plain", ""))


def test_quickstart_notebook_runs_on_8_devices(tmp_path, monkeypatch):
    monkeypatch.setenv("BEVJAX_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("BEVJAX_NOTEBOOK_VARIANT", "tiny")
    monkeypatch.setenv("BEVJAX_NOTEBOOK_STEPS", "2")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    # XLA:CPU runs a step's 8 device programs on one pool of max(cores, devices) threads, and a device can wait
    # in two all-reduces at once (one thread each): with 8 threads the 8th device can find none left, and the
    # step dies after 40 s ("Termination timeout for `all reduce` ... only 7 of them arrived"). NPROC sizes the
    # pool (xla::DefaultThreadPoolSize); 16 threads leave a spare one for every device.
    monkeypatch.setenv("NPROC", "16")
    nb = nbformat.read(os.path.join(ROOT, "colab", "quickstart.ipynb"), as_version=4)
    assert not any(cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), "saved with outputs"
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": ROOT}})
    try:
        client.execute()
    except Exception as err:  # the cell and its error, not a kernel traceback dump
        pytest.fail(f"notebook failed: {err}")
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    text = "\n".join(_text(o) for o in outputs)
    assert "installed already: no install" in text
    assert "backend: cpu" in text
    assert "device count: 8" in text
    assert "train.batch_size 2 -> 8: the batch is split over 8 devices" in text
    assert "eval.batch_size 2 -> 8" in text
    assert "variant tiny: train batch 8, eval batch 8, 2 steps" in text
    assert any("image/png" in o.get("data", {}) for o in outputs), "the prediction picture is not shown"
    assert "mIoU" in text
