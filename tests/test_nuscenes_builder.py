"""The ``bevjax_nuscenes`` TFDS builder on the real keyframe in ``../shared/data`` (skipped when it is absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bevjax.data.nuscenes import NuScenesTables, load_sample
from bevjax.data.nuscenes import builder as nb
from bevjax.data.nuscenes.source import open_nuscenes_split
from bevjax.data.prepare import main as prepare_main
from bevjax.data.prepare import prepare_nuscenes
from bevjax.data.sources import DatasetNotPreparedError, SplitNotFoundError
from bevjax.geometry.grid import BEVGrid
from bevjax.schema import check_example

DATAROOT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "nuscenes"
VERSION = "v1.0-test"


@pytest.fixture(scope="module")
def tables(nuscenes_tables) -> NuScenesTables:
    return nuscenes_tables


@pytest.fixture(scope="module")
def data_dir(tables, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("nusc_data")
    assert (
        prepare_main(["nuscenes", "--dataroot", str(DATAROOT), "--data_dir", str(out), "--no_progress"]) == 0
    )
    return str(out)


def test_prepared_record_equals_the_loader(tables, data_dir):
    source = open_nuscenes_split(data_dir, "keyframes", "train")
    assert len(source) == 1
    record = source[0]
    check_example(record, nb.KEYFRAMES.spec(), "prepared nuScenes record")
    token = tables.scene_samples(next(iter(tables.tables["scene"])))[0]
    expect = load_sample(tables, token, BEVGrid(), num_points=35_000)
    expect["sequence_id"] = np.int32(0)
    assert sorted(record) == sorted(expect)
    for key, value in expect.items():
        np.testing.assert_array_equal(record[key], value, err_msg=key)  # images: the files' own JPEG bytes


def test_splits_and_domain_views(data_dir):
    builder = nb.BevjaxNuScenes(data_dir=data_dir, config="keyframes")
    assert sorted(builder.info.splits.keys()) == ["mini_train", "train"]  # scene-0061 is in both
    for split in ("singapore_train", "day_train", "dry_train"):
        view = open_nuscenes_split(data_dir, "keyframes", split)
        assert len(view) == 1
        np.testing.assert_array_equal(
            view[0]["bev_labels"], open_nuscenes_split(data_dir, "keyframes", "train")[0]["bev_labels"]
        )
    for split in ("boston_train", "night_train", "rain_train"):
        assert len(open_nuscenes_split(data_dir, "keyframes", split)) == 0
    with pytest.raises(
        SplitNotFoundError, match=r"'val' not found.*available splits: \['mini_train', 'train'\]"
    ):
        open_nuscenes_split(data_dir, "keyframes", "night_val")
    with pytest.raises(DatasetNotPreparedError, match="prepare nuscenes --dataroot"):
        open_nuscenes_split(data_dir, "sweeps10", "train")
    with pytest.raises(ValueError, match="unknown nuScenes config 'nope'"):
        open_nuscenes_split(data_dir, "nope", "train")


def test_prepare_again_is_a_no_op(data_dir, capsys):
    before = sorted(p.stat().st_mtime_ns for p in Path(data_dir).rglob("*.array_record*"))
    assert (
        prepare_main(["nuscenes", "--dataroot", str(DATAROOT), "--data_dir", data_dir, "--no_progress"]) == 0
    )
    assert "already prepared" in capsys.readouterr().out
    assert sorted(p.stat().st_mtime_ns for p in Path(data_dir).rglob("*.array_record*")) == before


def test_custom_config_resizes_in_a_worker_process(tables, tmp_path):
    grid = BEVGrid((-20.0, 20.0, 1.0), (-20.0, 20.0, 1.0))
    cfg = nb.make_config("keyframes", grid=grid, image_hw=(90, 160), num_points=1000, cameras=("CAM_FRONT",))
    assert cfg.name.startswith("custom_") and nb.make_config("keyframes") is nb.KEYFRAMES
    assert (
        nb.make_config(
            "keyframes", grid=grid, image_hw=(90, 160), num_points=1000, cameras=("CAM_FRONT",)
        ).name
        == cfg.name
    )
    prepare_nuscenes(str(DATAROOT), str(tmp_path), cfg, workers=1, progress=False)
    record = open_nuscenes_split(str(tmp_path), cfg, "train")[0]
    check_example(record, cfg.spec(), "custom record")
    token = tables.scene_samples(next(iter(tables.tables["scene"])))[0]
    expect = load_sample(tables, token, grid, (90, 160), 1000, ("CAM_FRONT",))
    for key in ("intrinsics", "cam_to_ego", "bev_labels", "bev_visibility", "lidar_points", "lidar_class"):
        np.testing.assert_array_equal(record[key], expect[key], err_msg=key)
    diff = np.abs(record["images"].astype(int) - expect["images"].astype(int))
    assert diff.mean() < 2.0  # re-encoded as JPEG at quality 95
    assert record["lidar_valid"].all()  # 34,688 points cut to 1000
    with pytest.raises(ValueError, match="unknown nuScenes config fields"):
        nb.make_config("keyframes", image_size=(1, 1))
