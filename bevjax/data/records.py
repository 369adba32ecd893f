"""Pieces shared by the TFDS builders of real datasets (``bevjax_nuscenes``, ``bevjax_av2``).

- :func:`stored_features`: the ``FeaturesDict`` of a schema spec, with camera images stored as JPEG bytes.
- :func:`encode_jpegs`: [n, h, w, 3] uint8 -> n JPEG byte strings (or the original files' bytes).
- :func:`ordered_map`: a function over items, in order, in this process or in worker processes.
- :func:`content_name`: ``<prefix>_<hash>`` names of custom configs.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from bevjax.data.sources import JPEG_SUFFIX
from bevjax.data.world_builder import tensor_feature

JPEG_QUALITY = 95


def stored_spec(spec: Mapping[str, tuple], jpeg_keys: tuple[str, ...] = ("images",)) -> dict:
    """``spec`` with each key of ``jpeg_keys`` [n, h, w, 3] replaced by ``<key>_jpeg`` [n] (object: bytes)."""
    out = {}
    for key, (shape, dtype) in spec.items():
        if key in jpeg_keys:
            out[key + JPEG_SUFFIX] = ((shape[0],), np.dtype(object))
        else:
            out[key] = (shape, dtype)
    return out


def stored_features(spec: Mapping[str, tuple]) -> tfds.features.FeaturesDict:
    """One TFDS feature per key of a stored spec: zlib-compressed arrays, plain scalars, raw byte strings."""
    features = {}
    for key, (shape, dtype) in spec.items():
        if np.dtype(dtype) == np.dtype(object):
            features[key] = tfds.features.Tensor(shape=tuple(shape), dtype=np.object_)
        else:
            features[key] = tensor_feature(shape, dtype)
    return tfds.features.FeaturesDict(features)


def encode_jpegs(images: np.ndarray, quality: int = JPEG_QUALITY) -> np.ndarray:
    """[n] object array of JPEG byte strings of [n, h, w, 3] uint8 images."""
    from PIL import Image

    out = np.empty(len(images), object)
    for i, img in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray(np.asarray(img, np.uint8)).save(buf, format="JPEG", quality=quality)
        out[i] = buf.getvalue()
    return out


def content_name(prefix: str, content: Mapping[str, Any]) -> str:
    """``<prefix>_<10 hex digits>`` hashing the JSON of ``content`` (different contents, different names)."""
    key = json.dumps(content, sort_keys=True, default=str)
    return f"{prefix}_{hashlib.sha1(key.encode()).hexdigest()[:10]}"


_WORKER: dict[str, Any] = {}


def _init_worker(initializer: Callable[[], Any]) -> None:
    _WORKER["state"] = initializer()


def _call_worker(args: tuple[Callable, Any]) -> Any:
    fn, item = args
    return fn(_WORKER["state"], item)


def ordered_map(
    fn: Callable[[Any, Any], Any],
    items: Iterable[Any],
    initializer: Callable[[], Any],
    workers: int = 0,
) -> Iterator[Any]:
    """Yields ``fn(state, item)`` for each item, in order; ``state = initializer()`` once per process.

    With ``workers > 0`` the calls run in that many spawned processes (``fn`` and ``initializer`` must be
    picklable: module-level functions or ``functools.partial`` of them); results still come in input order.
    """
    if workers <= 0:
        state = initializer()
        for item in items:
            yield fn(state, item)
        return
    ctx = multiprocessing.get_context("spawn")  # no fork of a process that may hold JAX / threads
    with ctx.Pool(workers, initializer=_init_worker, initargs=(initializer,)) as pool:
        yield from pool.imap(_call_worker, ((fn, item) for item in items), chunksize=1)
