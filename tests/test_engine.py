"""The engine's contract with a task, on the toy task of ``tests/toy_task.py`` (an EMA-teacher depth regression
with two parameter groups and sequence windows): in process, and through the command line for init_from, frozen
groups, evaluation of the EMA weights, SIGKILL resume, the non-finite stop, an unreadable newest checkpoint and
parameters sharded over an fsdp mesh axis."""

import json
import os
import shutil
import signal
import time

import jax
import numpy as np
import pytest

from tests import toy_task
from tests.cli import run_cli, saved_state


def _cli(module, workdir, data_dir, *args, **kw):
    """``python -m bevjax.<module> --config tests/toy_task.py --workdir ...`` (see :func:`tests.cli.run_cli`)."""
    return run_cli(module, "tests/toy_task.py", workdir, data_dir, *args, **kw)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, data_dir):
    """The toy task trained 6 steps through the CLI (checkpoints at 2, 4, 6)."""
    workdir = tmp_path_factory.mktemp("toy")
    result = _cli("train", workdir, data_dir)
    return workdir, result.stdout


def test_task_protocol_in_process(tmp_path, data_dir, first_run):  # first_run: the data is prepared
    from bevjax.tasks import make_task
    from bevjax.tasks.base import Evaluator, Task
    from bevjax.training.trainer import train_and_evaluate

    config = toy_task.get_config()
    config.data.data_dir = str(data_dir)
    config.train.steps = 4
    task = make_task(config)
    assert isinstance(task, Task) and all(isinstance(e, Evaluator) for e in task.evaluators())
    result = train_and_evaluate(config, str(tmp_path))
    assert set(result) == {"abs_rel", "rmse"} and np.isfinite(result["rmse"])
    saved = json.load(open(tmp_path / "eval.json"))
    assert saved["step"] == 4 and saved["abs_rel"] == pytest.approx(result["abs_rel"])
    lines = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    train = [r for r in lines if "train/loss" in r]
    # The EMA decay of step t (0-based) is min(1 - 1 / (t + 1), 0.99): logged at steps 1, 2 and 4.
    assert [r["train/ema_decay"] for r in train] == pytest.approx([0.0, 0.5, 0.75])
    # Windows of 2 frames from 4-frame sequences, starting at frames 0, 1 or 2: 0 or 1 sequence start each.
    assert all(0 <= r["train/starts"] <= 2 for r in train)
    assert (tmp_path / "prediction.png").stat().st_size > 1000


def test_extra_state_is_saved_and_evaluated(first_run, data_dir):
    workdir, out = first_run
    assert "compiling the train step" in out and "Depth of the EMA teacher on boston_val" in out
    state = saved_state(workdir, 6)
    assert set(state) >= {"step", "params", "opt_state", "model_state", "extra"}
    ema, params = state["extra"]["ema"], state["params"]
    assert set(ema) == {"params", "batch_stats"}
    # The teacher trails the student: close, not equal.
    diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()), ema["params"], params))
    assert 0 < max(diffs) < 0.1
    trained = json.load(open(workdir / "eval.json"))
    os.remove(workdir / "eval.json")
    out = _cli("evaluate", workdir, data_dir).stdout
    assert "evaluating step 6" in out
    assert json.load(open(workdir / "eval.json")) == trained
    out = _cli("train", workdir, data_dir).stdout  # a finished run started again only evaluates
    assert "at step 6" in out and "trained 0 steps" in out and "Depth of the EMA teacher" in out
    assert json.load(open(workdir / "eval.json")) == trained


def test_init_from_loads_the_encoder_and_a_frozen_group_keeps_it(first_run, data_dir, tmp_path):
    source, _ = first_run
    args = [
        f"--config.init_from.workdir={source}",
        "--config.init_from.mapping=(('params/encoder', 'params/encoder'),)",
        "--config.optim.groups=(('^encoder/', 0.0),)",
        "--config.train.steps=2",
    ]
    _cli("train", tmp_path / "b", data_dir, *args)
    a, b = saved_state(source, 6)["params"], saved_state(tmp_path / "b", 2)["params"]
    jax.tree.map(np.testing.assert_array_equal, b["encoder"], a["encoder"])  # loaded, then frozen
    assert not np.array_equal(b["head"]["kernel"], a["head"]["kernel"])
    bad = args[:1] + ["--config.init_from.mapping=(('params/nothing', 'params/encoder'),)"]
    result = _cli("train", tmp_path / "c", data_dir, *bad, check=False)
    assert result.returncode != 0 and "params/nothing" in result.stdout + result.stderr


def test_killed_run_resumes_bit_identically_with_its_ema(first_run, data_dir, tmp_path):
    reference, _ = first_run
    slow = ["--config.data.read_delay_s=0.1"]
    proc = _cli("train", tmp_path, data_dir, *slow, wait=False)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not (tmp_path / "checkpoints" / "2").is_dir():
        time.sleep(0.02)
    killed = proc.poll() is None  # checkpoint 2 is complete; steps 3-4 run and checkpoint 4 may be mid-write
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert killed, "the run ended before it could be killed"
    out = _cli("train", tmp_path, data_dir).stdout
    assert "resumed from" in out
    want, got = saved_state(reference, 6), saved_state(tmp_path, 6)
    for key in ("params", "extra", "model_state", "opt_state"):
        jax.tree.map(np.testing.assert_array_equal, got[key], want[key])


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(first_run, data_dir, tmp_path):
    result = _cli("train", tmp_path, data_dir, "--config.train.nan_at_step=3", check=False)
    assert result.returncode != 0
    assert "non-finite loss=nan at step 4" in result.stderr and "Traceback" not in result.stderr  # one line
    steps = sorted(int(p) for p in os.listdir(tmp_path / "checkpoints") if p.isdigit())
    assert steps == [2]
    out = _cli("train", tmp_path, data_dir).stdout  # without the fault, it resumes from step 2
    assert "at step 2" in out
    reference, _ = first_run
    jax.tree.map(
        np.testing.assert_array_equal, saved_state(tmp_path, 6)["params"], saved_state(reference, 6)["params"]
    )


def test_unreadable_newest_checkpoint_is_skipped_and_kept(first_run, data_dir, tmp_path):
    reference, _ = first_run
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    os.remove(workdir / "eval.json")
    shutil.rmtree(workdir / "checkpoints" / "6")
    # Step 4 written but cut short: its state's array data truncated.
    state_dir = workdir / "checkpoints" / "4" / "state"
    files = [p for p in state_dir.rglob("*") if p.is_file() and p.stat().st_size > 100 and "METADATA" not in p.name]
    for p in files:
        os.truncate(p, 10)
    result = _cli("train", workdir, data_dir)
    text = result.stdout + result.stderr
    assert "step 4" in text and "unreadable" in text
    assert "at step 2" in result.stdout
    assert (workdir / "checkpoints" / "unreadable" / "4" / "state").is_dir()  # kept, out of the way
    jax.tree.map(
        np.testing.assert_array_equal, saved_state(workdir, 6)["params"], saved_state(reference, 6)["params"]
    )


def test_fsdp_mesh_trains_like_one_device(first_run, data_dir, tmp_path):
    """8 forced CPU devices, a (data 4, fsdp 2) mesh with the encoder's kernels split over fsdp: the saved
    parameters equal those of the same run on one device (float tolerance) and the log names the mesh."""
    args = ["--config.train.batch_size=8", "--config.eval.batch_size=8", "--config.train.steps=2"]
    _cli("train", tmp_path / "one", data_dir, *args)
    fsdp = ["--config.mesh.fsdp=2", "--config.mesh.min_shard_size=64"]
    out = _cli("train", tmp_path / "eight", data_dir, *args, *fsdp, devices=8).stdout
    assert "mesh data=4 x fsdp=2 over 8 cpu device(s)" in out
    one, eight = saved_state(tmp_path / "one", 2), saved_state(tmp_path / "eight", 2)
    for key in ("params", "extra"):
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6), eight[key], one[key])


def test_restore_step_resumes_from_an_older_checkpoint(first_run, data_dir, tmp_path):
    """--restore_step=2 on a finished run: steps 4 and 6 are moved to checkpoints/superseded/, the run trains
    again from step 2 and ends where the uninterrupted run ended (resume is exact)."""
    reference, _ = first_run
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    out = _cli("train", workdir, data_dir, "--restore_step=2").stdout
    assert "checkpoint step 4 is newer than the restored step 2" in out and "at step 2" in out
    assert sorted(os.listdir(workdir / "checkpoints" / "superseded")) == ["4", "6"]
    jax.tree.map(
        np.testing.assert_array_equal, saved_state(workdir, 6)["extra"], saved_state(reference, 6)["extra"]
    )
    result = _cli("train", workdir, data_dir, "--restore_step=9", check=False)
    assert result.returncode != 0 and "no checkpoint step 9" in result.stderr


def test_another_config_on_a_trained_workdir_names_the_fields(first_run, data_dir, tmp_path):
    """A model of another size on a trained workdir: the error names the parameter path, both shapes and the
    config fields that differ from the workdir's config.json, which stays as it was."""
    reference, _ = first_run
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    before = (workdir / "config.json").read_text()
    result = _cli("train", workdir, data_dir, "--config.model.features=16", check=False)
    assert result.returncode != 0
    assert "params/encoder/Conv_0/kernel" in result.stderr
    assert "fields that differ: model.features: 8 there, 16 now" in result.stderr
    assert (workdir / "config.json").read_text() == before
