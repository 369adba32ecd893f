"""End to end: the tiny LSS config trains, evaluates and writes its report, on the world and on real nuScenes, in
one process and in two. (Resuming after SIGKILL, a finished run started again and the other promises of the
engine are tested for every task in test_engine.py.)"""

import importlib.util
import json
import os

import jax
import numpy as np
import pytest

from tests.cli import ROOT, run_cli, saved_state

_spec = importlib.util.spec_from_file_location("lss_config", os.path.join(ROOT, "configs", "lss.py"))
lss_config = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lss_config)


def _cli(module, workdir, data_dir, *args, **kw):
    """``python -m bevjax.<module> --config configs/lss.py:tiny --workdir ...`` (see :func:`tests.cli.run_cli`)."""
    return run_cli(module, "configs/lss.py:tiny", workdir, data_dir, *args, **kw)


def _run(workdir, data_dir, *overrides, wait=True):
    result = _cli("train", workdir, data_dir, *overrides, wait=wait)
    return result if not wait else result.stdout


def _final_params(workdir, step):
    """The saved parameters, restored onto this process's first device (whatever devices saved them)."""
    return saved_state(workdir, step)["params"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, data_dir):
    workdir = tmp_path_factory.mktemp("run")
    out = _run(workdir, data_dir, "--config.train.steps=8", "--config.train.checkpoint_every=2")
    return workdir, out


def test_tiny_config_trains_and_reports(tiny_run):
    workdir, out = tiny_run
    assert "IoU per class on boston_val" in out and "drivable_area" in out
    text = (workdir / "eval.json").read_text()
    result = json.loads(text)
    assert result["step"] == 8 and "mIoU" in result and "NaN" not in text  # strict JSON: null, not NaN
    lines = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    losses = [r["train/loss"] for r in lines if "train/loss" in r]
    assert len(losses) >= 3 and losses[-1] < losses[0]
    assert all(np.isfinite(losses))
    assert (workdir / "prediction.png").stat().st_size > 1000
    assert "steps/s" in out and "ETA" in out


def test_evaluate_command_reproduces_the_final_evaluation(tiny_run, data_dir):
    workdir, _ = tiny_run
    trained = json.load(open(workdir / "eval.json"))
    os.remove(workdir / "eval.json")
    result = _cli("evaluate", workdir, data_dir)  # the tiny config says 6 steps: the checkpoint's 8 count
    assert "evaluating step 8" in result.stdout
    evaluated = json.load(open(workdir / "eval.json"))
    assert evaluated.keys() == trained.keys()
    for key, value in trained.items():
        assert evaluated[key] == value, key  # undefined IoUs (no target, no prediction) are null in both


def test_evaluate_on_real_nuscenes_keyframe(tiny_run, data_dir):
    """A world-trained model evaluated on the real nuScenes sample: the path works end to end."""
    dataroot = os.path.join(ROOT, "..", "shared", "data", "nuscenes")
    if not os.path.isdir(dataroot):
        pytest.skip(
            f"real nuScenes sample not found at {os.path.abspath(dataroot)} (shared test data absent)"
        )
    workdir, _ = tiny_run
    out = _cli("evaluate", workdir, data_dir, "--dataset=nuscenes", f"--dataroot={dataroot}").stdout
    assert "IoU per class on nuscenes/v1.0-test" in out
    result = json.load(open(workdir / "eval_nuscenes.json"))
    assert result["step"] == 8 and result["split"] == "nuscenes/v1.0-test"
    assert (workdir / "prediction_nuscenes.png").stat().st_size > 1000
    assert json.load(open(workdir / "eval.json"))["split"] == "boston_val"  # the world result is kept
    result = _cli("evaluate", workdir, data_dir, "--dataset=nuscenes", check=False)
    assert result.returncode != 0 and "--dataroot" in result.stderr


def test_tiny_config_trains_on_real_nuscenes(tmp_path, data_dir):
    """--config.data.dataset=nuscenes prepares the dataroot's keyframes on first use, then trains and evaluates."""
    dataroot = os.path.join(ROOT, "..", "shared", "data", "nuscenes")
    if not os.path.isdir(dataroot):
        pytest.skip(f"real nuScenes sample not found at {os.path.abspath(dataroot)} (shared test data absent)")
    nusc = [
        "--config.data.dataset=nuscenes",
        f"--config.data.nuscenes.dataroot={dataroot}",
        "--config.data.nuscenes.image_hw=(90, 160)",
        "--config.data.nuscenes.num_points=1000",
        "--config.data.train_split=train",
        "--config.data.eval_split=night_train",
    ]
    result = _cli("train", tmp_path, data_dir, *nusc, "--config.train.steps=2", check=False)
    assert "preparing bevjax_nuscenes/custom_" in result.stdout  # first use
    assert result.returncode != 0 and "eval_split 'night_train' has no examples" in result.stderr  # before training
    assert not (tmp_path / "checkpoints").exists() or not os.listdir(tmp_path / "checkpoints")
    out = _run(tmp_path, data_dir, *nusc[:-1], "--config.data.eval_split=singapore_train", "--config.train.steps=2")
    assert "preparing" not in out and "IoU per class on singapore_train" in out
    result = json.load(open(tmp_path / "eval.json"))
    assert result["step"] == 2 and result["split"] == "singapore_train"
    assert (tmp_path / "prediction.png").stat().st_size > 1000


def test_config_variants_and_errors():
    for variant in ("default", "tiny", "full", "nuscenes"):
        c = lss_config.get_config(variant)
        assert c.inputs.image_hw[0] % 32 == 0 and c.inputs.image_hw[1] % 32 == 0
        for lo, hi, res in (c.grid.xbound, c.grid.ybound):  # the BEV encoder halves the grid three times
            assert round((hi - lo) / res) % 8 == 0, variant
    assert lss_config.get_config("full").grid.xbound == (-50.0, 50.0, 0.5)
    assert lss_config.get_config("nuscenes").data.dataset == "nuscenes"
    with pytest.raises(ValueError, match="choose from default, tiny, full, nuscenes"):
        lss_config.get_config("huge")


def test_per_class_pos_weight():
    from bevjax.tasks.lss import LSSTask

    c = lss_config.get_config("tiny")
    c.loss.pos_weight, c.loss.object_pos_weight = 2.0, 5.0
    c.model.classes = ("vehicle", "drivable_area", "pedestrian")
    np.testing.assert_array_equal(LSSTask(c).pos_weight, [5.0, 2.0, 5.0])


def test_bad_override_names_the_key(tmp_path, data_dir):
    result = _cli("train", tmp_path, data_dir, "--config.train.stepz=3", check=False)
    assert result.returncode != 0 and "stepz" in result.stderr
    result = _cli("train", tmp_path, data_dir, "--config.task=nerf", check=False)
    assert result.returncode != 0 and "config.task='nerf'" in result.stderr


def test_two_processes_train_together(tmp_path, data_dir, tiny_run):  # tiny_run: the data is prepared
    """Two CPU processes (jax.distributed on localhost, gloo collectives) run one jitted step over a 2-device
    mesh: both finish, process 0 alone writes the report, and the checkpoint holds trained finite parameters."""
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    workdir = tmp_path / "run"
    procs = [
        _cli("train", workdir, data_dir, "--config.train.steps=4", "--config.train.checkpoint_every=2",
             "--distributed", f"--coordinator_address=localhost:{port}", "--num_processes=2",
             f"--process_id={i}", wait=False)
        for i in range(2)
    ]  # fmt: skip
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for i, (p, out) in enumerate(zip(procs, outs, strict=True)):
        assert p.returncode == 0, f"process {i}:\n{out[-3000:]}"
    assert "IoU per class on boston_val" in outs[0] and "IoU per class" not in outs[1]
    assert json.load(open(workdir / "eval.json"))["step"] == 4
    before, after = jax.tree.leaves(_final_params(workdir, 2)), jax.tree.leaves(_final_params(workdir, 4))
    assert all(np.isfinite(x).all() for x in after)
    assert any(not np.array_equal(a, b) for a, b in zip(before, after, strict=True))  # steps 3-4 trained
