"""NRSeg's PGCM stage (``bevjax/pgcm.py``): the frame score on a known case, the rank correlation against SciPy,
the scatter plot, and the offline pass over a synthetic split with the tiny segmenter of
``tests/test_pv_segmenter.py`` (every frame scored, a second call reuses the stored scores) and its command
line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest
import scipy.stats
from PIL import Image

from bevjax import pgcm
from bevjax.geometry.grid import BEVGrid
from bevjax.geometry.homography import bev_mask_to_camera
from bevjax.schema import NUSCENES_CAMERAS
from bevjax.world.rig import camera_rig
from tests.test_pv_segmenter import CONFIG, ROOT, tiny_run

GRID = BEVGrid((-16.0, 16.0, 1.0), (-16.0, 16.0, 1.0))
HW = (32, 96)


def _frames(b=2):
    """b frames of the six-camera rig at 32 x 96 with a road along x (|y| < 4 m) and one across y (|x| < 3 m)."""
    k, c2e = camera_rig(NUSCENES_CAMERAS, HW)
    centres = GRID.cell_centers()  # x y 2
    road = (np.abs(centres[..., 1]) < 4) | (np.abs(centres[..., 0]) < 3)
    cams = [np.broadcast_to(a, (b, *a.shape)) for a in (k, c2e, np.eye(3, dtype=np.float32)[None].repeat(6, 0),
                                                      np.zeros((6, 3), np.float32))]  # fmt: skip
    return np.broadcast_to(road, (b, *road.shape)), cams


@pytest.mark.parametrize("valid", ["ground", "all"])
def test_prediction_equal_to_the_backprojection_scores_one(valid):
    bev, cams = _frames()
    back = np.asarray(bev_mask_to_camera(bev, GRID, cams[0], cams[1], HW, cams[2], cams[3]))
    assert back.any() and not back.all()
    everywhere = np.ones_like(back)
    out = jax.jit(pgcm.frame_scores, static_argnames=("grid", "valid", "supersample"))(
        back, everywhere, bev, *cams, grid=GRID, valid=valid, tau=0.85
    )
    np.testing.assert_array_equal(np.asarray(out["score"]), [1.0, 1.0])
    np.testing.assert_array_equal(np.asarray(out["weight"]), [1.0, 1.0])
    np.testing.assert_array_equal(np.asarray(out["camera_scores"]), np.ones((2, 6)))
    np.testing.assert_array_equal(np.asarray(out["backprojected"]), back)

    # A prediction that misses part of the road: R is the IoU over the scored pixels, w = R below tau.
    pred = back.copy()
    pred[:, :, 24:] = False  # the bottom rows
    ground = np.zeros_like(back)
    ground[:, :, 16:] = True  # the segmenter calls the lower half ground
    out = pgcm.frame_scores(pred, ground, bev, *cams, grid=GRID, valid=valid, tau=0.99)
    seen = np.asarray(
        bev_mask_to_camera(bev, GRID, cams[0], cams[1], HW, cams[2], cams[3], return_valid=True)[1]
    )
    scored = seen & ground if valid == "ground" else seen
    p, t = pred & scored, back & scored
    expected = (p & t).sum((1, 2, 3)) / (p | t).sum((1, 2, 3))
    np.testing.assert_allclose(np.asarray(out["score"]), expected, rtol=1e-6)
    assert np.all(expected < 0.99)
    np.testing.assert_allclose(np.asarray(out["weight"]), expected, rtol=1e-6)


def test_spearman_against_scipy():
    rng = np.random.default_rng(1)
    for m in (2, 3, 10, 57, 240):
        x = rng.random(m)
        y = -x + 0.5 * rng.random(m)
        ties = np.round(x * 5) / 5  # many ties
        for a, b in ((x, y), (ties, y), (ties, np.round(y, 1)), (y, x)):
            np.testing.assert_allclose(pgcm.spearman(a, b), scipy.stats.spearmanr(a, b).statistic, atol=1e-12)
            np.testing.assert_allclose(pgcm.pearson(a, b), scipy.stats.pearsonr(a, b).statistic, atol=1e-12)
        np.testing.assert_array_equal(pgcm.rankdata(ties), scipy.stats.rankdata(ties))
    assert np.isnan(pgcm.spearman(np.ones(5), np.arange(5)))  # constant input: undefined (SciPy: NaN too)


def test_scatter_picture_is_readable(tmp_path):
    rng = np.random.default_rng(2)
    noise = rng.random(50)
    score = np.clip(1 - 0.3 * noise + 0.05 * rng.normal(size=50), 0, 1)
    picture = pgcm.scatter_picture(
        noise, score, xlabel="noise_level", ylabel="R", title="R against noise", caption="50 frames",
        hline=0.85, hline_label="tau = 0.85",
    )  # fmt: skip
    assert picture.dtype == np.uint8 and picture.shape[2] == 3
    assert picture.shape[0] >= 500 and picture.shape[1] >= 500
    # Points are drawn (blue) and the tau line (red).
    assert np.any(np.all(picture == pgcm.POINT_COLOUR, -1)) and np.any(
        np.all(picture == pgcm.LINE_COLOUR, -1)
    )


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory):
    """The tiny segmenter run (trained once per session, see tests/test_pv_segmenter.py) and a synthetic split."""
    from bevjax.tasks.pv_segmenter import PVSegmenterTask

    config, workdir, _ = tiny_run(tmp_path_factory)
    task = PVSegmenterTask(config)
    source = task.open_split(config.pgcm.split, pgcm.split_data_config(config, config.pgcm.split))
    return config, workdir, source


def test_offline_pass_scores_every_frame_then_is_reused(segmenter, capsys, monkeypatch):
    config, workdir, source = segmenter
    scores = pgcm.pgcm_scores(source, config, str(workdir), progress=False)
    n = len(source)
    assert len(scores) == n == 4
    records = [scores[i] for i in range(n)]
    r = np.array([x["pgcm_score"] for x in records])
    w = np.array([x["pgcm_weight"] for x in records])
    assert np.all((r >= 0) & (r <= 1))
    np.testing.assert_array_equal(w, np.where(r > config.pgcm.tau, 1.0, r).astype(np.float32))
    noise = np.array([source[i]["noise_level"] for i in range(n)])
    np.testing.assert_array_equal(np.array([x["pgcm_noise_level"] for x in records]), noise)
    assert noise.max() > 0  # a synthetic split
    assert all(x["pgcm_camera_scores"].shape == (len(config.inputs.cameras),) for x in records)
    assert "wrote 4 records" in capsys.readouterr().out

    # Second call: nothing computed, the segmenter not even loaded.
    def fail(*args, **kwargs):
        raise AssertionError("the segmenter was loaded again")

    monkeypatch.setattr(pgcm, "load_segmenter", fail)
    again = pgcm.pgcm_scores(source, config, str(workdir), progress=False)
    assert "already done" in capsys.readouterr().out
    np.testing.assert_array_equal([again[i]["pgcm_score"] for i in range(n)], r)


def test_command_line(segmenter):
    config, workdir, _ = segmenter  # the pass above is stored: the command reads it
    env = dict(os.environ, BEVJAX_DATA_DIR=config.data.data_dir, JAX_PLATFORMS="cpu", BEVJAX_HUGE_PAGES="0")
    cmd = [sys.executable, "-m", "bevjax.pgcm", "--segmenter", str(workdir), "--config", f"{CONFIG}:tiny",
           f"--config.data.data_dir={config.data.data_dir}", "--split", "boston_synthetic_train"]  # fmt: skip
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    out = result.stdout
    assert (
        "already done" in out
        and "frames: 4" in out
        and "Spearman rank correlation of R with noise_level" in out
    )
    png = workdir / "pgcm_boston_synthetic_train_ground.png"
    assert min(Image.open(png).size) >= 500
    stats = json.loads(png.with_suffix(".json").read_text())
    assert stats["frames"] == 4 and stats["valid"] == "ground" and stats["tau"] == 0.85
    # A split outside the configured domains is one error line.
    bad = subprocess.run(cmd[:-1] + ["singapore_train"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert bad.returncode == 1 and "error: ValueError: --split singapore_train" in bad.stderr, bad.stderr[
        -2000:
    ]


def test_settings_are_checked(segmenter):
    config = segmenter[0]
    for field, value in (("valid", "sky"), ("bev_class", "lane"), ("pv_classes", ("lane",))):
        bad = config.to_dict()
        bad["pgcm"][field] = value
        with pytest.raises(ValueError, match=f"pgcm.{field}"):
            pgcm.settings_of(ml_collections.ConfigDict(bad))
