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


class RealDatasetBuilder(tfds.core.GeneratorBasedBuilder):
    """What the real-dataset builders share: array_record files, predefined configs passed by name (TFDS pickles
    builders by their keyword arguments), generation settings that are not content (progress, worker
    processes), records in generation order, the config in ``metadata.json`` under ``METADATA_KEY``.

    Subclasses set the TFDS class attributes, ``PREDEFINED_CONFIGS`` and ``METADATA_KEY``; their configs have
    ``stored()`` (the stored spec) and ``to_json()``.
    """

    PREDEFINED_CONFIGS: Mapping[str, Any] = {}
    METADATA_KEY = ""

    def __init__(self, *, file_format: str | None = "array_record", **kw):
        self._progress, self._total, self._workers, self._generation = None, None, 0, {}
        config = kw.get("config")
        if (
            config is not None
            and not isinstance(config, str)
            and self.PREDEFINED_CONFIGS.get(config.name) is config
        ):
            kw["config"] = config.name
        super().__init__(file_format=file_format, **kw)

    def set_generation(
        self,
        progress: Callable[[], Any] | None = None,
        total: Callable[[int], Any] | None = None,
        workers: int = 0,
        **options,
    ) -> None:
        """How ``download_and_prepare`` runs: a callable per record, one told the number of records once the
        raw data is read, worker processes, builder options."""
        self._progress, self._total = progress, total
        self._workers, self._generation = int(workers), dict(options)

    def _announce(self, num_records: int) -> None:
        """Tells the ``total`` callable of :meth:`set_generation` how many records all splits will hold."""
        if self._total is not None:
            self._total(num_records)

    # TFDS's own ``code_path`` needs a backport absent here for builders outside tensorflow_datasets.
    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls):
        import inspect

        from etils import epath

        return epath.Path(inspect.getfile(cls))

    def _info(self) -> tfds.core.DatasetInfo:
        import inspect

        cfg = self.builder_config
        return tfds.core.DatasetInfo(
            builder=self,
            description=(inspect.getmodule(type(self)).__doc__ or "").split("\n\n")[0],
            features=stored_features(cfg.stored()),
            disable_shuffling=True,  # record i of a split is the i-th generated one
            metadata=tfds.core.MetadataDict({self.METADATA_KEY: cfg.to_json()}),
        )

    def _generate_records(self, fn, items: list, initializer) -> Iterator[tuple[int, dict]]:
        """``(index, fn(state, item))`` in order (see :func:`ordered_map`); records whose ``_points_cut`` is set
        are counted and reported at the end."""
        cut = 0
        for index, ex in enumerate(ordered_map(fn, items, initializer, self._workers)):
            cut += ex.pop("_points_cut", 0)
            if self._progress is not None:
                self._progress()
            yield index, ex
        if cut:
            print(
                f"{self.name}: {cut} of {len(items)} records filled all num_points slots (points may be cut)"
            )
