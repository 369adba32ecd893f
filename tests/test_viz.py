"""Pictures: orientation of BEV drawings and the preview command."""

import numpy as np
from PIL import Image

from bevjax.geometry import BEVGrid
from bevjax.schema import BEV_CLASS_ID, NUM_BEV_CLASSES, SEMANTIC_CLASS_ID
from bevjax.viz import BEV_PALETTE, MIN_WIDTH, bev_legend, colorize_bev, lidar_bev, semantic_legend
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
    assert image.shape[1] >= MIN_WIDTH
    for name, colour in bev_legend() + semantic_legend():  # both legends, in the bottom quarter
        assert _has_square(np.all(image[image.shape[0] * 3 // 4 :] == colour, -1), 15), name
    assert "singapore_night/train[1]" in capsys.readouterr().out


# Readable pictures: minimum sizes, legends, titles never clipped ---------------------------------------------

# configs/lss.py:tiny: 32 x 32 cells, 96x32 cameras.
TINY_GRID = BEVGrid((-16.0, 16.0, 1.0), (-16.0, 16.0, 1.0))
EMPTY = (30, 30, 30)  # colorize_bev's colour of a cell without label


def _runs(mask_1d: np.ndarray) -> list[int]:
    """Lengths of the runs of True."""
    edges = np.diff(np.concatenate([[0], mask_1d.astype(int), [0]]))
    return (np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)).tolist()


def _has_square(mask: np.ndarray, n: int) -> bool:
    """Whether ``mask`` is True over some n x n square."""
    s = np.pad(mask.astype(int).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    return bool(np.any(s[n:, n:] - s[:-n, n:] - s[n:, :-n] + s[:-n, :-n] == n * n))


def test_prediction_picture_of_a_tiny_run_is_readable_and_has_a_legend():
    from bevjax.viz import MIN_BEV, MIN_CAMERA_WIDTH, MIN_WIDTH, bev_legend, prediction_picture
    from bevjax.viz.layout import FONT_SIZE, text_band, text_width

    nx, ny, _ = TINY_GRID.shape
    images = np.zeros((2, 32, 96, 3), np.uint8)
    images[0], images[1] = (1, 2, 3), (4, 5, 6)
    pred = np.zeros((nx, ny, NUM_BEV_CLASSES), np.uint8)
    pred[28, 7, BEV_CLASS_ID["pedestrian"]] = 1  # ahead: near the top of the panel
    title = "a title much longer than any tiny picture is wide " * 4
    img = prediction_picture(
        images, pred, np.zeros_like(pred), camera_names=["CAM_FRONT", "CAM_BACK"], title=title
    )

    assert img.shape[1] >= MIN_WIDTH and img.dtype == np.uint8
    # Both BEV panels (the only unlabelled cells) at least MIN_BEV pixels on each side, square cells.
    empty = np.all(img == EMPTY, -1)
    assert [r >= MIN_BEV for r in _runs(empty.any(0))] == [True, True]
    assert max(_runs(empty.any(1))) >= MIN_BEV
    ped = np.all(img == BEV_PALETTE["pedestrian"], -1)
    cell = _runs(ped[: img.shape[0] * 3 // 4].any(0))  # the predicted cell, above the legend
    assert cell == [cell[0]] and cell[0] >= MIN_BEV // nx
    # The cameras enlarged to at least MIN_CAMERA_WIDTH each.
    for colour in ((1, 2, 3), (4, 5, 6)):
        assert _runs(np.all(img == colour, -1).any(0))[0] >= MIN_CAMERA_WIDTH
    # The legend, at the bottom: a square swatch of every class colour.
    legend_rows = img[img.shape[0] * 3 // 4 :]
    for name, colour in bev_legend():
        assert _has_square(np.all(legend_rows == colour, -1), FONT_SIZE), name
    # The title wraps: several lines, none reaching into the right padding of its band.
    band = text_band(title, img.shape[1] - 16, 17)
    assert band.shape[0] > 3 * 17 and np.all(band[:, -3:] == 255) and text_width(title, 17) > img.shape[1]
    assert np.all(img[: band.shape[0], -11:] == 255)


def test_wrapped_text_keeps_every_word_within_the_width():
    from bevjax.viz.layout import text_width, titled, wrap_text

    text = "ground truth (dimmed where no camera sees) CAM_FRONT_RIGHT_WITH_A_VERY_LONG_NAME"
    lines = wrap_text(text, 90)
    assert len(lines) > 3 and all(text_width(line) <= 90 for line in lines)
    assert "".join(lines).replace(" ", "") == text.replace(" ", "")
    picture = titled(np.zeros((10, 96, 3), np.uint8), text)
    assert picture.shape[1] == 96 and picture.shape[0] > 10 + 3 * 15
    assert np.all(picture[:-10, -3:] == 255)  # the text stops short of the right edge: nothing clipped


def test_legend_layout_names_every_class_beside_its_swatch():
    from bevjax.viz import legend, semantic_legend
    from bevjax.viz.layout import legend_layout, text_width

    entries = semantic_legend()
    items, height, heading = legend_layout(entries, 300, heading="Camera labels:")
    assert [i.name for i in items] == list(SEMANTIC_CLASS_ID) and heading == ["Camera labels:"]
    image = legend(entries, 300, heading="Camera labels:")
    assert image.shape == (height, 300, 3)
    for item in items:
        x0, y0, x1, y1 = item.swatch
        assert np.all(image[y0 : y1 + 1, x0 : x1 + 1] == item.colour), item.name
        assert x1 < item.text_xy[0] and item.text_xy[0] + text_width(item.name) <= 300
        assert image[item.text_xy[1] : item.text_xy[1] + 15, item.text_xy[0] :].min() < 100  # its name drawn


def test_picture_example_gets_the_source_images_only_when_larger():
    from bevjax.training.evaluation import with_source_images

    class Task:
        picture_uses_source_images = True

    small = {"images": np.zeros((2, 32, 96, 3), np.uint8)}
    raw = {"images": np.zeros((2, 900, 1600, 3), np.uint8)}
    assert with_source_images(Task(), small, raw)["source_images"] is not None
    assert "source_images" not in with_source_images(Task(), small, small)
    assert "source_images" not in with_source_images(object(), small, raw)  # a task that does not ask
