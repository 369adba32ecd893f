"""``python -m bevjax.data.preview`` on the real samples in ``../shared/data`` (skipped when absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bevjax.data.av2.preview import NEXT_SWEEP_COLOUR, POINT_COLOUR
from bevjax.data.nuscenes.preview import bev_legend_entries
from bevjax.data.preview import main
from bevjax.viz import bev_legend

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
NUSCENES = SHARED / "nuscenes"
AV2_LOG = SHARED / "av2" / "sensor" / "val" / "7fab2350-7eaf-3b7e-a39d-6937a4c1bede"


def test_nuscenes_picture(tmp_path, capsys):
    if not NUSCENES.is_dir():
        pytest.skip(f"real nuScenes sample not found at {NUSCENES.resolve()} (shared test data absent)")
    assert main(["nuscenes", "--dataroot", str(NUSCENES), "--out", str(tmp_path / "n.png")]) == 0
    img = np.asarray(Image.open(tmp_path / "n.png"))
    assert "wrote" in capsys.readouterr().out
    # Three 1600x900 cameras a row, shrunk to 400x225, above the 800x800 BEV panel (4 pixels per 0.5 m cell).
    assert img.shape[1] >= 3 * 400 and img.shape[0] >= 2 * 225 + 800 and img.shape[0] * img.shape[1] < 2e6
    assert (tmp_path / "n.png").stat().st_size < 3e6
    assert (np.all(img == (110, 110, 115), axis=-1)).sum() > 0.05 * 800 * 800  # drivable area
    assert (np.all(img == (40, 120, 250), axis=-1)).sum() > 1000  # vehicles (the legend swatch: 225 pixels)
    legend = img[np.flatnonzero(np.all(img == 30, -1).sum(1) > 100).max() + 1 :]  # below the BEV panel
    for name, colour in bev_legend_entries():  # the BEV classes and the LiDAR points
        assert np.all(legend == colour, axis=-1).sum() >= 15 * 15, name
    with pytest.raises(IndexError, match="has 1 keyframes"):
        main(["nuscenes", "--dataroot", str(NUSCENES), "--index", "3", "--out", str(tmp_path / "x.png")])


def test_av2_picture(tmp_path):
    if not AV2_LOG.is_dir():
        pytest.skip(f"real Argoverse 2 sample log not found at {AV2_LOG.resolve()} (shared test data absent)")
    assert main(["av2", "--log", str(AV2_LOG), "--out", str(tmp_path / "a.png")]) == 0
    img = np.asarray(Image.open(tmp_path / "a.png"))
    assert img.shape[0] > 400 and img.shape[1] >= 800  # two 400x400 panels, titles, legends
    legend = img[np.flatnonzero(np.all(img == 20, -1).sum(1) > 100).max() + 1 :]  # below the panels (20 grey)
    for name, colour in bev_legend() + [("sweep t0", POINT_COLOUR), ("sweep t1", NEXT_SWEEP_COLOUR)]:
        assert np.all(legend == colour, axis=-1).sum() >= 15 * 15, name
    with pytest.raises(IndexError, match="1 pairs"):
        main(["av2", "--log", str(AV2_LOG), "--pair", "1", "--out", str(tmp_path / "x.png")])
