"""Lift-Splat-Shoot on the embedded driving world.

Default (a CPU run; prepares its world data on first use):
    python -m bevjax.train --config configs/lss.py --workdir runs/lss
  Measured on 2 CPU cores: 11.0 min in all (320 samples rendered, step compiled in 27 s, 400 steps in 473 s at
  0.85 steps/s); IoU on boston_val at step 400: drivable_area 0.717, ped_crossing 0.056, walkway 0.264,
  divider 0.232, vehicle 0.041, stop_line 0.000, pedestrian 0.000, carpark_area 0.000 (499 false positives,
  none in the split). (Measured before the convolution gradients were rewritten for memory: 0.721, 0.140,
  0.279, 0.269 and 0.049. The rewrite changes float rounding only, yet one seed's 400 steps carry it this far:
  one run is too few to compare the small classes.)
  Vehicles are still lane-shaped streaks at this point; objects need longer training: --config.train.steps=3000.
  (With LSS's pos_weight 2.13 for objects too, --config.loss.object_pos_weight=2.13: vehicle 0.000 at step 400,
  0.039 at step 1000.)
Tiny (tests and smoke checks; 42 s in all on 2 CPU cores, world data prepared included):
    python -m bevjax.train --config configs/lss.py:tiny --workdir runs/lss_tiny
Full (the paper's configuration, for accelerators: 6 cameras 128x352, batch 4, 200x200 grid at 0.5 m, D = 41):
    python -m bevjax.train --config configs/lss.py:full --workdir runs/lss_full
nuScenes (the paper's setting on real data, for accelerators; prepares the dataroot's keyframes on first use,
    about 35 GB for v1.0-trainval, see data/README.md):
    python -m bevjax.train --config configs/lss.py:nuscenes --workdir runs/lss_nusc \
        --config.data.nuscenes.dataroot=/data/nuscenes
Evaluate the latest checkpoint of a run (writes eval.json and prediction.png):
    python -m bevjax.evaluate --config configs/lss.py --workdir runs/lss
Any field can be overridden: --config.train.steps=500 --config.optim.lr=2e-3
"""

from __future__ import annotations

import ml_collections

from bevjax.schema import BEV_CLASSES, NUSCENES_CAMERAS
from bevjax.training.defaults import add_engine_sections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = arg or "default"
    if variant not in ("default", "tiny", "full", "nuscenes"):
        raise ValueError(f"configs/lss.py:{variant}: choose from default, tiny, full, nuscenes")
    c = ml_collections.ConfigDict()
    c.task = "lss"
    c.seed = 0
    c.tensorboard = True

    c.grid = ml_collections.ConfigDict(
        dict(xbound=(-24.0, 24.0, 0.75), ybound=(-24.0, 24.0, 0.75), zbound=(-10.0, 10.0, 20.0))
    )

    # The model's inputs, whatever the dataset: camera channels (in order) and the network's image size (the
    # world renders at this size; nuScenes images are resized to it by the augmentation).
    c.inputs = ml_collections.ConfigDict(dict(cameras=NUSCENES_CAMERAS, image_hw=(64, 192)))

    c.data = ml_collections.ConfigDict()
    c.data.dataset = "world"  # or "nuscenes" (a dataroot, prepared on first use: see c.data.nuscenes)
    c.data.data_dir = ""  # default: $BEVJAX_DATA_DIR or ~/bevjax_data
    c.data.domains = ("boston",)
    c.data.train_sequences = 6
    c.data.val_sequences = 2
    c.data.train_split = "boston_train"
    c.data.eval_split = "boston_val"
    c.data.worker_count = 0
    c.data.world = ml_collections.ConfigDict(
        dict(
            seed=0,
            frames_per_sequence=40,
            lidar_beams=8,
            lidar_azimuths=256,
        )
    )

    # nuScenes (dataset "nuscenes"): inputs.cameras picks its channels; image_hw here is the stored size.
    c.data.nuscenes = ml_collections.ConfigDict(
        dict(dataroot="", config="keyframes", image_hw=(900, 1600), num_points=35_000, num_sweeps=0, workers=0)
    )

    # Argoverse 2 (dataset "av2": LiDAR sweep pairs, no camera images), prepared on first use from root.
    c.data.av2 = ml_collections.ConfigDict(dict(root="", config="default", num_points=120_000, stride=1, workers=0))

    c.model = ml_collections.ConfigDict()
    c.model.classes = BEV_CLASSES
    c.model.stride = 16
    c.model.dbound = (4.0, 45.0, 1.0)
    c.model.context_channels = 64
    c.model.drop_connect_rate = 0.2
    c.model.trunk_depth = 1.0  # EfficientNet depth coefficient: 1.0 is B0
    # Rematerialisation ('none' | 'blocks' | 'full'): on XLA:CPU it lowers no peak and costs 17-19 % step time
    # (python benchmarks/bench_lss.py --remat), so 'none'; on accelerators 'blocks' is the one to try.
    c.model.remat = "none"
    c.model.dtype = "float32"  # computation dtype; "bfloat16" on accelerators (parameters stay float32)

    c.augment = ml_collections.ConfigDict()
    c.augment.num_cameras = 5  # LSS drops one of six cameras at random in training
    c.augment.resize_lim = (0.9, 1.1)  # the world renders at the network size: jitter around 1
    c.augment.bot_pct_lim = (0.0, 0.1)
    c.augment.rot_lim_deg = (-5.4, 5.4)
    c.augment.rand_flip = True
    c.augment.bev_flip = False
    c.augment.color_jitter = False

    # BCE pos_weight (LSS: 2.13), and per class where object_pos_weight differs: vehicle and pedestrian cells
    # are about 1% of the map, and share one loss with the map classes here (LSS trains one model per class).
    c.loss = ml_collections.ConfigDict(dict(pos_weight=2.13, object_pos_weight=8.0, visible_only=False))
    c.optim = ml_collections.ConfigDict(
        dict(
            name="adam",
            lr=1e-3,
            weight_decay=1e-7,
            grad_clip=5.0,
            schedule="constant",
            warmup_steps=0,
            power=0.9,
            min_lr=0.0,
            groups=(),  # ((regex on parameter paths, lr scale; 0 freezes), ...)
            no_decay="",  # regex of parameters without weight decay, e.g. "(bias|scale)$"
        )
    )
    add_engine_sections(c)  # train (batch 4, 400 steps, ...), mesh, init_from: bevjax/training/defaults.py
    c.eval = ml_collections.ConfigDict(
        dict(batch_size=4, threshold=0.0, visible_only=False, max_examples=0, picture_index=0)
    )

    if variant == "tiny":
        c.grid.xbound, c.grid.ybound = (-16.0, 16.0, 1.0), (-16.0, 16.0, 1.0)
        c.inputs.cameras = ("CAM_FRONT", "CAM_BACK")
        c.inputs.image_hw = (32, 96)
        c.data.world.frames_per_sequence = 4
        c.data.world.lidar_beams, c.data.world.lidar_azimuths = 2, 64
        c.data.train_sequences, c.data.val_sequences = 1, 1
        c.model.dbound = (4.0, 44.0, 4.0)
        c.model.context_channels = 16
        c.model.trunk_depth = 0.1  # one MBConv block per stage: 7 instead of 16, to compile faster
        c.augment.num_cameras = 0
        c.train.batch_size, c.train.steps, c.train.log_every, c.train.checkpoint_every = 2, 6, 2, 3
        c.eval.batch_size = 2
        c.tensorboard = False
    elif variant == "nuscenes":
        c.grid.xbound, c.grid.ybound = (-50.0, 50.0, 0.5), (-50.0, 50.0, 0.5)
        c.loss.object_pos_weight = 2.13  # LSS
        c.data.dataset = "nuscenes"
        c.data.train_split, c.data.eval_split = "train", "val"
        c.inputs.image_hw = (128, 352)
        c.data.worker_count, c.data.nuscenes.workers = 4, 8
        c.augment.resize_lim = (0.193, 0.225)  # LSS, of the 1600 x 900 images
        c.augment.bot_pct_lim = (0.0, 0.22)
        c.train.steps, c.train.log_every, c.train.checkpoint_every, c.train.eval_every = (
            100_000,
            100,
            2000,
            5000,
        )
    elif variant == "full":
        c.grid.xbound, c.grid.ybound = (-50.0, 50.0, 0.5), (-50.0, 50.0, 0.5)
        c.loss.object_pos_weight = 2.13  # LSS
        c.inputs.image_hw = (128, 352)
        c.data.world.lidar_beams, c.data.world.lidar_azimuths = 32, 1024
        c.data.domains = ("boston", "singapore")
        c.data.train_sequences, c.data.val_sequences = 40, 5
        c.data.worker_count = 4
        c.train.steps, c.train.log_every, c.train.checkpoint_every, c.train.eval_every = (
            100_000,
            100,
            2000,
            5000,
        )
    return c
