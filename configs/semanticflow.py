"""SemanticFlow (METHODS.md section 5): self-supervised LiDAR scene flow and instance segmentation.

The world's sweep pairs (32 beams x 1024 rays, 10 Hz) are pseudo-labelled once (``bevjax.flow_labels``: free
space, DBSCAN, rigid fits; an offline pass stored beside the split), then the network (``bevjax.models.semanticflow``)
learns the residual flow after ego motion and S soft instance masks from the losses of
``bevjax.losses.semanticflow``, with the authors' weights. See ``bevjax/tasks/semanticflow.py``.

Default (a CPU run; renders its world and pseudo-labels it on first use):
    python -m bevjax.train --config configs/semanticflow.py --workdir runs/semanticflow
  The CPU default is the authors' network at reduced size: 0.4 m pillars over +-51.2 m (256 x 256, the paper
  0.2 m / 512 x 512), U-Net widths (32, 64, 128) of depths (2, 3, 3) (the paper (64, 128, 256), (4, 6, 6)),
  e = 32, K = 4, S = 16; batch 2, Adam 1e-3 (the authors 2e-4 over 18 epochs of Argoverse 2).
  Measured (seed 0, this repository's 2-core CPU, quiet: the step compiled in 11.3 s, 300 steps took 692 s; the
  world's render and pseudo-label pass come first on an empty data dir), on boston_val: 3-way EPE 0.211 m
  (foreground dynamic 0.349, foreground static 0.252, background static 0.032), dynamic IoU 0.358, instance ARI
  0.622, PQ 0.255. Its own pseudo-labels score 3-way EPE 0.076, ARI 0.928 there: the model does not yet beat them
  (benchmarks/semanticflow_experiment.py has the full table, two seeds, and the real Argoverse 2 pair).
Flow only (the four flow losses; the instance head untrained):
    python -m bevjax.train --config configs/semanticflow.py:flow --workdir runs/semanticflow_flow
Tiny (tests and smoke checks: 16 x 16 pillars of 0.8 m, an 8 x 256 LiDAR, 3 steps):
    python -m bevjax.train --config configs/semanticflow.py:tiny --workdir runs/semanticflow_tiny
Argoverse 2 (the paper's setting, for accelerators: prepared sweep pairs of a sensor root, the paper's sizes,
    batch 2, lr 2e-4, K = 2 as in the authors' training command):
    python -m bevjax.train --config configs/semanticflow.py:av2 --workdir runs/semanticflow_av2 \
        --config.data.av2.root=/data/av2/sensor
Evaluate the latest checkpoint (eval.json and flow.png, the pair from above with flow arrows by instance):
    python -m bevjax.evaluate --config configs/semanticflow.py --workdir runs/semanticflow
  or on a (raw or prepared) Argoverse 2 folder:
    python -m bevjax.evaluate --config configs/semanticflow.py --workdir runs/semanticflow --dataset av2 \
        --dataroot ../shared/data/av2/sensor
"""

from __future__ import annotations

import ml_collections

from bevjax.training.defaults import add_engine_sections

VARIANTS = ("default", "flow", "tiny", "flow_tiny", "av2", "flow_av2")
# The mean of Argoverse 2's two roof LiDARs in the ego frame (bevjax.ops.freespace; log 7fab2350).
AV2_LIDAR_ORIGIN = ((1.3485, 0.0025, 1.5825),)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = arg or "default"
    if variant not in VARIANTS:
        raise ValueError(f"configs/semanticflow.py:{variant}: choose from {', '.join(VARIANTS)}")
    tokens = set(variant.split("_"))
    tiny, av2, flow_only = "tiny" in tokens, "av2" in tokens, "flow" in tokens
    c = ml_collections.ConfigDict()
    c.task = "semanticflow"
    c.seed = 0
    c.tensorboard = True

    # The world's BEV label grid (the world renders labels with every sweep; this task does not use them).
    c.grid = ml_collections.ConfigDict(
        dict(xbound=(-24.0, 24.0, 0.75), ybound=(-24.0, 24.0, 0.75), zbound=(-10.0, 10.0, 20.0))
    )
    # One small camera: the world renders images with every frame; this task reads only the LiDAR.
    c.inputs = ml_collections.ConfigDict(dict(cameras=("CAM_FRONT",), image_hw=(32, 88)))

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
        dict(seed=0, frames_per_sequence=40, lidar_beams=32, lidar_azimuths=1024)
    )
    c.data.av2 = ml_collections.ConfigDict(
        dict(root="", config="default", num_points=120_000, stride=1, workers=0)
    )

    # Preprocessing of both sweeps: ground removed (the dataset's flags for sweep 0, the pseudo-label pass's
    # estimate for sweep 1), range 2..50 m (bevjax.ops.pointcloud.range_mask).
    # capacity: points per sweep in training, the kept ones first (a random subset beyond it; evaluation sees all;
    # train/dropped_points counts them). The world's 32 x 1024 sweeps keep 7-10k points; the CPU default takes a
    # random 8192 of them per step, since the losses' brute-force kNN (k = 64) and Chamfer searches cost
    # capacity^2 on a CPU (benchmarks/bench_flow.py: 8.4 s a step at 16384 on shared cores).
    c.points = ml_collections.ConfigDict(dict(min_range=2.0, max_range=50.0, capacity=8192))

    # The coarse segmentation and pseudo-flow (bevjax.flow_labels.PseudoLabelSettings; any field may be set).
    c.pseudo = ml_collections.ConfigDict()

    c.model = ml_collections.ConfigDict(
        dict(
            pillars=dict(xbound=(-51.2, 51.2, 0.4), ybound=(-51.2, 51.2, 0.4), zbound=(-3.0, 3.0, 6.0)),
            embed_features=32,
            unet_widths=(32, 64, 128),
            unet_depths=(2, 3, 3),
            offset_features=64,
            mlp_features=32,
            num_iters=4,
            num_slots=16,
            dtype="float32",
        )
    )

    # Loss weights (bevjax.losses.semanticflow.LossWeights; the authors' training command) and settings.
    c.loss = ml_collections.ConfigDict(
        dict(
            chamfer=1.0,
            static_flow=1.0,
            dynamic_chamfer=1.0,
            cluster=1.0,
            focal=0.1,
            rigid=1.0,
            smooth=0.5,
            instance=0.0,
            separation=5.0,
        )
    )
    # knn: neighbours of the smoothness terms (the authors' 64, the point itself included); truncate: metres of
    # both Chamfer terms; cluster_target: 'rigid' (the pseudo-label rigid fits) or 'farthest' (SeFlow's Eq. 8).
    c.loss_settings = ml_collections.ConfigDict(dict(knn=64, truncate=2.0, cluster_target="rigid"))

    c.optim = ml_collections.ConfigDict(
        dict(
            name="adam",
            lr=1e-3,
            weight_decay=0.0,
            grad_clip=5.0,
            schedule="constant",
            warmup_steps=0,
            power=0.9,
            min_lr=0.0,
            groups=(),
            no_decay="",
        )
    )
    add_engine_sections(c, batch_size=2, steps=300, log_every=25, checkpoint_every=100)
    c.eval = ml_collections.ConfigDict(dict(batch_size=2, max_examples=0, picture_index=0))

    if flow_only:  # SeFlow's four flow losses; the instance head gets no gradient
        for k in ("focal", "rigid", "smooth", "instance", "separation"):
            c.loss[k] = 0.0

    if tiny:
        c.grid = ml_collections.ConfigDict(
            dict(xbound=(-16.0, 16.0, 2.0), ybound=(-16.0, 16.0, 2.0), zbound=(-10.0, 10.0, 20.0))
        )
        c.inputs.image_hw = (16, 32)
        c.data.train_sequences = 1
        c.data.val_sequences = 1
        c.data.world = ml_collections.ConfigDict(
            dict(seed=0, frames_per_sequence=4, lidar_beams=8, lidar_azimuths=256)
        )
        c.points.max_range = 6.0
        c.points.capacity = 1024
        c.pseudo = ml_collections.ConfigDict(dict(azimuth_bins=256, elevation_bins=8, max_range=6.0))
        c.model.pillars = dict(xbound=(-6.4, 6.4, 0.8), ybound=(-6.4, 6.4, 0.8), zbound=(-3.0, 3.0, 6.0))
        c.model.update(
            dict(
                embed_features=8, unet_widths=(8, 16, 32), unet_depths=(1, 1, 1), offset_features=8,
                mlp_features=4, num_iters=2, num_slots=4,
            )
        )  # fmt: skip
        c.loss_settings.knn = 8
        c.train.update(dict(steps=3, log_every=1, checkpoint_every=3))
        c.eval.batch_size = 2
        c.tensorboard = False

    if av2:
        c.data.dataset = "av2"
        c.data.train_split = "train"
        c.data.eval_split = "val"
        c.pseudo = ml_collections.ConfigDict(
            dict(origins=AV2_LIDAR_ORIGIN, azimuth_bins=1800, elevation_bins=64)
        )
        c.model.pillars = dict(xbound=(-51.2, 51.2, 0.2), ybound=(-51.2, 51.2, 0.2), zbound=(-3.0, 3.0, 6.0))
        c.model.update(dict(unet_widths=(64, 128, 256), unet_depths=(4, 6, 6), num_iters=2, dtype="bfloat16"))
        c.optim.lr = 2e-4
        c.points.capacity = 65536
        c.train.update(dict(steps=100_000, log_every=100, checkpoint_every=2000))
    return c
