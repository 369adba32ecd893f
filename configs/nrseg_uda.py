"""NRSeg (METHODS.md section 2) on the embedded driving world: unsupervised domain adaptation with noisy synthetic
data weighted by PGCM, BiDPP/HLSE heads, a Mean Teacher and streaming temporal fusion.

Every batch holds ``train.batch_size`` labelled windows of ``data.window`` frames of the source split, then
``round(data.synthetic_ratio * batch)`` labelled windows of ``data.synthetic_domain`` (images rendered from a
perturbed scene, labels of the true one: the world's stand-in for a driving world model) whose Dice and EDL
terms are weighted by their PGCM weight (``pgcm``: the PV segmenter of ``runs/pv_seg`` scores the synthetic split
once; it is trained there first with ``configs/pv_seg.py``, about 13 minutes on 2 cores, when missing), and
unlabelled windows of the target domain under ``'target'`` (labels dropped in the pipeline) for the Mean Teacher:
consistency and PV pseudo-label Dice against the EMA teacher, which sees them without the student's strong
photometric augmentation (``mt.strong``) and is what is evaluated. See ``bevjax/tasks/nrseg.py``.

Settings (variant; METHODS.md's PGCM tau): ``city`` (default) Boston -> Singapore, tau 0.85; ``night`` Boston ->
Boston night, 0.9; ``rain`` Boston -> Boston rain, 1.0. Modifiers, joined by '_': ``real`` (no synthetic data),
``tiny`` (tests), ``nuscenes`` (the real setting). Semi-supervised settings: ``configs/nrseg_ssl.py``.

Default (a CPU run; renders its world data and, when missing, trains the PGCM segmenter on first use):
    python -m bevjax.train --config configs/nrseg_uda.py --workdir runs/nrseg
  Measured on 2 CPU cores shared with other jobs (runs/pv_seg trained first in 6 min): 640 source/target frames
  rendered in 4:11, 320 synthetic ones in 3:28, the PGCM pass over 240 frames in 9 s, the step compiled in 48 s,
  then 0.10 steps/s (about 10 s a step; 400 steps about 67 min). A full run from a fresh data dir (segmenter,
  renders and PGCM pass included; 400 steps in 6813 s on cores shared with other jobs) gave the EMA teacher on
  singapore_val, multinomial head IoU at p > 0.5: drivable_area 0.509, ped_crossing 0.053, walkway 0.302,
  divider 0.172, vehicle 0.043, stop_line / carpark_area / pedestrian 0.000, mIoU 0.135 (0.154 at the best
  threshold per class); evidential head mIoU 0.083 (0.151 at best), AUROC of its uncertainty for wrong cells
  0.807, ECE 0.077 (multinomial sigmoid 0.031).
    python -m bevjax.train --config configs/nrseg_uda.py:night_real --workdir runs/nrseg_night_real
Tiny (tests and smoke checks: 2 cameras 32x96, 16x16 grid at 2 m, 3 steps; its segmenter runs/pv_seg_tiny):
    python -m bevjax.train --config configs/nrseg_uda.py:tiny --workdir runs/nrseg_tiny
nuScenes (for accelerators: 128x352, 200x200 grid at 0.5 m, batch 12, lr 3e-3; no synthetic frames yet):
    python -m bevjax.train --config configs/nrseg_uda.py:nuscenes --workdir runs/nrseg_nusc \
        --config.data.nuscenes.dataroot=/data/nuscenes
Evaluate the latest checkpoint (the EMA teacher; writes eval.json, prediction.png and reliability.png):
    python -m bevjax.evaluate --config configs/nrseg_uda.py --workdir runs/nrseg
The ablation (five rows, two seeds, UDA and SSL): python benchmarks/nrseg_ablation.py
"""

from __future__ import annotations

import ml_collections

from bevjax.schema import BEV_CLASSES, NUSCENES_CAMERAS
from bevjax.training.defaults import add_engine_sections

SETTINGS = {
    # setting: (source domain, target domain, PGCM tau of METHODS.md)
    "city": ("boston", "singapore", 0.85),
    "night": ("boston", "boston_night", 0.9),
    "rain": ("boston", "boston_rain", 1.0),
}
MODIFIERS = ("real", "tiny", "nuscenes")


def parse_variant(arg: str | None) -> tuple[str, set[str]]:
    """``'night_real_tiny'`` -> ``('night', {'real', 'tiny'})``; ``'default'`` / ``None`` is the city setting."""
    tokens = [t for t in (arg or "default").split("_") if t != "default"]
    settings = [t for t in tokens if t in SETTINGS]
    unknown = [t for t in tokens if t not in SETTINGS and t not in MODIFIERS]
    if unknown or len(settings) > 1 or ("tiny" in tokens and "nuscenes" in tokens):
        raise ValueError(
            f"configs/nrseg_uda.py:{arg}: give at most one setting of {sorted(SETTINGS)} and modifiers "
            f"{list(MODIFIERS)} joined by '_' (not both tiny and nuscenes), e.g. night, rain_real, tiny, "
            "night_real_tiny, nuscenes"
        )
    return (settings[0] if settings else "city"), set(tokens) - set(settings)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    setting, modifiers = parse_variant(arg)
    source, target, tau = SETTINGS[setting]
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
    c.data.domains = (source, target)
    c.data.train_sequences = 6
    c.data.val_sequences = 2
    c.data.train_split = f"{source}_train"  # labelled
    c.data.eval_split = f"{target}_val"
    c.data.labelled_fraction = 1.0  # < 1: only the first sequences of train_split are labelled (configs/nrseg_ssl.py)
    c.data.target_domains = (target,)  # UDA: unlabelled windows of <first>_train under batch['target']
    c.data.target_split = ""  # an unlabelled split of config.data.domains instead (SSL: the train split itself)
    c.data.target_batch_size = 0  # 0: train.batch_size
    # Labelled synthetic windows ('' for none): the domain's images are rendered from a perturbed scene, its labels
    # are the true scene's (the world's stand-in for a driving world model; one world of its own).
    c.data.synthetic_domain = f"{target}_synthetic"
    c.data.synthetic_split = ""  # default <synthetic_domain>_train
    c.data.synthetic_ratio = 0.5  # synthetic windows per labelled real window: round(ratio * batch) are appended
    c.data.worker_count = 0
    c.data.window = 2  # T frames per training window (streaming fusion across them)
    c.data.world = ml_collections.ConfigDict(
        dict(seed=0, frames_per_sequence=40, lidar_beams=8, lidar_azimuths=256)
    )
    c.data.nuscenes = ml_collections.ConfigDict(
        dict(dataroot="", config="keyframes", image_hw=(900, 1600), num_points=35_000, num_sweeps=0, workers=0)
    )

    # PGCM weights of the synthetic frames (bevjax/pgcm.py): the PV segmenter of `segmenter` (trained there first
    # with `segmenter_config` when it has no checkpoint) scores the synthetic split once (stored, reused).
    c.pgcm = ml_collections.ConfigDict(
        dict(
            enabled=True,  # False: every synthetic frame has w = 1
            segmenter="runs/pv_seg",
            segmenter_config="configs/pv_seg.py",
            step=-1,  # the segmenter's checkpoint step (-1: newest)
            tau=tau,  # w = 1 if R > tau else R
        )
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

    # The geometric augmentation (shared by teacher and student: their BEV outputs stay aligned).
    c.augment = ml_collections.ConfigDict(
        dict(resize_lim=(0.9, 1.1), bot_pct_lim=(0.0, 0.1), rot_lim_deg=(-5.4, 5.4), rand_flip=True)
    )

    # Loss weights (METHODS.md: w Dice_BEV + 0.5 w EDL + 0.5 Dice_PV + 0.1 temporal L1 + 0.1 depth CE).
    c.loss = ml_collections.ConfigDict(
        dict(
            dice_weight=1.0,
            edl_weight=0.5,  # 0: no evidential loss (the head is still there, untrained)
            pv_weight=0.5,
            temporal_weight=0.1,
            depth_weight=0.1,
            edl_anneal_steps=200,  # KL weight min(1, step / this): half the CPU run (:nuscenes 1000)
            dice_relax="denominator",  # how the PGCM weight enters the Dice (bevjax.losses.nrseg.dice_loss)
            visible_only=False,  # Dice over the visible cells only (the EDL term always is)
        )
    )
    # Mean Teacher: consistency on the target batch (on the source batch itself without a target stream).
    c.mt = ml_collections.ConfigDict(
        dict(
            enabled=True,
            # The CPU run's schedules are scaled to its 400 steps: the teacher averages about the last 100
            # steps (a 0.999 EMA over 400 steps would be the mean of the whole run, random start included) and
            # the ramps end halfway; :nuscenes has the long run's 0.999 and 1000.
            ema_decay=0.99,
            ramp_steps=200,  # consistency ramp U: min(low + high exp(-5 (1 - min(t, U) / U)^2), high)
            ramp_low=0.002,
            ramp_high=0.1,
            feature_weight=0.1,  # BEV-feature MSE within the consistency
            # The student's strong augmentation (bevjax/ops/photometric.py), per image, on top of the shared
            # geometric one: brightness, contrast, saturation factors in [1 - a, 1 + a], pixel noise std (0-255).
            strong=ml_collections.ConfigDict(dict(brightness=0.3, contrast=0.3, saturation=0.3, noise=8.0)),
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

    if "real" in modifiers:
        c.data.synthetic_domain = ""
    if "tiny" in modifiers:
        c.grid.xbound, c.grid.ybound = (-16.0, 16.0, 2.0), (-16.0, 16.0, 2.0)
        c.inputs.cameras = ("CAM_FRONT", "CAM_BACK")
        c.inputs.image_hw = (32, 96)
        c.data.world.frames_per_sequence = 4
        c.data.world.lidar_beams, c.data.world.lidar_azimuths = 2, 64
        c.data.train_sequences, c.data.val_sequences = 1, 1
        c.model.dbound = (4.0, 44.0, 4.0)
        c.model.context_channels = 16
        c.model.trunk_depth = 0.1  # one MBConv block per stage
        c.train.batch_size, c.train.steps, c.train.log_every, c.train.checkpoint_every = 2, 3, 1, 3
        c.eval.batch_size = 2
        c.loss.edl_anneal_steps = 10
        c.mt.ramp_steps = 10
        c.pgcm.segmenter, c.pgcm.segmenter_config = "runs/pv_seg_tiny", "configs/pv_seg.py:tiny"
        c.tensorboard = False
    if "nuscenes" in modifiers:
        # The paper's real setting on nuScenes keyframes (for accelerators). Its domain splits are
        # bevjax/data/nuscenes/splits.py; nuScenes has no synthetic frames (a generated source comes later).
        # Keyframe scenes differ in length, so windows are single frames (the fusion still runs, reset each one).
        c.data.dataset = "nuscenes"
        c.data.domains = ()
        c.data.target_domains = ()
        nus_source, nus_target = _NUSCENES_SETTINGS[setting]
        c.data.train_split = f"{nus_source}_train"
        c.data.target_split, c.data.eval_split = f"{nus_target}_train", f"{nus_target}_val"
        c.data.synthetic_domain = ""
        c.data.window = 1
        c.grid.xbound, c.grid.ybound = (-50.0, 50.0, 0.5), (-50.0, 50.0, 0.5)
        c.inputs.image_hw = (128, 352)
        c.augment.resize_lim = (0.193, 0.225)  # of the 1600 x 900 images
        c.augment.bot_pct_lim = (0.0, 0.22)
        c.data.worker_count, c.data.nuscenes.workers = 4, 8
        c.train.batch_size = 12
        c.optim.lr = 3e-3
        c.mt.ema_decay, c.mt.ramp_steps, c.loss.edl_anneal_steps = 0.999, 1000, 1000
        c.train.steps, c.train.log_every, c.train.checkpoint_every, c.train.eval_every = 30_000, 100, 2000, 5000
    return c


_NUSCENES_SETTINGS = {"city": ("boston", "singapore"), "night": ("day", "night"), "rain": ("dry", "rain")}
