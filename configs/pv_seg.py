"""The PV segmenter of NRSeg's PGCM, trained on the clean (source-domain) images of the embedded world.

Default (a CPU run; prepares its world data on first use: the same world as configs/lss.py's default):
    python -m bevjax.train --config configs/pv_seg.py --workdir runs/pv_seg
  Measured on 2 CPU cores (shared: load average about 4 from other jobs): 12.5 min in all (320 samples rendered
  in 3:10, step compiled in 34 s, 400 steps in 496 s at 0.81 steps/s); IoU on boston_val at step 400: road 0.879,
  building 0.871, background 0.855, terrain 0.768, sidewalk 0.706, vegetation 0.699, vehicle 0.646,
  pedestrian 0.259, pole 0.001 (thin), parking none in the split; mIoU 0.631, pixel accuracy 0.883.
Then score a synthetic split with it (NRSeg's PGCM; renders the boston_synthetic world on first use):
    python -m bevjax.pgcm --segmenter runs/pv_seg --config configs/pv_seg.py --split boston_synthetic_train
  Measured with the default run above (2 shared CPU cores): the boston_synthetic world rendered on first use
  (320 frames in 7.4 min, while another test ran; kept for every later pass), the pass over 240 frames in 10 s:
  R mean 0.898 (median 0.907, min 0.661, max 0.987), 30 of 240 frames at or below tau = 0.85;
  Spearman rank correlation of R with noise_level -0.339 (Pearson -0.345); of R minus its sequence's mean R
  -0.562 (6 sequences: the scenes differ in R about as much as the noise moves it, per-sequence -0.36 .. -0.68).
  Mean R by noise level [0, .25) / [.25, .5) / [.5, .75) / [.75, 1]: 0.918 / 0.912 / 0.885 / 0.871.
  Other splits and settings: --split boston_synthetic_val (80 frames) R mean 0.837, Spearman -0.663;
  --valid all (occlusion counts) R mean 0.725, Spearman -0.140; clean --split boston_val R 0.926 (0.876 .. 0.954).
  The Singapore synthetic split NRSeg's UDA default trains with, scored by this Boston-trained segmenter:
    python -m bevjax.pgcm --segmenter runs/pv_seg --config configs/pv_seg.py --split singapore_synthetic_train \
        "--config.pgcm.domains=('singapore_synthetic',)"
  R mean 0.794 (min 0.551, max 0.954), 195 of 240 frames at or below tau; Spearman with noise_level -0.310
  (within sequences -0.321): the city gap lowers R for every frame about as much as the noise does.
Tiny (tests and smoke checks; training 29 s in all on 2 idle CPU cores, its world data prepared included):
    python -m bevjax.train --config configs/pv_seg.py:tiny --workdir runs/pv_seg_tiny
    python -m bevjax.pgcm --segmenter runs/pv_seg_tiny --config configs/pv_seg.py:tiny --split boston_synthetic_train
Any field can be overridden: --config.train.steps=800 --config.pgcm.valid=all
"""

from __future__ import annotations

import ml_collections

from bevjax.schema import NUSCENES_CAMERAS
from bevjax.training.defaults import add_engine_sections

# The model's classes, road first (PGCM's class); every perspective class of the world.
PV_CLASSES = (
    "road",
    "sidewalk",
    "parking",
    "terrain",
    "vehicle",
    "pedestrian",
    "building",
    "vegetation",
    "pole",
    "background",
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = arg or "default"
    if variant not in ("default", "tiny"):
        raise ValueError(f"configs/pv_seg.py:{variant}: choose from default, tiny")
    c = ml_collections.ConfigDict()
    c.task = "pv_segmenter"
    c.seed = 0
    c.tensorboard = True

    # The world's BEV grid (its labels; PGCM back-projects them) and the cameras at the network size.
    c.grid = ml_collections.ConfigDict(
        dict(xbound=(-24.0, 24.0, 0.75), ybound=(-24.0, 24.0, 0.75), zbound=(-10.0, 10.0, 20.0))
    )
    c.inputs = ml_collections.ConfigDict(dict(cameras=NUSCENES_CAMERAS, image_hw=(64, 192)))

    # Clean source-domain images only: the segmenter never sees the synthetic domain's images.
    c.data = ml_collections.ConfigDict()
    c.data.dataset = "world"
    c.data.data_dir = ""  # default: $BEVJAX_DATA_DIR or ~/bevjax_data
    c.data.domains = ("boston",)
    c.data.train_sequences = 6
    c.data.val_sequences = 2
    c.data.train_split = "boston_train"
    c.data.eval_split = "boston_val"
    c.data.worker_count = 0
    c.data.world = ml_collections.ConfigDict(
        dict(seed=0, frames_per_sequence=40, lidar_beams=8, lidar_azimuths=256)
    )

    c.model = ml_collections.ConfigDict()
    c.model.classes = PV_CLASSES  # perspective labels of other classes are ignored
    c.model.stride = 8  # decoder stride before the final bilinear upsampling: 8 or 4
    c.model.features = 64
    c.model.drop_connect_rate = 0.2
    c.model.trunk_depth = 1.0  # EfficientNet depth coefficient: 1.0 is B0
    c.model.dtype = "float32"

    # Per camera: LSS image augmentation (resize >= 1 keeps the crop inside the image), colour jitter.
    c.augment = ml_collections.ConfigDict(
        dict(
            resize_lim=(1.0, 1.2),
            bot_pct_lim=(0.0, 0.1),
            rot_lim_deg=(-3.0, 3.0),
            rand_flip=True,
            color_jitter=True,
        )
    )
    c.loss = ml_collections.ConfigDict(dict(ce_weight=1.0, dice_weight=0.0))
    c.optim = ml_collections.ConfigDict(
        dict(
            name="adamw",
            lr=2e-3,
            weight_decay=1e-4,
            grad_clip=5.0,
            schedule="poly",
            warmup_steps=20,
            power=0.9,
            min_lr=1e-5,
            groups=(),
            no_decay="(bias|scale)$",
        )
    )
    add_engine_sections(c, batch_size=4, steps=400, log_every=25, checkpoint_every=100)
    c.eval = ml_collections.ConfigDict(dict(batch_size=4, max_examples=0, picture_index=0))

    # NRSeg's PGCM over a synthetic split (python -m bevjax.pgcm; bevjax/pgcm.py). The split comes from the
    # world of config.data with its domains replaced by pgcm.domains (the same cameras, sizes and grid).
    c.pgcm = ml_collections.ConfigDict(
        dict(
            split="boston_synthetic_train",
            domains=("boston_synthetic",),
            tau=0.85,  # w = 1 if R > tau else R (NRSeg: 0.85; 0.9 day -> night; 1.0 dry -> rain)
            valid="ground",  # score pixels the segmenter calls ground ('ground') or every pixel ('all')
            ground_classes=("road", "sidewalk", "parking", "terrain"),
            bev_class="drivable_area",  # the BEV label back-projected ...
            pv_classes=("road",),  # ... against the union of these predicted classes
            supersample=2,  # rays per pixel side of the back-projection
            step=-1,  # the segmenter checkpoint (-1: newest readable)
            batch_size=4,
        )
    )

    if variant == "tiny":
        c.grid.xbound, c.grid.ybound = (-16.0, 16.0, 1.0), (-16.0, 16.0, 1.0)
        c.inputs.cameras = ("CAM_FRONT", "CAM_BACK")
        c.inputs.image_hw = (32, 96)
        c.data.world.frames_per_sequence = 4
        c.data.world.lidar_beams, c.data.world.lidar_azimuths = 2, 64
        c.data.train_sequences, c.data.val_sequences = 1, 1
        c.model.features = 16
        c.model.trunk_depth = 0.1  # one MBConv block per stage, to compile faster
        c.augment.color_jitter = False
        c.optim.warmup_steps = 0
        c.train.batch_size, c.train.steps, c.train.log_every, c.train.checkpoint_every = 2, 8, 1, 4
        c.eval.batch_size = 2
        c.pgcm.batch_size = 2
        c.tensorboard = False
    return c
