"""How records are stored, shared by every bevjax TFDS builder and source (the lowest layer of ``bevjax.data``).

- :func:`tensor_feature`, :func:`stored_features`: the TFDS features of a schema spec (zlib-compressed arrays,
  plain scalars, float64 scalars as raw bytes, camera images as JPEG bytes).
- :func:`encode_jpegs`, :func:`decode_jpegs`: [n, h, w, 3] uint8 <-> n JPEG byte strings.
- :func:`ordered_map`: a function over items, in order, in this process or in worker processes.
- :func:`content_name`, :func:`derive_config`: ``custom_<hash>`` configs named by their content.

This module imports no other module of ``bevjax.data``: the builders (:mod:`bevjax.data.base_builder` and its
subclasses), the sources (:mod:`bevjax.data.sources`), the registry (:mod:`bevjax.data.datasets`) and the
command line (:mod:`bevjax.data.prepare`) build on it, in that order.
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

JPEG_QUALITY = 95
JPEG_SUFFIX = "_jpeg"  # a key ``<name>_jpeg`` [n] of JPEG bytes is decoded into ``<name>`` [n, h, w, 3] uint8


def tensor_feature(shape: tuple[int, ...], dtype: np.dtype) -> tfds.features.Tensor:
    """The TFDS feature of one schema key: arrays zlib-compressed, scalars plain except float64 ones, which are
    stored as raw bytes (TFDS writes unencoded floats as float32 and would round them)."""
    dtype = np.dtype(dtype)
    if len(shape) > 0:
        return tfds.features.Tensor(shape=tuple(shape), dtype=dtype, encoding="zlib")
    if dtype == np.float64:
        return tfds.features.Tensor(shape=(), dtype=dtype, encoding="bytes")
    return tfds.features.Scalar(dtype=dtype)


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


def decode_jpegs(encoded, shape: tuple[int, ...], where: str) -> np.ndarray:
    """[n, h, w, 3] uint8 from n JPEG byte strings; ValueError naming ``where`` when a size differs."""
    from PIL import Image

    out = np.empty(shape, np.uint8)
    for i, data in enumerate(np.asarray(encoded, object).reshape(-1)):
        with Image.open(io.BytesIO(data)) as img:
            arr = np.asarray(img.convert("RGB"))
        if arr.shape != tuple(shape[1:]):
            raise ValueError(f"{where}: image {i} decoded to {arr.shape}, expected {tuple(shape[1:])}")
        out[i] = arr
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


def derive_config(predefined: Mapping[str, Any], base: str, fields: tuple[str, ...], what: str, **overrides):
    """A predefined config, or a copy named ``custom_<hash of its content>`` when ``overrides`` change it.

    Args:
      predefined: ``{name: config}``; configs have ``content()`` and the attributes ``fields``.
      base: the predefined name to start from.
      fields: the attributes ``overrides`` may set (None values keep the base's).
      what: the dataset's name in error messages.
    """
    if base not in predefined:
        raise ValueError(f"unknown {what} config '{base}'; predefined: {sorted(predefined)}")
    cfg = predefined[base]
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(f"unknown {what} config fields {unknown}; fields are {sorted(fields)}")
    kwargs = {f: getattr(cfg, f) for f in fields}
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    new = type(cfg)(name="custom", version=cfg.version, description=f"custom {what} config", **kwargs)
    if new.content() == cfg.content():
        return cfg
    new.name = content_name("custom", new.content())
    return new
