"""The PV segmenter (model and task): shapes, the confusion counts and IoU against NumPy, the label table, and a
few training steps of ``configs/pv_seg.py:tiny`` through the engine (the loss goes down, the report is written).

:func:`tiny_run` trains once per test session into the session's temporary folder; ``tests/test_pgcm.py``
scores a synthetic split with the same run."""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from bevjax.models.pv_segmenter import PVSegmenter, resize_bilinear
from bevjax.schema import SEMANTIC_CLASS_ID, SEMANTIC_CLASSES
from bevjax.tasks.pv_segmenter import IGNORE, confusion_matrix, iou_from_confusion, label_table

CONFIG = "configs/pv_seg.py"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(data_dir):
    """``configs/pv_seg.py:tiny`` reading and writing its data in ``data_dir``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("pv_seg_config", os.path.join(ROOT, CONFIG))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("tiny")
    config.data.data_dir = str(data_dir)
    return config


def tiny_run(tmp_path_factory):
    """``(config, workdir, result)`` of the tiny config trained in process (8 steps), once per session: a later
    call finds the finished run in the session's temporary folder (``result`` is then its eval.json)."""
    from bevjax.training.trainer import train_and_evaluate

    base = tmp_path_factory.getbasetemp()
    config, workdir = tiny_config(base / "pv_seg_data"), base / "pv_seg_tiny"
    if (workdir / "eval.json").exists():
        return config, workdir, json.loads((workdir / "eval.json").read_text())
    return config, workdir, train_and_evaluate(config, str(workdir))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return tiny_run(tmp_path_factory)


def test_trains_through_the_engine_and_the_loss_goes_down(run):
    config, workdir, result = run
    lines = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    loss = [r["train/loss"] for r in lines if "train/loss" in r]
    assert len(loss) == config.train.steps  # log_every 1
    assert np.mean(loss[-2:]) < np.mean(loss[:2]) - 0.1, loss
    classes = tuple(config.model.classes)
    assert classes[0] == "road"
    assert set(result) >= set(classes) | {"mIoU", "pixel_accuracy"}
    assert json.loads((workdir / "eval.json").read_text())["step"] == config.train.steps
    picture = Image.open(workdir / "prediction.png")
    assert picture.size[0] >= 800 and picture.size[1] >= 300
    assert os.path.isdir(workdir / "checkpoints" / str(config.train.steps))


def test_registered_and_follows_the_protocol(run):
    from bevjax.tasks import TASKS, make_task
    from bevjax.tasks.base import Evaluator, Task
    from bevjax.tasks.pv_segmenter import PVSegmenterTask

    config = run[0]
    assert TASKS["pv_segmenter"] == "bevjax.tasks.pv_segmenter:PVSegmenterTask"
    task = make_task(config)
    assert isinstance(task, PVSegmenterTask) and isinstance(task, Task)
    assert all(isinstance(e, Evaluator) for e in task.evaluators())
    example = task.eval_example(task.eval_source()[0])
    assert set(example) == {"images", "pv_labels"}
    n = len(config.inputs.cameras)
    assert example["images"].shape == (n, *config.inputs.image_hw, 3)
    assert example["pv_labels"].shape == (n, *config.inputs.image_hw)
    assert np.all(example["pv_labels"] < len(task.classes))  # every world class is a model class


@pytest.mark.parametrize("stride", [8, 4])
def test_model_shapes(stride):
    model = PVSegmenter(num_classes=5, stride=stride, features=8, trunk_depth=0.1)
    images = jax.ShapeDtypeStruct((2, 3, 64, 96, 3), jnp.uint8)
    variables = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, False), images)
    (logits, aux), _ = jax.eval_shape(
        lambda v, x: model.apply(
            v, x, True, rngs={"dropout": jax.random.PRNGKey(1)}, mutable=["batch_stats"]
        ),
        variables,
        images,
    )
    assert logits.shape == (2, 3, 64, 96, 5) and logits.dtype == jnp.float32
    assert aux["coarse_logits"].shape == (2, 3, 64 // stride, 96 // stride, 5)
    assert aux["features"].shape == (2, 3, 64 // stride, 96 // stride, 8)
    with pytest.raises(ValueError, match="multiples of 32"):
        jax.eval_shape(
            lambda x: model.init(jax.random.PRNGKey(0), x, False),
            jax.ShapeDtypeStruct((1, 1, 40, 96, 3), jnp.uint8),
        )


def test_resize_bilinear_uses_half_pixel_centres():
    # A ramp sampled at pixel centres stays a ramp: x2 of values v(i) = i gives (j + 0.5) / 2 - 0.5 inside.
    ramp = jnp.arange(4.0)[None, :, None, None] * jnp.ones((1, 1, 3, 1))  # 1 4 3 1
    up = np.asarray(resize_bilinear(ramp, (8, 6)))[0, :, 0, 0]
    np.testing.assert_allclose(up[1:-1], (np.arange(1, 7) + 0.5) / 2 - 0.5, atol=1e-6)


def test_confusion_and_iou_against_numpy():
    rng = np.random.default_rng(0)
    k = 4
    labels = rng.integers(0, k, (2, 3, 8, 10)).astype(np.uint8)
    labels[rng.random(labels.shape) < 0.2] = IGNORE
    pred = rng.integers(0, k, labels.shape)
    mask = np.array([True, False])[:, None, None, None]
    got = np.asarray(jax.jit(confusion_matrix, static_argnums=2)(pred, labels, k, mask))
    expected = np.zeros((k, k), np.int64)
    for t, p in zip(labels[0].ravel(), pred[0].ravel(), strict=True):
        if t < k:
            expected[t, p] += 1
    np.testing.assert_array_equal(got, expected)
    iou = iou_from_confusion(expected)
    for c in range(k):
        t, p = labels[0] == c, (pred[0] == c) & (labels[0] < k)
        np.testing.assert_allclose(iou[c], (t & p).sum() / (t | p).sum())
    assert np.isnan(iou_from_confusion(np.diag([3, 0]))[1])  # neither labelled nor predicted


def test_label_table():
    classes = ("road", "vehicle", "background")
    table = label_table(classes)
    assert [table[SEMANTIC_CLASS_ID[c]] for c in classes] == [0, 1, 2]
    others = [SEMANTIC_CLASS_ID[c] for c in SEMANTIC_CLASSES if c not in classes]
    assert np.all(table[others] == IGNORE) and table[200] == IGNORE
    with pytest.raises(ValueError, match="unknown"):
        label_table(("road", "lane"))
    with pytest.raises(ValueError, match="distinct"):
        label_table(("road", "road"))
