"""Shared fixtures.

``fake_world`` replaces the world renderer with a fast deterministic fake, so that data-pipeline tests do not
depend on (or wait for) the real one. To test against the real renderer, simply don't request the fixture.
"""

from __future__ import annotations

import contextlib
import importlib
import zlib

import numpy as np
import pytest

from bevjax.world import sample as world_sample


def fake_render_sample(config, domain: str, split: str, index: int) -> dict:
    """Deterministic arrays of ``example_spec_for(config)`` from ``(config, domain, split, index)``.

    Sequence and frame keys follow the real indexing (``divmod(index, frames_per_sequence)``).
    """
    rng = np.random.default_rng([config.seed, zlib.crc32(domain.encode()), zlib.crc32(split.encode()), index])
    seq, frame = divmod(int(index), config.frames_per_sequence)
    out = {}
    for key, (shape, dtype) in world_sample.example_spec_for(config).items():
        if dtype == np.bool_:
            value = rng.random(shape) < 0.5
        elif np.issubdtype(dtype, np.integer):
            value = rng.integers(0, 200, shape).astype(dtype)
        else:
            value = rng.normal(size=shape).astype(dtype)
        out[key] = np.asarray(value, dtype)
    out["sequence_id"] = np.int32(seq)
    out["frame_index"] = np.int32(frame)
    out["timestamp"] = np.float64(
        frame / config.keyframe_hz + rng.random() * 1e-9
    )  # not float32-representable
    return out


_PATCHED_MODULES = ("bevjax.world.sample", "bevjax.world")


@contextlib.contextmanager
def patched_world(fake=fake_render_sample):
    """Within the block, ``render_sample`` of ``bevjax.world.sample`` and ``bevjax.world`` is ``fake``."""
    mp = pytest.MonkeyPatch()
    try:
        for name in _PATCHED_MODULES:
            mp.setattr(importlib.import_module(name), "render_sample", fake)
        yield fake
    finally:
        mp.undo()


@pytest.fixture
def fake_world():
    """Patches ``render_sample`` with ``fake_render_sample`` for one test; yields the fake."""
    with patched_world() as fake:
        yield fake


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """The ``tiny`` world config prepared (with the fake renderer) in a session temp dir: ``(data_dir, config)``."""
    from bevjax.data.prepare import prepare_world
    from bevjax.data.world_builder import TINY_CONFIG

    data_dir = tmp_path_factory.mktemp("bevjax_data")
    with patched_world():
        prepare_world(str(data_dir), TINY_CONFIG, progress=False)
    return str(data_dir), TINY_CONFIG
