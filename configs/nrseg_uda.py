"""NRSeg (METHODS.md section 2) on the embedded driving world: supervised source training with a Mean Teacher.

Windows of ``data.window`` frames of the labelled source split: Dice + EDL (HLSE) + PV Dice + temporal L1 + depth
CE. With ``data.target_domains`` (UDA, e.g. Boston -> Singapore) every batch also carries unlabelled windows of
``data.target_split`` (default ``<first target domain>_train``; its labels are dropped in the pipeline) under
``'target'``: the Mean Teacher's consistency and the PV Dice against the teacher's PV pseudo-labels
(``mt.pv_threshold``) run on them, the teacher on the clean windows, the student with pixel noise
(``mt.student_noise``). Without target domains the consistency runs on the source batch itself. The teacher is
evaluated. See ``bevjax/tasks/nrseg.py``. Not yet here: synthetic data with PGCM weights in the training mix (the
task reads a batch's ``pgcm_weight`` when present), the semi-supervised and nuScenes variants.

Default (a CPU run; prepares its world data on first use):
    python -m bevjax.train --config configs/nrseg_uda.py --workdir runs/nrseg
Tiny (tests and smoke checks: 2 cameras 32x96, 16x16 grid at 2 m, 3 steps):
    python -m bevjax.train --config configs/nrseg_uda.py:tiny --workdir runs/nrseg_tiny
Evaluate the latest checkpoint (the EMA teacher; writes eval.json and prediction.png):
    python -m bevjax.evaluate --config configs/nrseg_uda.py --workdir runs/nrseg
"""

from __future__ import annotations

import ml_collections

from bevjax.schema import BEV_CLASSES, NUSCENES_CAMERAS
from bevjax.training.defaults import add_engine_sections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = arg or "default"
    if variant not in ("default", "tiny"):
        raise ValueError(f"configs/nrseg_uda.py:{variant}: choose from default, tiny")
    c = ml_collections.ConfigDict()
    c.task = "nrseg"
    c.seed = 0
    c.tensorboard = True

    c.grid = ml_collections.ConfigDict(
        dict(xbound=(-24.0, 24.0, 0.75), ybound=(-24.0, 24.0, 0.75), zbound=(-10.0, 10.0, 20.0))
    )
    c.inputs = ml_collections.ConfigDict(dict(cameras=NUSCENES_CAMERAS, image_hw=(64, 192)))

    c.data = ml_collections.ConfigDict()
    c.data.dataset = "world"
    c.data.data_dir = ""  # default: $BEVJAX_DATA_DIR or ~/bevjax_data
    c.data.domains = ("boston",)
    c.data.train_sequences = 6
    c.data.val_sequences = 2
    c.data.train_split = "boston_train"  # the (labelled) source domain
    c.data.eval_split = "boston_val"
    c.data.target_domains = ()  # UDA: unlabelled target domains (each must be in data.domains); () for none
    c.data.target_split = ""  # default: <first target domain>_train
    c.data.target_batch_size = 0  # 0: train.batch_size
    c.data.worker_count = 0
    c.data.window = 2  # T frames per training window (streaming fusion across them)
    c.data.world = ml_collections.ConfigDict(
        dict(seed=0, frames_per_sequence=40, lidar_beams=8, lidar_azimuths=256)
    )

    c.model = ml_collections.ConfigDict()
    c.model.classes = BEV_CLASSES
    c.model.dbound = (4.0, 45.0, 1.0)
    c.model.context_channels = 64
    c.model.temporal = True
    c.model.evidence = "softplus"
    c.model.drop_connect_rate = 0.2
    c.model.trunk_depth = 1.0
    c.model.remat = "none"
    c.model.dtype = "float32"

    c.augment = ml_collections.ConfigDict(
        dict(resize_lim=(0.9, 1.1), bot_pct_lim=(0.0, 0.1), rot_lim_deg=(-5.4, 5.4), rand_flip=True)
    )

    # Loss weights (METHODS.md: w Dice_BEV + 0.5 w EDL + 0.5 Dice_PV + 0.1 temporal L1 + 0.1 depth CE).
    c.loss = ml_collections.ConfigDict(
        dict(
            dice_weight=1.0,
            edl_weight=0.5,
            pv_weight=0.5,
            temporal_weight=0.1,
            depth_weight=0.1,
            edl_anneal_steps=1000,  # KL weight min(1, step / this)
            dice_relax="denominator",  # how the PGCM weight enters the Dice (bevjax.losses.nrseg.dice_loss)
            visible_only=False,  # Dice over the visible cells only (the EDL term always is)
        )
    )
    # Mean Teacher: consistency on the target batch (on the source batch itself without data.target_domains).
    c.mt = ml_collections.ConfigDict(
        dict(
            enabled=True,
            ema_decay=0.999,
            ramp_steps=1000,  # consistency ramp U: min(low + high exp(-5 (1 - min(t, U) / U)^2), high)
            ramp_low=0.002,
            ramp_high=0.1,
            feature_weight=0.1,  # BEV-feature MSE within the consistency
            student_noise=8.0,  # Gaussian pixel noise (0-255) of the student's images
            pv_threshold=0.9,  # teacher PV pseudo-labels on the target: pixels below this confidence are ignored
            target_pv_weight=0.5,  # x the consistency ramp: Dice_PV(target, PV pseudo-labels)
        )
    )
    c.optim = ml_collections.ConfigDict(
        dict(
            name="adamw",
            lr=1e-3,  # 1e-3 x batch / 4
            weight_decay=1e-2,
            grad_clip=5.0,
            schedule="poly",
            warmup_steps=0,
            power=0.9,
            min_lr=1e-5,
            groups=(),
            no_decay="(bias|scale)$",
        )
    )
    add_engine_sections(c)  # train (batch 4, 400 steps, ...), mesh, init_from
    c.eval = ml_collections.ConfigDict(
        dict(
            batch_size=4,
            threshold=0.5,  # on the probabilities of both heads
            visible_only=False,
            fusion="gated",  # hierarchical_uncertainty: cluster fusion and per-cell reduction
            cell="max",
            max_examples=0,
            picture_index=0,
        )
    )

    if variant == "tiny":
        c.grid.xbound, c.grid.ybound = (-16.0, 16.0, 2.0), (-16.0, 16.0, 2.0)
        c.inputs.cameras = ("CAM_FRONT", "CAM_BACK")
        c.inputs.image_hw = (32, 96)
        c.data.world.frames_per_sequence = 4
        c.data.world.lidar_beams, c.data.world.lidar_azimuths = 2, 64
        c.data.train_sequences, c.data.val_sequences = 1, 1
        c.data.domains = ("boston", "singapore")  # UDA Boston -> Singapore
        c.data.target_domains = ("singapore",)
        c.model.dbound = (4.0, 44.0, 4.0)
        c.model.context_channels = 16
        c.model.trunk_depth = 0.1  # one MBConv block per stage
        c.train.batch_size, c.train.steps, c.train.log_every, c.train.checkpoint_every = 2, 3, 1, 3
        c.eval.batch_size = 2
        c.loss.edl_anneal_steps = 10
        c.mt.ramp_steps = 10
        c.tensorboard = False
    return c
