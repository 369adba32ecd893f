"""Checkpoints: state and data-iterator position round-trip, keep-N, latest-step resume, recovery from a damaged
newest checkpoint, template mismatches, and init_from's partial parameter loads."""

import os
import shutil

import flax
import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bevjax.training.checkpoint import Checkpointer, CheckpointError, CheckpointMismatchError, load_params


def _iterator():
    return iter(grain.MapDataset.range(50).seed(3).shuffle().to_iter_dataset().batch(4))


def _next_batch_after(steps: int):
    it = _iterator()
    for _ in range(steps):
        next(it)
    return next(it)


@flax.struct.dataclass
class _State:  # the shape of the trainer's TrainState: fields saved as a dict keyed by their names
    step: jnp.ndarray
    params: dict
    opt_state: object


_TX = optax.adam(1e-3)


def _state(step: int, kernel_rows: int = 2) -> _State:
    params = {"a": {"kernel": jnp.full((kernel_rows, 3), float(step))}, "b": {"bias": jnp.arange(3.0) + step}}
    return _State(step=jnp.int32(step), params=params, opt_state=_TX.init(params))


def test_state_and_iterator_round_trip(tmp_path):
    ckpt = Checkpointer(str(tmp_path / "ckpt"), max_to_keep=2)
    assert ckpt.restore({"w": jnp.zeros(3)}) is None and ckpt.restored_step is None
    it = _iterator()
    for step in range(1, 5):
        next(it)
        ckpt.save(step, {"w": jnp.arange(3.0) * step, "step": jnp.int32(step)}, it)
    ckpt.wait()
    expected = [next(it) for _ in range(3)]
    fresh = _iterator()
    state = ckpt.restore({"w": jnp.zeros(3), "step": jnp.int32(0)}, fresh)
    assert ckpt.latest_step() == 4 and int(state["step"]) == 4 and ckpt.restored_step == 4
    np.testing.assert_array_equal(state["w"], np.arange(3.0) * 4)
    for want in expected:
        np.testing.assert_array_equal(next(fresh), want)
    assert sorted(int(p.name) for p in (tmp_path / "ckpt").iterdir() if p.name.isdigit()) == [3, 4]
    ckpt.close()


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """A workdir whose checkpoints/ holds steps 1..3 of a small train state and the iterator."""
    workdir = tmp_path_factory.mktemp("run")
    ckpt = Checkpointer(str(workdir / "checkpoints"), max_to_keep=3)
    it = _iterator()
    for step in (1, 2, 3):
        next(it)
        ckpt.save(step, _state(step), it)
    ckpt.close()
    return workdir


@pytest.fixture
def run(saved_run, tmp_path):
    """A fresh copy of ``saved_run`` (tests damage it)."""
    shutil.copytree(saved_run, tmp_path / "run")
    return tmp_path / "run"


def _truncate_a_data_file(step_dir):
    state_dir = step_dir / "state"
    files = [p for p in state_dir.rglob("*") if p.is_file() and p.parent.name == "d"]
    files = [p for p in files if p.parent == state_dir / "d"] or files  # the merged OCDBT store is read
    with open(max(files, key=lambda p: p.stat().st_size), "r+b") as f:
        f.truncate(5)


def _damage(kind, step_dir):
    if kind == "truncated_data":
        _truncate_a_data_file(step_dir)
    elif kind == "truncated_manifest":
        with open(step_dir / "state" / "manifest.ocdbt", "r+b") as f:
            f.truncate(5)
    elif kind == "no_metadata":
        os.remove(step_dir / "state" / "_METADATA")
    elif kind == "bad_metadata":
        (step_dir / "state" / "_METADATA").write_text("{not json")
    elif kind == "no_data_item":
        shutil.rmtree(step_dir / "data")


@pytest.mark.parametrize(
    "kind", ["truncated_data", "truncated_manifest", "no_metadata", "bad_metadata", "no_data_item"]
)
def test_damaged_newest_falls_back_and_is_moved_aside(run, kind, capsys):
    ckpt_dir = run / "checkpoints"
    _damage(kind, ckpt_dir / "3")
    ckpt = Checkpointer(str(ckpt_dir), max_to_keep=3)
    it = _iterator()
    state = ckpt.restore(_state(0), it)
    assert ckpt.restored_step == 2 and int(state.step) == 2
    np.testing.assert_array_equal(state.params["a"]["kernel"], np.full((2, 3), 2.0))
    np.testing.assert_array_equal(next(it), _next_batch_after(2))
    out = capsys.readouterr().out
    moved = ckpt_dir / "unreadable" / "3"
    assert "step 3" in out and "unreadable" in out and str(moved) in out
    assert moved.is_dir() and not (ckpt_dir / "3").exists()
    assert ckpt.latest_step() == 2 and ckpt.all_steps() == [1, 2]
    # the run goes on: step 3 is saved again and is then the one a resume reads
    next(it)
    ckpt.save(3, _state(3), it)
    ckpt.wait()
    assert ckpt.latest_step() == 3
    again = Checkpointer(str(ckpt_dir))
    state = again.restore(_state(0), _iterator())
    assert again.restored_step == 3 and int(state.step) == 3
    again.close()
    ckpt.close()


def test_unfinished_save_is_moved_aside(run, capsys):
    ckpt_dir = run / "checkpoints"
    shutil.copytree(ckpt_dir / "3", ckpt_dir / "4.orbax-checkpoint-tmp-1700000000")
    _truncate_a_data_file(ckpt_dir / "4.orbax-checkpoint-tmp-1700000000")
    ckpt = Checkpointer(str(ckpt_dir))
    state = ckpt.restore(_state(0), _iterator())
    assert ckpt.restored_step == 3 and int(state.step) == 3
    assert "4.orbax-checkpoint-tmp-1700000000" in capsys.readouterr().out
    assert (ckpt_dir / "unreadable" / "4.orbax-checkpoint-tmp-1700000000").is_dir()
    ckpt.close()


def test_every_step_damaged_returns_none(run, capsys):
    ckpt_dir = run / "checkpoints"
    for step in (1, 2, 3):
        _damage("no_metadata", ckpt_dir / str(step))
    ckpt = Checkpointer(str(ckpt_dir))
    assert ckpt.restore(_state(0), _iterator()) is None and ckpt.restored_step is None
    assert "no readable checkpoint" in capsys.readouterr().out
    assert ckpt.latest_step() is None and sorted(os.listdir(ckpt_dir / "unreadable")) == ["1", "2", "3"]
    ckpt.close()


def test_missing_iterator_state_everywhere_moves_nothing(run):
    ckpt_dir = run / "checkpoints"
    for step in (1, 2, 3):
        _damage("no_data_item", ckpt_dir / str(step))
    ckpt = Checkpointer(str(ckpt_dir))
    with pytest.raises(CheckpointError, match="nothing was moved"):
        ckpt.restore(_state(0), _iterator())
    assert ckpt.all_steps() == [1, 2, 3]
    ckpt.close()


def test_explicit_unreadable_step_raises(run):
    ckpt_dir = run / "checkpoints"
    _damage("truncated_data", ckpt_dir / "3")
    ckpt = Checkpointer(str(ckpt_dir))
    with pytest.raises(CheckpointError, match=r"step 3 .*unreadable.*--restore_step"):
        ckpt.restore(_state(0), _iterator(), step=3)
    assert (ckpt_dir / "3").is_dir()  # an explicit step is never moved
    with pytest.raises(CheckpointError, match="no checkpoint step 7"):
        ckpt.restore(_state(0), _iterator(), step=7)
    state = ckpt.restore(_state(0), _iterator(), step=2)  # the same process reads on after the failure
    assert ckpt.restored_step == 2 and int(state.step) == 2
    ckpt.close()


def test_template_of_another_shape_names_the_path(run):
    ckpt = Checkpointer(str(run / "checkpoints"))
    with pytest.raises(CheckpointMismatchError, match=r"params/a/kernel: saved \(2, 3\), template \(5, 3\)"):
        ckpt.restore(_state(0, kernel_rows=5), _iterator())
    assert ckpt.all_steps() == [1, 2, 3]  # another config is not damage: nothing moved
    ckpt.close()


def test_load_params_maps_prefixes_and_keeps_the_rest(run, capsys):
    target = {
        "params": {"backbone": {"kernel": jnp.zeros((2, 3))}, "head": {"w": jnp.ones(4)}},
        "model_state": {},
    }
    loaded = load_params(str(run), None, target, {"params/a": "params/backbone"})
    np.testing.assert_array_equal(loaded["params"]["backbone"]["kernel"], np.full((2, 3), 3.0))
    np.testing.assert_array_equal(loaded["params"]["head"]["w"], np.ones(4))
    assert "loaded 1 leaves" in capsys.readouterr().out
    # pairs (the config's form), a given step, and the empty prefix for a whole sub-tree
    loaded = load_params(str(run / "checkpoints"), 2, {"p": _state(0).params}, (("params", "p"),))
    np.testing.assert_array_equal(loaded["p"]["b"]["bias"], np.arange(3.0) + 2)
    whole = load_params(str(run / "checkpoints" / "1"), -1, _state(0), {"": ""})
    assert int(whole.step) == 1 and int(whole.opt_state[0].count) == 0


def test_load_params_lists_every_bad_path(run):
    target = {
        "params": {"backbone": {"kernel": jnp.zeros((5, 3)), "bias": jnp.zeros(3), "extra": jnp.zeros(1)}}
    }
    with pytest.raises(ValueError) as err:
        load_params(str(run), None, target, {"params/a": "params/backbone", "params/b": "params/nowhere"})
    message = str(err.value)
    assert "params/backbone/bias <- params/a/bias" in message
    assert "params/backbone/extra <- params/a/extra" in message
    assert (
        "params/backbone/kernel <- params/a/kernel: source (2, 3) float32, target (5, 3) float32" in message
    )
    assert "nothing under 'params/nowhere'" in message


def test_load_params_skips_an_unreadable_newest_step(run, capsys):
    _damage("truncated_data", run / "checkpoints" / "3")
    loaded = load_params(str(run), None, {"params": _state(0).params}, (("params", "params"),))
    np.testing.assert_array_equal(loaded["params"]["a"]["kernel"], np.full((2, 3), 2.0))
    out = capsys.readouterr().out
    assert "step 3" in out and "unreadable" in out and "step 2" in out
    assert (run / "checkpoints" / "3").is_dir()  # another run's folder is left as it is


def test_truncated_array_file_is_one_line_not_a_screen_of_tracebacks(tmp_path, capfd):
    """A data file of the OCDBT store cut short: orbax's other reads fail too and used to print one traceback
    each (tens of thousands of lines for an LSS run); now only our lines remain."""
    ckpt_dir = tmp_path / "checkpoints"
    def many(step):  # incompressible, so that the arrays live in data files, not inline in the index
        return {f"layer{i}": jax.random.normal(jax.random.key(step * 100 + i), (64, 64)) for i in range(24)}

    ckpt = Checkpointer(str(ckpt_dir), max_to_keep=3)
    for step in (1, 2):
        ckpt.save(step, {"step": jnp.int32(step), "params": many(step)})
    ckpt.close()
    files = [p for p in (ckpt_dir / "2" / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    with open(max(files, key=lambda p: p.stat().st_size), "r+b") as f:
        f.truncate(5000)
    capfd.readouterr()
    ckpt = Checkpointer(str(ckpt_dir), max_to_keep=3)
    state = ckpt.restore({"step": jnp.int32(0), "params": many(0)})
    ckpt.close()
    assert ckpt.restored_step == 1 and int(state["step"]) == 1
    import gc

    gc.collect()  # whatever is left of the failed reads is reported by now
    out, err = capfd.readouterr()
    assert "Traceback" not in err and "exception was never retrieved" not in err, err[-3000:]
    unreadable = [line for line in out.splitlines() if "is unreadable" in line]
    assert len(unreadable) == 1 and "cannot read array params.layer" in unreadable[0], out
