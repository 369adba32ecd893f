"""``python -m bevjax.data.preview`` on the real samples in ``../shared/data`` (skipped when absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bevjax.data.preview import main

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
NUSCENES = SHARED / "nuscenes"
AV2_LOG = SHARED / "av2" / "sensor" / "val" / "7fab2350-7eaf-3b7e-a39d-6937a4c1bede"


def test_nuscenes_picture(tmp_path, capsys):
    if not NUSCENES.is_dir():
        pytest.skip(f"real nuScenes sample not found at {NUSCENES.resolve()} (shared test data absent)")
    assert main(["nuscenes", "--dataroot", str(NUSCENES), "--out", str(tmp_path / "n.png")]) == 0
    img = np.asarray(Image.open(tmp_path / "n.png"))
    assert img.shape == (2 * 225 + 800, 1200, 3) and "wrote" in capsys.readouterr().out
    bev = img[450:, :800]
    assert (np.all(bev == (110, 110, 115), axis=-1)).mean() > 0.05  # drivable area
    assert (np.all(bev == (40, 120, 250), axis=-1)).sum() > 100  # vehicles
    with pytest.raises(IndexError, match="has 1 keyframes"):
        main(["nuscenes", "--dataroot", str(NUSCENES), "--index", "3", "--out", str(tmp_path / "x.png")])


def test_av2_picture(tmp_path):
    if not AV2_LOG.is_dir():
        pytest.skip(f"real Argoverse 2 sample log not found at {AV2_LOG.resolve()} (shared test data absent)")
    assert main(["av2", "--log", str(AV2_LOG), "--out", str(tmp_path / "a.png")]) == 0
    assert np.asarray(Image.open(tmp_path / "a.png")).shape == (400, 800, 3)
    with pytest.raises(IndexError, match="1 pairs"):
        main(["av2", "--log", str(AV2_LOG), "--pair", "1", "--out", str(tmp_path / "x.png")])
