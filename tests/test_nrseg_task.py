"""The NRSeg task (bevjax/tasks/nrseg.py) through the engine, on ``configs/nrseg_uda.py:tiny``: 2 training steps
in process with the unlabelled Singapore target stream (finite loss, one metric per loss term, the target's
PV pseudo-label Dice and temporal L1 among them; the target windows carry no label key), the EMA teacher saved
apart from the student and used for evaluation, ``eval.json`` with the multinomial (``mult/``) and evidential
(``edl/``) IoU, AUROC and ECE, and the loss assembly against a sum composed by hand from the loss
functions of ``bevjax.losses.nrseg`` (also with the target's terms).

To keep the file short on a CPU, the convolutions use XLA's implementation and the compiled programs skip XLA's
backend optimisations (as in tests/test_nrseg_model.py).
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bevjax.losses import nrseg as L
from bevjax.models.bidpp import hlse_targets
from bevjax.models.nrseg import NUM_PV_CLASSES, PV_IGNORE, to_pv_classes
from tests.cli import saved_state

STEPS = 2
TERMS = ("dice", "edl", "pv_dice", "temporal", "depth", "consistency")
TARGET_TERMS = ("target_pv_dice", "target_temporal")  # on the unlabelled target windows


def _config(data_dir):
    import importlib.util

    spec = importlib.util.spec_from_file_location("nrseg_uda", "configs/nrseg_uda.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("tiny")
    config.data.data_dir = str(data_dir)
    config.train.steps = STEPS
    config.train.checkpoint_every = STEPS
    config.model.drop_connect_rate = 0.0  # fewer ops to compile
    config.eval.max_examples = 2  # one evaluation batch
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory, fast_compile):
    """The tiny config trained in process: Boston source, Singapore target stream, singapore_synthetic windows
    weighted by PGCM with the session's tiny PV segmenter (tests/test_pv_segmenter.py)."""
    from bevjax.training.trainer import train_and_evaluate
    from tests.test_pv_segmenter import tiny_run

    _, segmenter, _ = tiny_run(tmp_path_factory)
    data_dir = tmp_path_factory.mktemp("data")
    workdir = tmp_path_factory.mktemp("nrseg")
    config = _config(data_dir)
    config.pgcm.segmenter = str(segmenter)
    result = train_and_evaluate(config, str(workdir))
    return config, workdir, result


def test_batches_mix_real_synthetic_and_target_windows(trained):
    """Real windows (w = 1), then round(ratio * b) synthetic windows with their stored PGCM weights; the target
    windows carry the model's inputs only."""
    from bevjax import pgcm
    from bevjax.data.pipeline import make_iterator
    from bevjax.models.nrseg import INPUT_KEYS
    from bevjax.tasks import make_task

    config, _, _ = trained
    task = make_task(config)
    b, t = config.train.batch_size, config.data.window
    n_syn = round(config.data.synthetic_ratio * b)
    batch = next(make_iterator(task.train_dataset(0, b, 0, 1)))
    assert batch["images"].shape[:2] == (b + n_syn, t)
    w = batch["pgcm_weight"]
    assert w.shape == (b + n_syn, t) and w.dtype == np.float32
    np.testing.assert_array_equal(w[:b], 1.0)
    scores = pgcm.synthetic_scores(
        config.pgcm.segmenter, task.synthetic_split(), tau=config.pgcm.tau, data_dir=config.data.data_dir,
        progress=False,
    )  # fmt: skip
    stored = {float(scores[i]["pgcm_weight"]) for i in range(len(scores))}
    assert {float(x) for x in w[b:].ravel()} <= stored
    assert set(batch["target"]) == set(INPUT_KEYS) & set(batch["target"]) and "bev_labels" not in batch["target"]
    assert batch["target"]["images"].shape[:2] == (b, t)
    assert np.asarray(task.sample_weights(batch)).shape == ((b + n_syn) * t,)


def test_labelled_fraction_keeps_the_first_sequences(trained, monkeypatch):
    from bevjax.tasks import make_task

    config, _, _ = trained

    class Frames(list):
        frames_per_sequence = 4
        spec = None

    frames = Frames({"sequence": s, "frame": f} for s in range(8) for f in range(4))
    task = make_task(config.copy_and_resolve_references())  # a copy: the fractions below stay in this test
    monkeypatch.setattr(task, "_open", lambda split: frames)
    for fraction, sequences in ((1.0, 8), (0.5, 4), (0.125, 1), (0.01, 1)):
        task.config.data.labelled_fraction = fraction
        source = task.labelled_source()
        assert len(source) == 4 * sequences and source.frames_per_sequence == 4
        assert {source[i]["sequence"] for i in range(len(source))} == set(range(sequences))
    task.config.data.labelled_fraction = 0.0
    with pytest.raises(ValueError, match="labelled_fraction"):
        task.labelled_source()


def test_trains_with_every_term(trained):
    _, workdir, _ = trained
    lines = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    train = [r for r in lines if "train/loss" in r]
    assert len(train) == STEPS
    for r in train:
        assert np.isfinite(r["train/loss"])
        for term in TERMS + TARGET_TERMS:
            assert np.isfinite(r[f"train/{term}"]), term
    # The consistency ramp of the tiny config (U = 10) at steps 0 and 1; the EMA decays 0 and 1/2.
    ramp = [float(L.consistency_weight(t, 10)) for t in range(STEPS)]
    assert [r["train/consistency_weight"] for r in train] == pytest.approx(ramp, rel=1e-5)
    assert [r["train/ema_decay"] for r in train] == pytest.approx([0.0, 0.5], rel=1e-6)


def test_teacher_is_saved_apart_and_evaluated(trained):
    config, workdir, _ = trained
    from bevjax.tasks import make_task

    state = saved_state(workdir, STEPS)
    ema, params = state["extra"]["ema"], state["params"]
    assert set(ema) == {"params", "batch_stats"}
    diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(a - b).max()), ema["params"], params))
    assert max(diffs) > 0  # the teacher trails the student

    class Saved:  # the saved state's fields, as eval_variables reads them
        extra = state["extra"]
        variables = {"params": params, **state["model_state"]}

    assert make_task(config).eval_variables(Saved) is Saved.extra["ema"]


def test_eval_json_has_both_heads_and_uncertainty(trained):
    _, workdir, result = trained
    saved = json.load(open(workdir / "eval.json"))
    assert saved["step"] == STEPS
    for key in ("mult/mIoU", "mult/drivable_area", "mult/mIoU@best", "edl/mIoU", "edl/drivable_area", "edl/AUROC",
                "edl/ECE", "mult/ECE"):  # fmt: skip
        assert key in saved and key in result, key
    assert 0 <= saved["edl/AUROC"] <= 1 and 0 <= saved["edl/ECE"] <= 1 and 0 <= saved["mult/ECE"] <= 1
    assert (workdir / "prediction.png").stat().st_size > 1000
    assert (workdir / "reliability.png").stat().st_size > 1000  # the evaluator's own picture


def test_loss_assembly_equals_hand_composed_sum(trained):
    """The task's weighted sum on one training batch (with PGCM weights) against the loss functions composed
    here with the weights of METHODS.md: 1 Dice + 0.5 EDL + 0.5 PV Dice + 0.1 L1 + 0.1 CE + ramp x consistency.
    Student and teacher outputs are random arrays of the model's output shapes (``jax.eval_shape``: nothing to
    compile but the losses)."""
    config, _, _ = trained
    from bevjax.models.nrseg import INPUT_KEYS
    from bevjax.tasks import make_task

    task = make_task(config)
    batch = next(iter(task.train_dataset(0, 2, 0, 1)))
    # The target windows carry the model's inputs only: the pipeline dropped their labels.
    assert set(batch["target"]) == set(INPUT_KEYS)
    assert batch["target"]["images"].shape == batch["images"][:2].shape  # the synthetic window follows
    assert not np.array_equal(batch["target"]["images"], batch["images"][:2])  # another domain
    batch = {k: jnp.asarray(v[:2]) for k, v in batch.items() if k != "target"}  # the 2 real windows
    batch["pgcm_weight"] = jnp.array([1.0, 0.4])
    inputs = {k: batch[k] for k in INPUT_KEYS}
    variables = jax.eval_shape(lambda x: task.model.init(jax.random.key(0), **x, train=False), inputs)
    shapes = jax.eval_shape(lambda v, x: task.model.apply(v, **x, train=False), variables, inputs)
    rng = np.random.default_rng(0)

    def fill(s):
        if s.dtype == jnp.bool_:
            return jnp.asarray(rng.random(s.shape) < 0.7)
        return jnp.asarray(rng.normal(size=s.shape).astype(s.dtype))

    (outputs, aux), (teacher, _) = jax.tree.map(fill, shapes), jax.tree.map(fill, shapes)
    for out in (outputs, teacher):
        out["alpha"] = {k: 1.0 + jnp.abs(v) for k, v in out["alpha"].items()}  # concentrations >= 1
    step = 4

    def fold(x):
        return x.reshape((-1,) + x.shape[2:])

    def edl_p(alpha):
        return jnp.concatenate([L.dirichlet_probs(alpha[c])[0] for c in sorted(alpha)], -1)

    def by_hand(outputs, aux, teacher, batch):
        targets = fold(batch["bev_labels"][..., task.class_index])
        vis = fold(batch["bev_visibility"]).astype(jnp.float32)
        w = jnp.repeat(batch["pgcm_weight"], 2)  # per frame of the 2-frame windows
        probs = jax.nn.sigmoid(fold(outputs["logits"]))
        dice = L.dice_loss(probs, targets, weights=w)
        ys, ms = hlse_targets(targets, task.hlse)
        edl = sum(L.edl_mse_loss(fold(outputs["alpha"][c]), ys[c], step, 10, ms[c] * vis, w) for c in ys) / len(ys)
        pv = L.pv_dice_loss(
            fold(outputs["pv_logits"]), fold(to_pv_classes(batch["pv_labels"])), NUM_PV_CLASSES, PV_IGNORE
        )
        l1 = L.temporal_l1(fold(outputs["warped_prev"]), fold(aux["bev_splat"]), fold(outputs["warped_valid"]))
        depth = L.downsample_depth(fold(batch["depth"]), 8)
        ce = L.depth_cross_entropy(fold(outputs["depth_logits"]), depth, (4.0, 44.0, 4.0))
        cons = (
            L.consistency_loss(jax.nn.sigmoid(outputs["logits"]), jax.nn.sigmoid(teacher["logits"]))
            + L.consistency_loss(edl_p(outputs["alpha"]), edl_p(teacher["alpha"]))
            + 0.1 * L.consistency_loss(outputs["bev_feature"], teacher["bev_feature"])
        )
        total = dice + 0.5 * edl + 0.5 * pv + 0.1 * l1 + 0.1 * ce + L.consistency_weight(step, 10) * cons
        unweighted = L.dice_loss(probs, targets)  # without the PGCM weights
        return total, dict(zip(TERMS, (dice, edl, pv, l1, ce, cons), strict=True)), unweighted

    def both(outputs, aux, teacher, batch):
        return task.assemble(outputs, aux, batch, step, teacher), by_hand(outputs, aux, teacher, batch)

    def with_target(outputs, aux, teacher, batch):
        """The same source outputs, the teacher's paired with the target student's (here the source student's,
        halved): consistency on the target, plus the target's PV pseudo-label Dice and temporal L1."""
        t_out = jax.tree.map(lambda x: x * 0.5 if x.dtype != jnp.bool_ else x, outputs)
        t_out["alpha"] = outputs["alpha"]
        teacher = {**teacher, "pv_logits": 10.0 * teacher["pv_logits"]}  # confident: most pixels get a label
        loss, metrics = task.assemble(outputs, aux, batch, step, teacher, (t_out, aux))
        source_only, _ = task.assemble(outputs, aux, batch, step, None)
        labels = L.pseudo_labels(fold(teacher["pv_logits"]), 0.9, PV_IGNORE)
        pv = L.pv_dice_loss(fold(t_out["pv_logits"]), labels, NUM_PV_CLASSES, PV_IGNORE)
        l1 = L.temporal_l1(fold(t_out["warped_prev"]), fold(aux["bev_splat"]), fold(t_out["warped_valid"]))
        cons = (
            L.consistency_loss(jax.nn.sigmoid(t_out["logits"]), jax.nn.sigmoid(teacher["logits"]))
            + L.consistency_loss(edl_p(t_out["alpha"]), edl_p(teacher["alpha"]))
            + 0.1 * L.consistency_loss(t_out["bev_feature"], teacher["bev_feature"])
        )
        ramp = L.consistency_weight(step, 10)
        expected = source_only + ramp * cons + 0.5 * ramp * pv + 0.1 * l1
        return loss, metrics, expected, {"consistency": cons, "target_pv_dice": pv, "target_temporal": l1}

    (loss, metrics), (expected, terms, unweighted) = jax.jit(both)(outputs, aux, teacher, batch)
    for name in TERMS:
        assert float(metrics[name]) == pytest.approx(float(terms[name]), rel=1e-5), name
        assert float(terms[name]) > 0, name
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)
    assert float(terms["dice"]) != pytest.approx(float(unweighted))  # the PGCM weight matters

    loss, metrics, expected, terms = jax.jit(with_target)(outputs, aux, teacher, batch)
    for name, value in terms.items():
        assert float(metrics[name]) == pytest.approx(float(value), rel=1e-5), name
        assert float(value) > 0, name
    assert float(loss) == pytest.approx(float(expected), rel=1e-5)


def test_config_variants_name_their_settings():
    from bevjax.cli import load_config

    expect = {
        "configs/nrseg_uda.py": ("boston_train", ("singapore",), "", "singapore_val", "singapore_synthetic", 0.85),
        "configs/nrseg_uda.py:night": ("boston_train", ("boston_night",), "", "boston_night_val",
                                       "boston_night_synthetic", 0.9),
        "configs/nrseg_uda.py:rain_real_tiny": ("boston_train", ("boston_rain",), "", "boston_rain_val", "", 1.0),
        "configs/nrseg_uda.py:night_nuscenes": ("day_train", (), "night_train", "night_val", "", 0.9),
        "configs/nrseg_ssl.py": ("boston_train", (), "boston_train", "boston_val", "boston_synthetic", 0.85),
        "configs/nrseg_ssl.py:half_real": ("boston_train", (), "boston_train", "boston_val", "", 0.85),
    }  # fmt: skip
    for spec, (train, target_domains, target_split, evaluation, synthetic, tau) in expect.items():
        d = load_config(spec).data
        got = (d.train_split, tuple(d.target_domains), d.target_split, d.eval_split, d.synthetic_domain)
        assert got == (train, target_domains, target_split, evaluation, synthetic), spec
        assert load_config(spec).pgcm.tau == tau, spec
    assert load_config("configs/nrseg_ssl.py:quarter").data.labelled_fraction == 0.25
    for bad in ("configs/nrseg_uda.py:nite", "configs/nrseg_uda.py:night_rain", "configs/nrseg_ssl.py:third"):
        with pytest.raises(ValueError, match="joined by '_'"):
            load_config(bad)
