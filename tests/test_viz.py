"""Pictures: orientation of BEV drawings and the preview command."""

import numpy as np
from PIL import Image

from bevjax.geometry import BEVGrid
from bevjax.schema import BEV_CLASS_ID, NUM_BEV_CLASSES, SEMANTIC_CLASS_ID
from bevjax.viz import BEV_PALETTE, colorize_bev, lidar_bev
from bevjax.world import preview


def test_bev_picture_puts_forward_up_and_left_left():
    grid = BEVGrid((-10.0, 10.0, 1.0), (-10.0, 10.0, 1.0))
    labels = np.zeros(grid.shape[:2] + (NUM_BEV_CLASSES,), np.uint8)
    (i, j), _ = grid.cell_index(np.array([8.5, 6.5]))  # ahead and to the left
    labels[i, j, BEV_CLASS_ID["vehicle"]] = 1
    picture = colorize_bev(labels)
    rows, cols = np.nonzero(np.all(picture == BEV_PALETTE["vehicle"], -1))
    assert rows.tolist() == [1] and cols.tolist() == [3]  # near the top, left of centre

    points = np.array([[8.5, 6.5, 0.0], [-8.5, -6.5, 0.0]], np.float32)
    classes = np.array([SEMANTIC_CLASS_ID["vehicle"], SEMANTIC_CLASS_ID["road"]], np.uint8)
    img = lidar_bev(points, np.array([True, True]), classes, grid, scale=1)
    assert img[1, 3].any() and img[18, 16].any() and img.sum(-1).astype(bool).sum() == 2


def test_preview_command_writes_png(tmp_path, capsys):
    out = tmp_path / "p.png"
    preview.main(["--config", "tiny", "--domain", "singapore_night", "--index", "1", "--out", str(out)])
    image = np.asarray(Image.open(out))
    assert image.ndim == 3 and image.shape[0] > 64 and image.std() > 5
    assert "singapore_night/train[1]" in capsys.readouterr().out
