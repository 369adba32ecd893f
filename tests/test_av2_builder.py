"""The ``bevjax_av2`` TFDS builder on the real sample log in ``../shared/data`` (skipped when it is absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bevjax.data.av2 import AV2Log
from bevjax.data.av2 import builder as ab
from bevjax.data.av2.sample import load_pair
from bevjax.data.av2.source import open_av2_split
from bevjax.data.prepare import main as prepare_main
from bevjax.data.sources import SplitNotFoundError
from bevjax.geometry.grid import BEVGrid
from bevjax.schema import check_example

ROOT = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "av2" / "sensor"
LOG = ROOT / "val" / "7fab2350-7eaf-3b7e-a39d-6937a4c1bede"
GRID = BEVGrid((-30.0, 30.0, 1.0), (-30.0, 30.0, 1.0))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    if not LOG.is_dir():
        pytest.skip(f"real Argoverse 2 sample log not found at {LOG.resolve()} (shared test data absent)")
    data_dir = tmp_path_factory.mktemp("av2_data")
    cfg = ab.make_config(grid=GRID, num_points=100_000)
    from bevjax.data.prepare import prepare_av2

    prepare_av2(str(ROOT), str(data_dir), cfg, progress=False)
    return str(data_dir), cfg


def test_record_equals_the_loader(prepared):
    data_dir, cfg = prepared
    source = open_av2_split(data_dir, cfg, "val")
    assert len(source) == 1  # two sweeps: one pair
    record = source[0]
    check_example(record, cfg.spec(), "prepared Argoverse 2 record")
    log = AV2Log(LOG)
    t0, t1 = log.lidar_timestamps()[:2]
    expect = load_pair(log, t0, t1, GRID, 100_000)
    assert sorted(record) == sorted(expect)
    for key, value in expect.items():
        np.testing.assert_array_equal(record[key], value, err_msg=key)
    meta = ab.BevjaxAV2(data_dir=data_dir, config=cfg).info.metadata
    assert meta["logs"] == {"val": [[LOG.name, 0, 1]]}


def test_splits_configs_and_cli(prepared, tmp_path, capsys):
    data_dir, cfg = prepared
    with pytest.raises(SplitNotFoundError, match=r"'train' not found.*\['val'\]"):
        open_av2_split(data_dir, cfg, "train")
    assert ab.make_config() is ab.DEFAULT
    assert ab.make_config(stride=5).name.startswith("custom_") and ab.make_config(stride=5).stride == 5
    with pytest.raises(ValueError, match="unknown Argoverse 2 config fields"):
        ab.make_config(points=3)
    with pytest.raises(ValueError, match="no log with sensors/lidar"):
        ab.BevjaxAV2(data_dir=str(tmp_path), config=cfg).download_and_prepare(
            download_config=__import__("tensorflow_datasets").download.DownloadConfig(manual_dir=str(tmp_path))
        )
    # The CLI on the same root and a stride that keeps the one pair: a custom config named by its content.
    out = tmp_path / "cli"
    assert prepare_main(["av2", "--dataroot", str(ROOT), "--data_dir", str(out), "--stride", "2", "--no_progress"]) == 0
    printed = capsys.readouterr().out
    assert "val" in printed and "open_av2_split" in printed
    assert len(open_av2_split(str(out), ab.make_config(stride=2), "val")) == 1
