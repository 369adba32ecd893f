"""Photometric image augmentation under jit: the Mean Teacher's "strong" augmentation of the student's images.

Geometric augmentation (resize, crop, rotation, flip) changes ``post_rots`` / ``post_trans`` and is done in the
Grain pipeline (:class:`bevjax.data.transforms.ImageAug`); teacher and student see the same geometry, so their BEV
outputs stay comparable cell by cell. The strong augmentation only changes pixel values, per image (one draw per
camera of every frame), in this order, on the 0-255 scale::

    x = b * x                                     brightness  b ~ U[1 - brightness, 1 + brightness]
    x = c * x + (1 - c) * mean(gray(x))           contrast    c ~ U[1 - contrast, 1 + contrast]
    x = s * x + (1 - s) * gray(x)                 saturation  s ~ U[1 - saturation, 1 + saturation]
    x = x + noise * N(0, 1)                       pixel noise (std ``noise``)
    x = round(clip(x, 0, 255))

with ``gray(x) = 0.299 R + 0.587 G + 0.114 B`` (ITU-R BT.601, as PIL's ``convert('L')`` and torchvision's
``ColorJitter``). A factor of 0 turns its step off.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

GRAY_WEIGHTS = (0.299, 0.587, 0.114)


def photometric_factors(rng: jax.Array, shape: tuple, brightness: float, contrast: float, saturation: float):
    """``(b, c, s)``: the three factors of every image, each of ``shape`` (the images' leading dimensions)."""
    kb, kc, ks = jax.random.split(rng, 3)

    def draw(key, amount):
        return jax.random.uniform(key, shape, minval=1.0 - amount, maxval=1.0 + amount)

    return draw(kb, brightness), draw(kc, contrast), draw(ks, saturation)


def apply_photometric(images: jnp.ndarray, b, c, s, noise_field=None) -> jnp.ndarray:
    """The deterministic part: ``images`` [..., h, w, 3] (uint8 or float, 0-255) with per-image factors ``b, c, s``
    [...] and an optional additive ``noise_field`` [..., h, w, 3]; returns uint8."""
    x = images.astype(jnp.float32)
    gw = jnp.asarray(GRAY_WEIGHTS, jnp.float32)
    expand = (Ellipsis, None, None, None)
    x = b[expand] * x
    gray_mean = jnp.mean(x @ gw, axis=(-2, -1))
    x = c[expand] * x + (1.0 - c[expand]) * gray_mean[expand]
    gray = (x @ gw)[..., None]
    x = s[expand] * x + (1.0 - s[expand]) * gray
    if noise_field is not None:
        x = x + noise_field
    return jnp.round(jnp.clip(x, 0.0, 255.0)).astype(jnp.uint8)


def strong_augment(
    images: jnp.ndarray,
    rng: jax.Array,
    *,
    brightness: float = 0.3,
    contrast: float = 0.3,
    saturation: float = 0.3,
    noise: float = 8.0,
) -> jnp.ndarray:
    """``images`` [..., h, w, 3] (0-255) with random brightness, contrast, saturation and Gaussian pixel noise, one
    draw per image (see the module docstring); uint8. With every amount 0 the images come back unchanged."""
    if not (brightness or contrast or saturation or noise):
        return images
    k_factors, k_noise = jax.random.split(rng)
    b, c, s = photometric_factors(k_factors, images.shape[:-3], brightness, contrast, saturation)
    field = noise * jax.random.normal(k_noise, images.shape) if noise else None
    return apply_photometric(images, b, c, s, field)
