"""Offline passes (``bevjax.training.offline``) and derived splits (``bevjax.data.derived``)."""

from __future__ import annotations

import pickle

import chex
import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bevjax.data import derived
from bevjax.data.datasets import open_derived_split
from bevjax.data.sources import DatasetNotPreparedError, PreparedSplitSource, open_world_split
from bevjax.training import offline
from bevjax.training.sharding import make_mesh

# One device for the fixed batch sizes below (test_sharded_over_the_mesh uses them all).
MESH = make_mesh(1)
N, H, W = 21, 4, 6  # 21 examples: 3 chunks of 8 (the last one short), batches of 4 (the last one padded)
SOURCE_ID = derived.source_identity("fake", "tiny", "train")
SPEC = {
    "mean": ((), np.float32),
    "mask": ((H, W), np.bool_),
    "peak": ((2,), np.int32),
}


class FakeSource:
    """A list-like source of schema-like examples; counts reads."""

    def __init__(self, n: int = N):
        rng = np.random.default_rng(0)
        self.examples = [
            {"image": rng.normal(size=(H, W, 3)).astype(np.float32), "frame_index": np.int32(i)}
            for i in range(n)
        ]
        self.reads = 0

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        self.reads += 1
        return self.examples[int(i)]


class Counting:
    """The pass's functions, counting traces of the device function and host calls."""

    def __init__(self, fail_at: int | None = None):
        self.traces, self.host_calls, self.fail_at = 0, 0, fail_at

    def fn(self, variables, batch):
        self.traces += 1  # at trace time: once per compilation
        image = batch["image"]  # b h w c
        gray = image.mean(-1)  # b h w
        return {"mean": gray.mean((1, 2)) * variables["scale"], "mask": gray > variables["threshold"]}

    def host_fn(self, example, outputs):
        self.host_calls += 1
        if self.fail_at is not None and int(example["frame_index"]) == self.fail_at:
            raise KeyboardInterrupt  # the pass killed in the middle of a chunk
        gray = example["image"].mean(-1)
        assert outputs["mask"].shape == (H, W)
        return {"peak": np.array(np.unravel_index(np.argmax(gray), gray.shape)), "unused": np.zeros(3)}


VARIABLES = {"scale": jnp.float32(2.0), "threshold": jnp.float32(0.1)}


def expected(source: FakeSource) -> dict[str, np.ndarray]:
    """The outputs computed directly in NumPy."""
    gray = np.stack([e["image"] for e in source.examples]).mean(-1)  # n h w
    peaks = [np.unravel_index(np.argmax(g), g.shape) for g in gray]
    return {
        "mean": (gray.mean((1, 2)) * 2.0).astype(np.float32),
        "mask": gray > np.float32(0.1),
        "clear": np.abs(gray - 0.1) > 1e-5,  # cells whose mask cannot flip with the summation order
        "peak": np.array(peaks, np.int32),
    }


def run(source, data_dir, counting: Counting, **kw):
    return offline.run_offline_pass(
        source,
        "toy_scores",
        SPEC,
        fn=counting.fn,
        variables=VARIABLES,
        example_fn=lambda ex: {"image": ex["image"]},
        host_fn=counting.host_fn,
        data_dir=data_dir,
        source_id=SOURCE_ID,
        batch_size=4,
        mesh=MESH,
        chunk_size=8,
        progress=kw.pop("progress", False),
        **kw,
    )


def as_arrays(source) -> dict[str, np.ndarray]:
    records = [source[i] for i in range(len(source))]
    return {k: np.stack([np.asarray(r[k]) for r in records]) for k in records[0]}


def test_pass_equals_numpy_and_is_written_as_a_tfds_split(tmp_path, capsys):
    source, counting = FakeSource(), Counting()
    out = run(source, tmp_path, counting, progress=True)
    assert isinstance(out, PreparedSplitSource) and len(out) == N and out.split == "train"
    assert counting.traces == 1  # compiled once: the padded last batch has the full batch's shapes
    assert counting.host_calls == N + 3  # host_fn runs on the 3 padding copies of the last batch too
    got, want = as_arrays(out), expected(source)
    assert set(got) == set(SPEC)
    np.testing.assert_allclose(got["mean"], want["mean"], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(got["mask"][want["clear"]], want["mask"][want["clear"]])
    np.testing.assert_array_equal(got["peak"], want["peak"])
    for key, (shape, dtype) in SPEC.items():
        assert got[key].shape == (N, *shape) and got[key].dtype == dtype, key
    cfg = offline.pass_config(source, "toy_scores", SPEC, source_id=SOURCE_ID)
    assert out.data_path == tmp_path / "bevjax_derived" / cfg.name / "1.0.0"
    assert cfg.name.startswith("toy_scores_")
    # Reopened by name alone, with its metadata; the chunk folder is gone.
    again = open_derived_split(tmp_path, cfg.name)
    assert again.spec == out.spec and len(again) == N
    reopened = derived.BevjaxDerived.resolve_config(str(tmp_path), cfg.name)
    assert reopened.to_json() == cfg.to_json() and reopened.source == SOURCE_ID
    assert not offline.work_dir(tmp_path, cfg).exists()
    assert "21/21" in capsys.readouterr().err  # the bar


def test_identity_and_settings_name_different_folders():
    source = FakeSource(4)
    names = {
        offline.pass_config(source, "toy", SPEC, source_id=SOURCE_ID).name,
        offline.pass_config(source, "toy", SPEC, source_id={**SOURCE_ID, "split": "val"}).name,
        offline.pass_config(source, "toy", SPEC, source_id={**SOURCE_ID, "config": "default"}).name,
        offline.pass_config(source, "toy", SPEC, source_id=SOURCE_ID, settings={"step": 10}).name,
        offline.pass_config(source, "toy", {"mean": ((), np.float32)}, source_id=SOURCE_ID).name,
    }
    assert len(names) == 5
    with pytest.raises(ValueError, match="source_id"):
        offline.pass_config(source, "toy", SPEC)
    with pytest.raises(ValueError, match="pass name"):
        offline.pass_config(source, "Toy-1", SPEC, source_id=SOURCE_ID)


def test_second_run_does_nothing(tmp_path, capsys):
    source = FakeSource()
    first = as_arrays(run(source, tmp_path, Counting()))
    capsys.readouterr()
    counting = Counting()
    source.reads = 0
    out = run(source, tmp_path, counting)
    assert (counting.traces, counting.host_calls, source.reads) == (0, 0, 0)
    printed = capsys.readouterr().out
    assert "already done" in printed and str(out.data_path) in printed
    chex.assert_trees_all_equal(as_arrays(out), first)


def test_resume_after_max_chunks_and_after_a_kill(tmp_path, capsys):
    source = FakeSource()
    whole = as_arrays(run(source, tmp_path / "whole", Counting()))

    data_dir = tmp_path / "resumed"
    cfg = offline.pass_config(source, "toy_scores", SPEC, source_id=SOURCE_ID)
    chunks = offline.work_dir(data_dir, cfg)
    counting = Counting()
    assert run(source, data_dir, counting, max_chunks=1) is None
    assert sorted(p.name for p in chunks.glob("chunk_*")) == ["chunk_00000.npz"]
    assert counting.host_calls == 8
    assert "run again to resume" in capsys.readouterr().out
    with pytest.raises(DatasetNotPreparedError, match="toy_scores"):
        open_derived_split(data_dir, cfg)

    # Killed in the second chunk's last batch: a half-written file from an earlier kill is cleaned up too.
    (chunks / "chunk_00001.npz.tmp").write_bytes(b"cut")
    counting = Counting(fail_at=13)
    with pytest.raises(KeyboardInterrupt):
        run(source, data_dir, counting, progress=True)
    assert sorted(p.name for p in chunks.iterdir()) == ["chunk_00000.npz", "pass.json"]
    assert counting.host_calls == 6  # chunk 0 was not computed again
    assert " 8/21" in capsys.readouterr().err  # the bar started at the finished count

    counting = Counting()
    out = run(source, data_dir, counting, keep_chunks=True, progress=True)
    assert counting.host_calls == 16  # chunks 1 and 2 (the last batch padded to 4)
    assert "8/21" in capsys.readouterr().err
    chex.assert_trees_all_equal(as_arrays(out), whole)  # bit-identical to the uninterrupted pass
    assert sorted(p.name for p in chunks.glob("chunk_*")) == [f"chunk_0000{k}.npz" for k in range(3)]

    with pytest.raises(ValueError, match="chunk_size=8"):
        other = offline.pass_config(FakeSource(20), "toy_scores", SPEC, source_id=SOURCE_ID)
        offline.work_dir(data_dir, other).mkdir(parents=True)
        (offline.work_dir(data_dir, other) / "pass.json").write_text('{"chunk_size": 8}')
        offline.run_offline_pass(
            FakeSource(20),
            "toy_scores",
            SPEC,
            host_fn=Counting().host_fn,
            data_dir=data_dir,
            source_id=SOURCE_ID,
            batch_size=4,
            mesh=MESH,
            chunk_size=4,
            progress=False,
        )


def test_device_only_and_host_only_passes(tmp_path):
    source = FakeSource(10)
    want = expected(source)
    device_spec = {k: SPEC[k] for k in ("mean", "mask")}
    out = offline.run_offline_pass(
        source,
        "device_only",
        device_spec,
        fn=Counting().fn,
        variables=VARIABLES,
        data_dir=tmp_path,
        source_id=SOURCE_ID,
        batch_size=4,
        mesh=MESH,
        chunk_size=4,
        progress=False,
    )
    got = as_arrays(out)
    np.testing.assert_allclose(got["mean"], want["mean"], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(got["mask"][want["clear"]], want["mask"][want["clear"]])

    out = offline.run_offline_pass(
        source,
        "host_only",
        {"peak": SPEC["peak"]},
        host_fn=lambda ex, outputs: {"peak": Counting().host_fn(ex, {"mask": np.zeros((H, W))})["peak"]},
        data_dir=tmp_path,
        source_id=SOURCE_ID,
        batch_size=2,
        mesh=MESH,
        progress=False,
    )
    np.testing.assert_array_equal(as_arrays(out)["peak"], want["peak"])


def test_sharded_over_the_mesh(tmp_path):
    """The batch split over every device (8 with XLA_FLAGS=--xla_force_host_platform_device_count=8)."""
    n = jax.device_count()
    source = FakeSource(3 * n + 1)
    out = offline.run_offline_pass(
        source,
        "sharded",
        {"mean": SPEC["mean"]},
        fn=Counting().fn,
        variables=VARIABLES,
        data_dir=tmp_path,
        source_id=SOURCE_ID,
        batch_size=2 * n,
        progress=False,
    )
    np.testing.assert_allclose(as_arrays(out)["mean"], expected(source)["mean"], rtol=1e-6, atol=1e-6)


def test_outputs_that_do_not_match_the_spec(tmp_path):
    source = FakeSource(4)
    kw = dict(data_dir=tmp_path, source_id=SOURCE_ID, batch_size=2, mesh=MESH, progress=False)
    with pytest.raises(ValueError, match="'peak'"):
        offline.run_offline_pass(source, "a", SPEC, fn=Counting().fn, variables=VARIABLES, **kw)
    with pytest.raises(ValueError, match="'mask' has shape"):
        offline.run_offline_pass(
            source, "b", {"mask": ((W, H), np.bool_)}, fn=Counting().fn, variables=VARIABLES, **kw
        )
    with pytest.raises(ValueError, match="dtype"):
        offline.run_offline_pass(source, "c", {"m": ((), np.int32)}, host_fn=lambda e, o: {"m": 0.5}, **kw)
    with pytest.raises(ValueError, match="fn .* host_fn"):
        offline.run_offline_pass(source, "d", SPEC, **kw)
    with pytest.raises(ValueError, match="multiple of batch_size"):
        offline.run_offline_pass(source, "e", SPEC, host_fn=Counting().host_fn, chunk_size=3, **kw)


def test_zip_source_merges_by_index_and_feeds_grain(tmp_path):
    source = FakeSource(8)
    scores = offline.run_offline_pass(
        source,
        "zip_scores",
        {"score": ((), np.float32)},
        host_fn=lambda ex, outputs: {"score": ex["image"].sum()},
        data_dir=tmp_path,
        source_id=SOURCE_ID,
        batch_size=4,
        mesh=MESH,
        progress=False,
    )
    zipped = derived.ZipSource(source, scores)
    assert len(zipped) == 8 and set(zipped[5]) == {"image", "frame_index", "score"}
    np.testing.assert_allclose(zipped[5]["score"], source.examples[5]["image"].sum(), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(zipped[5]["image"], source.examples[5]["image"])

    clone = pickle.loads(pickle.dumps(zipped))  # Grain worker processes get a pickled copy
    np.testing.assert_array_equal(clone[3]["score"], zipped[3]["score"])
    batches = list(grain.MapDataset.source(zipped).batch(4, drop_remainder=True))
    assert batches[1]["score"].shape == (4,) and batches[1]["image"].shape == (4, H, W, 3)

    with pytest.raises(ValueError, match="8 records.*7"):
        derived.ZipSource(source, [{"score": 0.0}] * 7)
    with pytest.raises(ValueError, match=r"\['image'\]"):
        derived.ZipSource(source, [{"image": 0}] * 8)[0]
    clash = FakeSource(8)
    clash.spec = {"score": ((), np.float32)}
    with pytest.raises(ValueError, match=r"\['score'\]"):
        derived.ZipSource(clash, scores)


def test_pass_over_a_prepared_world_split(tiny_world, tmp_path):
    data_dir, config = tiny_world
    world = open_world_split(data_dir, config, "boston_train")
    assert offline.source_identity_of(world) == derived.source_identity(
        "bevjax_world", "tiny", "boston_train"
    )

    def depth_mean(variables, batch):
        return {"depth_mean": batch["depth"].mean((1, 2, 3))}  # b n h w -> b

    out = offline.run_offline_pass(
        world,
        "depth_mean",
        {"depth_mean": ((), np.float32)},
        fn=depth_mean,
        example_fn=lambda ex: {"depth": ex["depth"]},
        data_dir=tmp_path,
        batch_size=4,
        mesh=MESH,
        progress=False,
    )
    assert out.split == "boston_train" and len(out) == len(world)
    meta = derived.BevjaxDerived.config_from_prepared(str(tmp_path), out.data_path.parent.name)
    assert meta.source == {"dataset": "bevjax_world", "config": "tiny", "split": "boston_train"}
    zipped = derived.ZipSource(world, out)
    for i in (0, len(world) - 1):
        np.testing.assert_allclose(zipped[i]["depth_mean"], world[i]["depth"].mean(), rtol=1e-5)
