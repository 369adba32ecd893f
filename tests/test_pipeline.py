"""Tests of the world dataset on disk and the Grain pipeline: exact round trip, sharding, windows, checkpointing
and the errors for missing data, missing splits, schema mismatches and corrupt files.

The renderer is replaced by ``fake_world`` (tests/conftest.py); ``tiny_world`` is the tiny config prepared once
per session with the fake.
"""

import json
import os
import pickle
import shutil

import grain
import numpy as np
import pytest

from bevjax.data import sources as S
from bevjax.data import world_builder as wb
from bevjax.data.pipeline import WindowSource, make_dataset, make_iterator
from bevjax.data.prepare import default_data_dir, main, prepare_world
from bevjax.schema import check_example
from bevjax.world import sample as world_sample


def _index(example, frames):
    return int(example["sequence_id"]) * frames + int(example["frame_index"])


def test_prepared_splits_equal_render_sample(tiny_world, fake_world):
    data_dir, cfg = tiny_world
    builder = wb.make_builder(data_dir, "tiny")
    assert sorted(builder.info.splits.keys()) == sorted(cfg.split_names())
    for split in cfg.split_names():
        source = S.open_world_split(data_dir, "tiny", split)
        domain, kind = wb.parse_split(split)
        assert len(source) == cfg.num_samples(kind)
        for i in range(len(source)):
            got = source[i]
            want = world_sample.render_sample(cfg.world, domain, kind, i)
            check_example(got, world_sample.example_spec_for(cfg.world), where=f"{split}[{i}]")
            assert sorted(got) == sorted(want)
            for key in want:
                assert np.asarray(got[key]).dtype == np.asarray(want[key]).dtype, key
                np.testing.assert_array_equal(got[key], want[key], err_msg=f"{split}[{i}] {key}")


def test_prepare_is_idempotent_and_cli(tiny_world, fake_world, capsys, monkeypatch):
    data_dir, cfg = tiny_world
    path = wb.make_builder(data_dir, cfg).data_path
    mtime = os.path.getmtime(path / "dataset_info.json")
    assert prepare_world(data_dir, "tiny").data_path == path
    assert main(["world", "--data_dir", data_dir, "--config", "tiny"]) == 0
    out = capsys.readouterr().out
    assert "already prepared" in out and "boston_train" in out and str(path) in out
    assert os.path.getmtime(path / "dataset_info.json") == mtime
    monkeypatch.setenv("BEVJAX_DATA_DIR", "/some/where")
    assert default_data_dir() == "/some/where"


def test_custom_config_name_and_reopen(tmp_path, fake_world):
    cfg = wb.make_builder_config("tiny", domains=("boston_night",), train_sequences=1, val_sequences=0)
    assert (
        cfg.name.startswith("custom_") and cfg.name != wb.make_builder_config("tiny", train_sequences=1).name
    )
    assert wb.make_builder_config("tiny") is wb.TINY_CONFIG
    prepare_world(str(tmp_path), cfg, progress=False)
    source = S.open_world_split(str(tmp_path), cfg.name, "boston_night_train")  # reopened by name alone
    assert source.config.world == cfg.world and len(source) == cfg.world.frames_per_sequence
    with pytest.raises(
        S.SplitNotFoundError, match="boston_night_val.*available splits: \\['boston_night_train'\\]"
    ):
        S.open_world_split(str(tmp_path), cfg.name, "boston_night_val")


def test_sharding_is_disjoint_and_covers(tiny_world):
    data_dir, cfg = tiny_world
    source = S.open_world_split(data_dir, "tiny", "boston_train")
    frames = cfg.world.frames_per_sequence
    for shuffle in (False, True):
        shards = []
        for p in range(3):
            ds = make_dataset(source, batch_size=1, seed=3, shuffle=shuffle, num_epochs=1, drop_remainder=False,
                              process_index=p, process_count=3)  # fmt: skip
            shards.append([_index({k: v[0] for k, v in b.items()}, frames) for b in ds])
        flat = [i for s in shards for i in s]
        assert len(flat) == len(set(flat)) == len(source)
        assert sorted(flat) == list(range(len(source)))
        assert all(abs(len(s) - len(source) / 3) < 1 for s in shards)


def test_windows_are_consecutive_frames_of_one_sequence(tiny_world):
    data_dir, cfg = tiny_world
    source = S.open_world_split(data_dir, "tiny", "singapore_train")
    frames = cfg.world.frames_per_sequence
    windows = WindowSource(source, 3, frames)
    assert len(windows) == cfg.num_sequences["train"] * (frames - 2)
    ds = make_dataset(source, batch_size=2, seed=0, window=3, num_epochs=1, process_index=0, process_count=1)
    seen = set()
    for batch in ds:
        assert batch["images"].shape[:2] == (2, 3) and batch["timestamp"].shape == (2, 3)
        for b in range(2):
            seq, frame = batch["sequence_id"][b], batch["frame_index"][b]
            assert (seq == seq[0]).all() and (np.diff(frame) == 1).all()
            np.testing.assert_array_equal(batch["sequence_start"][b], frame == 0)  # the reset flag
            start = int(seq[0]) * frames + int(frame[0])
            for t in range(3):
                np.testing.assert_array_equal(batch["lidar_points"][b, t], source[start + t]["lidar_points"])
            seen.add(start)
    assert len(seen) == len(windows)


def _unaugmented(example):
    """The fake world's post_rots are random: reset them to the unaugmented identity."""
    n = len(example["images"])
    return {
        **example,
        "post_rots": np.tile(np.eye(3, dtype=np.float32), (n, 1, 1)),
        "post_trans": np.zeros((n, 3), np.float32),
    }


def test_window_frames_share_their_augmentation(tiny_world):
    from bevjax.data.transforms import ImageAug

    data_dir, cfg = tiny_world
    source = S.open_world_split(data_dir, "tiny", "boston_train")
    aug = ImageAug(final_hw=(24, 64), resize_lim=(0.6, 0.9), bot_pct_lim=(0.0, 0.2), rot_lim_deg=(-5.4, 5.4))
    ds = make_dataset(
        source,
        batch_size=2,
        seed=3,
        window=2,
        num_epochs=1,
        transforms=[_unaugmented, aug],
        process_index=0,
        process_count=1,
    )
    batch = next(iter(ds))
    assert batch["images"].shape[:3] == (2, 2, len(cfg.world.cameras))
    np.testing.assert_array_equal(batch["post_rots"][:, 0], batch["post_rots"][:, 1])
    assert not np.allclose(batch["post_rots"][0, 0], batch["post_rots"][1, 0])


class _AddNoise(grain.transforms.RandomMap):
    def random_map(self, element, rng):
        return {**element, "noise_level": np.float32(rng.random())}


def test_iterator_state_restores(tiny_world):
    data_dir, _ = tiny_world
    source = S.open_world_split(data_dir, "tiny", "boston_train")
    kw = dict(batch_size=3, seed=7, transforms=[_AddNoise()], process_index=0, process_count=1)
    it = make_iterator(make_dataset(source, **kw))
    for _ in range(2):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(4)]  # crosses the epoch boundary (8 examples per epoch)
    restored = make_iterator(make_dataset(source, **kw), state=state)
    for want in expected:
        got = next(restored)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    other_seed = next(make_iterator(make_dataset(source, **{**kw, "seed": 8})))
    first = next(make_iterator(make_dataset(source, **kw)))
    assert not np.array_equal(first["noise_level"], other_seed["noise_level"])


def test_worker_process_matches_in_process(tiny_world):
    data_dir, _ = tiny_world
    source = pickle.loads(pickle.dumps(S.open_world_split(data_dir, "tiny", "boston_val")))
    kw = dict(batch_size=2, seed=1, num_epochs=1, process_index=0, process_count=1)
    local = [b["images"] for b in make_dataset(source, **kw)]
    remote = [b["images"] for b in make_dataset(source, worker_count=1, **kw)]
    assert len(local) == len(remote) == 2
    for a, b in zip(local, remote, strict=True):
        np.testing.assert_array_equal(a, b)


def _copy(tiny_world, tmp_path):
    data_dir, _ = tiny_world
    shutil.copytree(data_dir, tmp_path / "data")
    return str(tmp_path / "data")


@pytest.mark.parametrize("damage", ["overwrite", "truncate"])
def test_corrupt_record_names_file_and_index(tiny_world, tmp_path, damage):
    data_dir = _copy(tiny_world, tmp_path)
    source = S.open_world_split(data_dir, "tiny", "boston_train")
    path, first, count, _ = source.files[0]
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        if damage == "overwrite":
            f.seek(size // 2)
            f.write(b"\xa5" * 256)
        else:
            f.truncate(size // 2)
    source = S.open_world_split(data_dir, "tiny", "boston_train")
    errors = []
    for i in range(len(source)):
        try:
            source[i]
        except S.CorruptRecordError as e:
            errors.append((i, str(e)))
    assert errors, "damage went unnoticed"
    i, message = errors[0]
    assert path in message and f"record {i - first} of array_record file" in message
    with pytest.raises(S.CorruptRecordError, match=f"record {i} of array_record file .*boston_train"):
        source[i]


def test_missing_dataset_and_split(tiny_world, tmp_path):
    with pytest.raises(
        S.DatasetNotPreparedError, match="(?s)not prepared in data_dir .*python -m bevjax.data.prepare world"
    ):
        S.open_world_split(str(tmp_path), "tiny", "boston_train")
    data_dir, _ = tiny_world
    with pytest.raises(
        S.SplitNotFoundError, match="split 'paris_train' not found.*'boston_train', 'boston_val'"
    ):
        S.open_world_split(data_dir, "tiny", "paris_train")
    with pytest.raises(ValueError, match="unknown world config 'nope'"):
        S.open_world_split(data_dir, "nope", "boston_train")


def test_schema_mismatch(tiny_world, tmp_path, monkeypatch):
    data_dir = _copy(tiny_world, tmp_path)
    features = wb.make_builder(data_dir, "tiny").data_path / "features.json"
    spec = json.loads(features.read_text())
    dims = spec["featuresDict"]["features"]["lidar_points"]["tensor"]["shape"]["dimensions"]
    dims[0] = "1024"
    features.write_text(json.dumps(spec))
    with pytest.raises(S.SchemaMismatchError, match=r"'lidar_points' in .*features.json has shape \(1024, 3\) "
                       r"dtype float32 but the code expects shape \(2048, 3\) dtype float32"):  # fmt: skip
        S.open_world_split(data_dir, "tiny", "boston_train")

    real_spec = world_sample.example_spec_for
    monkeypatch.setattr(
        S, "example_spec_for", lambda c: {**real_spec(c), "radar": ((4,), np.dtype(np.float32))}
    )
    with pytest.raises(S.SchemaMismatchError, match=r"keys missing there \['radar'\]"):
        S.open_world_split(tiny_world[0], "tiny", "boston_train")


def test_config_mismatch(tiny_world, monkeypatch):
    # As if tiny_config() had changed since the data was prepared.
    monkeypatch.setattr(wb.TINY_CONFIG, "world", wb.TINY_CONFIG.world.replace(seed=1))
    with pytest.raises(S.ConfigMismatchError, match="metadata.json was prepared from another 'tiny' config: "
                       "'world.seed' is 0 there but 1 in the code"):  # fmt: skip
        S.open_world_split(tiny_world[0], "tiny", "boston_train")


def test_prepared_real_world_reads_back_identical(tmp_path):
    """The real renderer: a prepared split reads back exactly what ``render_sample`` returns."""
    cfg = wb.make_builder_config("tiny", domains=("boston_synthetic",), train_sequences=1, val_sequences=1)
    prepare_world(str(tmp_path), cfg, progress=False)
    for split in cfg.split_names():
        source = S.open_world_split(str(tmp_path), cfg, split)
        domain, kind = wb.parse_split(split)
        assert len(source) == cfg.world.frames_per_sequence
        for i in range(len(source)):
            got, want = source[i], world_sample.render_sample(cfg.world, domain, kind, i)
            for key in want:
                np.testing.assert_array_equal(got[key], want[key], err_msg=f"{split}[{i}] {key}")
            assert 0.0 <= float(got["noise_level"]) <= 1.0
