"""Is the gap between world domains real? Train on one domain, evaluate on all.

    python benchmarks/domain_gap.py [--train_domain boston] [--steps 600] [--sequences 4]

A small fully-convolutional network (Flax linen) learns perspective semantic segmentation (``pv_labels``) from
the front camera of one domain's train split and is evaluated (mIoU over the classes present) on the val split of
the same domain and of the others. Prints one row per evaluation domain; a real domain gap shows as a clearly
lower mIoU off the training domain.

Measured on a 2-core CPU (about 5 minutes) with the defaults: boston 0.743 (in domain), singapore 0.427,
boston_night 0.278, boston_rain 0.369.
"""

from __future__ import annotations

import argparse
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from bevjax.geometry import BEVGrid
from bevjax.schema import NUM_SEMANTIC_CLASSES, SEMANTIC_CLASSES
from bevjax.world import WorldConfig, render_sample

CONFIG = WorldConfig(
    cameras=("CAM_FRONT",),
    image_hw=(64, 176),
    grid=BEVGrid((-20.0, 20.0, 1.0), (-20.0, 20.0, 1.0)),
    lidar_beams=2,
    lidar_azimuths=64,
    frames_per_sequence=40,
)


class SegNet(nn.Module):
    """Encoder-decoder of 3x3 convolutions: images [b, h, w, 3] -> logits [b, h, w, k]."""

    width: int = 32

    @nn.compact
    def __call__(self, x):
        x = x.astype(jnp.float32) / 255.0 - 0.5
        skips = []
        for i, c in enumerate((self.width, 2 * self.width, 4 * self.width)):
            x = nn.relu(nn.Conv(c, (3, 3))(x))
            skips.append(x)
            if i < 2:
                x = nn.max_pool(x, (2, 2), (2, 2))  # b h/2 w/2 c
        for skip in skips[:2][::-1]:
            b, h, w, c = skip.shape
            x = jax.image.resize(x, (b, h, w, x.shape[-1]), "nearest")  # b h w c
            x = nn.relu(nn.Conv(c, (3, 3))(jnp.concatenate([x, skip], -1)))
        return nn.Conv(NUM_SEMANTIC_CLASSES, (1, 1))(x)


def load(domain: str, split: str, sequences: int):
    n = sequences * CONFIG.frames_per_sequence
    samples = [render_sample(CONFIG, domain, split, i) for i in range(n)]
    return np.stack([s["images"][0] for s in samples]), np.stack([s["pv_labels"][0] for s in samples])


def miou(model, params, images, labels) -> float:
    pred = np.concatenate(
        [
            np.asarray(jnp.argmax(model.apply(params, images[i : i + 16]), -1))
            for i in range(0, len(images), 16)
        ]
    )
    ious = []
    for k in range(NUM_SEMANTIC_CLASSES):
        inter = np.sum((pred == k) & (labels == k))
        union = np.sum((pred == k) | (labels == k))
        if np.any(labels == k):
            ious.append(inter / union)
    return float(np.mean(ious))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--train_domain", default="boston")
    parser.add_argument("--eval_domains", default="boston,singapore,boston_night,boston_rain")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--sequences", type=int, default=4, help="train sequences (40 frames each)")
    args = parser.parse_args()
    start = time.time()
    images, labels = load(args.train_domain, "train", args.sequences)
    print(f"rendered {len(images)} train frames of {args.train_domain} in {time.time() - start:.0f}s")

    model = SegNet()
    params = model.init(jax.random.PRNGKey(0), images[:1])
    tx = optax.adam(2e-3)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, x, y):
        def loss_fn(p):
            logits = model.apply(p, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y.astype(jnp.int32)).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt = tx.update(grads, opt)
        return optax.apply_updates(params, updates), opt, loss

    rng = np.random.default_rng(0)
    start = time.time()
    for i in range(args.steps):
        idx = rng.integers(0, len(images), 8)
        params, opt, loss = step(params, opt, images[idx], labels[idx])
        if (i + 1) % 100 == 0:
            print(f"step {i + 1}/{args.steps} loss {float(loss):.3f} ({time.time() - start:.0f}s)")

    print(
        f"\nPV segmentation mIoU ({len(SEMANTIC_CLASSES)} classes, those present), trained on {args.train_domain}:"
    )
    for domain in args.eval_domains.split(","):
        x, y = load(domain, "val", 1)
        print(f"  {domain:<20s} {miou(model, params, x, y):.3f}")


if __name__ == "__main__":
    main()
