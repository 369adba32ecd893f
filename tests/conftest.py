"""Shared fixtures.

``fake_world`` replaces the world renderer with a fast deterministic fake, so that data-pipeline tests do not
depend on (or wait for) the real one. To test against the real renderer, simply don't request the fixture.
"""

from __future__ import annotations

import contextlib
import importlib
import zlib
from pathlib import Path

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


# The real sample files of ../shared/data (absent on users' machines: tests that need them skip).
SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
NUSCENES_ROOT = SHARED_DATA / "nuscenes"
NUSCENES_VERSION = "v1.0-test"
AV2_LOG_DIR = SHARED_DATA / "av2" / "sensor" / "val" / "7fab2350-7eaf-3b7e-a39d-6937a4c1bede"


@pytest.fixture(scope="session")
def nuscenes_tables():
    """The tables of the real nuScenes keyframe (skips when the shared data is absent)."""
    from bevjax.data.nuscenes import NuScenesTables

    if not (NUSCENES_ROOT / NUSCENES_VERSION).is_dir():
        pytest.skip(f"real nuScenes sample not found at {NUSCENES_ROOT.resolve()} (shared test data absent)")
    return NuScenesTables(NUSCENES_ROOT, NUSCENES_VERSION)


@pytest.fixture(scope="session")
def av2_log():
    """The real Argoverse 2 sample log (skips when the shared data is absent)."""
    from bevjax.data.av2 import AV2Log

    if not AV2_LOG_DIR.is_dir():
        pytest.skip(f"real Argoverse 2 sample log not found at {AV2_LOG_DIR.resolve()} (shared test data absent)")
    return AV2Log(AV2_LOG_DIR)


@pytest.fixture(scope="module")
def fast_compile():
    """XLA convolutions, and no backend optimisations for what the engine compiles (CPU): shorter compiles for
    the end-to-end task tests (tests/test_nrseg_task.py, tests/test_semanticflow_task.py)."""
    import jax

    from bevjax.models.layers import conv_impl

    original = jax.stages.Lowered.compile

    def compile_fast(self, compiler_options=None, **kw):
        if jax.default_backend() == "cpu":
            compiler_options = {"xla_backend_optimization_level": 0, **(compiler_options or {})}
        return original(self, compiler_options, **kw)

    with conv_impl("xla"), pytest.MonkeyPatch.context() as mp:
        mp.setattr(jax.stages.Lowered, "compile", compile_fast)
        yield
