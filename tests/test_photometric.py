"""The Mean Teacher's strong photometric augmentation against a float64 NumPy reference."""

import jax
import numpy as np

from bevjax.ops.photometric import apply_photometric, photometric_factors, strong_augment


def reference(images, b, c, s, noise):
    x = images.astype(np.float64)
    w = np.array([0.299, 0.587, 0.114])
    e = (..., None, None, None)
    x = b[e] * x
    x = c[e] * x + (1 - c[e]) * (x @ w).mean(axis=(-2, -1))[e]
    x = s[e] * x + (1 - s[e]) * (x @ w)[..., None]
    return np.round(np.clip(x + noise, 0, 255)).astype(np.uint8)


def test_against_numpy_float64():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 3, 5, 7, 3), dtype=np.uint8)
    b, c, s = (rng.uniform(0.6, 1.4, (2, 3)) for _ in range(3))
    noise = rng.normal(0, 8, images.shape)
    got = np.asarray(jax.jit(apply_photometric)(images, b, c, s, noise))
    want = reference(images, b, c, s, noise)
    assert got.dtype == np.uint8
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1  # float32 rounding at .5
    assert (got == want).mean() > 0.99


def test_gray_image_is_unchanged_by_saturation_and_factors_lie_in_range():
    gray = np.full((1, 4, 4, 3), 100, np.uint8)
    out = apply_photometric(gray, np.ones(1), np.ones(1), np.array([1.4]))
    np.testing.assert_array_equal(np.asarray(out), gray)
    b, c, s = photometric_factors(jax.random.PRNGKey(0), (1000,), 0.3, 0.2, 0.0)
    assert 0.7 <= float(b.min()) and float(b.max()) <= 1.3 and float(b.std()) > 0.1
    assert 0.8 <= float(c.min()) and float(c.max()) <= 1.2
    np.testing.assert_array_equal(np.asarray(s), 1.0)


def test_off_returns_the_images_and_on_changes_them():
    images = np.random.default_rng(1).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    key = jax.random.PRNGKey(3)
    off = strong_augment(images, key, brightness=0, contrast=0, saturation=0, noise=0)
    assert off is images
    on = np.asarray(strong_augment(images, key))
    assert on.shape == images.shape and on.dtype == np.uint8
    assert np.abs(on.astype(int) - images.astype(int)).mean() > 2
