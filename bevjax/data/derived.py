"""TFDS builder ``bevjax_derived``: per-example outputs of an offline pass over a split (pseudo-labels, scores).

An offline pass (:func:`bevjax.training.offline.run_offline_pass`) runs a model or a host function over every
record of a prepared split and writes its outputs in chunks; this builder assembles the chunks into one split of
``array_record`` files, record ``i`` holding the outputs of record ``i`` of the source split (shuffling is
disabled). Layout on disk::

    <data_dir>/bevjax_derived/<pass>_<hash>/1.0.0/
        bevjax_derived-<source split>.array_record-00000-of-00001
        dataset_info.json  features.json  metadata.json

A config (:class:`DerivedBuilderConfig`, made by :func:`make_config`) holds the pass name, the spec of its
outputs, the identity of the source split (dataset, config, split), the number of records and the pass's own
settings (e.g. the checkpoint it ran); its name is ``<pass>_<hash of all of these>``, so that passes over
different sources, or with different settings, never share a directory. The config is written to
``metadata.json`` and reopened from its name alone (``BevjaxDerived.resolve_config(data_dir, name)``).

:class:`ZipSource` merges the derived keys into the source's examples by index (base examples plus
pseudo-labels, read by Grain as any other source); :func:`bevjax.data.datasets.open_derived_split` opens a
prepared derived split.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from bevjax.data.base_builder import BevjaxBuilder
from bevjax.data.records import content_name

DATASET_NAME = "bevjax_derived"
VERSION = "1.0.0"
METADATA_KEY = "derived_builder_config"
SOURCE_FIELDS = ("dataset", "config", "split")  # the identity of a source split
CHUNK_PATTERN = "chunk_{:05d}.npz"
_PASS_NAME = re.compile(r"^[a-z][a-z0-9_]*$")

Spec = Mapping[str, tuple[tuple[int, ...], Any]]


def normalize_spec(spec: Spec) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """``{key: (shape tuple, np.dtype)}`` from shapes given as lists or tuples and dtypes as names or types."""
    out = {}
    for key, value in spec.items():
        shape, dtype = value
        dtype = np.dtype(dtype)
        if dtype == np.dtype(object):
            raise ValueError(f"derived key '{key}': object arrays cannot be stored, give a numeric dtype")
        out[str(key)] = (tuple(int(d) for d in shape), dtype)
    return out


def _spec_json(spec: Spec) -> dict:
    return {k: [list(shape), np.dtype(dtype).name] for k, (shape, dtype) in normalize_spec(spec).items()}


def source_identity(dataset: str, config: str, split: str) -> dict[str, str]:
    """The identity of a source split, as recorded in the derived config: ``{dataset, config, split}``."""
    return {"dataset": str(dataset), "config": str(config), "split": str(split)}


@dataclasses.dataclass(eq=False, kw_only=True)
class DerivedBuilderConfig(tfds.core.BuilderConfig):
    """A ``bevjax_derived`` config: one pass over one source split.

    Attributes:
      pass_name: the pass (lowercase letters, digits, underscores), e.g. ``pgcm_scores``.
      output_spec: ``{key: (shape, dtype)}`` of one record (one example's outputs).
      source: ``{dataset, config, split}`` of the source split (:func:`source_identity`).
      num_records: the number of records (the source's length).
      settings: JSON-able settings of the pass that fix its outputs (checkpoint, thresholds, ...).
    """

    pass_name: str = ""
    output_spec: Mapping[str, tuple] = dataclasses.field(default_factory=dict)
    source: Mapping[str, str] = dataclasses.field(default_factory=dict)
    num_records: int = 0
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not _PASS_NAME.match(self.pass_name):
            raise ValueError(
                f"derived pass name '{self.pass_name}': use lowercase letters, digits and underscores, "
                "starting with a letter"
            )
        missing = [f for f in SOURCE_FIELDS if not self.source.get(f)]
        if missing:
            raise ValueError(f"derived pass '{self.pass_name}': the source identity lacks {missing}")
        if not self.output_spec:
            raise ValueError(f"derived pass '{self.pass_name}': the output spec is empty")
        self.output_spec = normalize_spec(self.output_spec)
        self.source = source_identity(*(self.source[f] for f in SOURCE_FIELDS))
        self.num_records = int(self.num_records)
        self.settings = dict(self.settings)

    @property
    def split(self) -> str:
        """The one split, named like the source split."""
        return self.source["split"]

    def spec(self) -> dict:
        """``{key: (shape, dtype)}`` of a record (stored as it is: ``stored()`` is the same)."""
        return dict(self.output_spec)

    def stored(self) -> dict:
        return self.spec()

    def content(self) -> dict:
        """Everything that fixes the records (hashed into the name)."""
        return {
            "pass_name": self.pass_name,
            "spec": _spec_json(self.output_spec),
            "source": dict(self.source),
            "num_records": self.num_records,
            "settings": self.settings,
        }

    def to_json(self) -> dict:
        return {"name": self.name, **self.content()}


def make_config(
    pass_name: str,
    spec: Spec,
    source: Mapping[str, str],
    num_records: int,
    settings: Mapping[str, Any] | None = None,
) -> DerivedBuilderConfig:
    """The config of a pass over a source split, named ``<pass_name>_<hash of its content>``.

    Args:
      pass_name: the pass, e.g. ``pgcm_scores`` or ``semanticflow_clusters``.
      spec: ``{key: (shape, dtype)}`` of one example's outputs.
      source: ``{dataset, config, split}`` of the source split.
      num_records: the source's length.
      settings: JSON-able settings that change the outputs (a checkpoint path and step, thresholds, ...).

    Returns:
      The config; the same arguments always give the same name.
    """
    cfg = DerivedBuilderConfig(
        name=pass_name,
        version=VERSION,
        description=f"offline pass {pass_name}",
        pass_name=pass_name,
        output_spec=spec,
        source=source,
        num_records=num_records,
        settings=dict(settings or {}),
    )
    cfg.name = content_name(pass_name, cfg.content())
    return cfg


def config_from_json(d: Mapping[str, Any]) -> DerivedBuilderConfig:
    """Rebuilds a config from :meth:`DerivedBuilderConfig.to_json` (stored in ``metadata.json``)."""
    return DerivedBuilderConfig(
        name=d["name"],
        version=VERSION,
        description=f"offline pass {d['pass_name']}",
        pass_name=d["pass_name"],
        output_spec={k: (tuple(shape), dtype) for k, (shape, dtype) in d["spec"].items()},
        source=d["source"],
        num_records=d["num_records"],
        settings=d.get("settings", {}),
    )


def chunk_path(chunks_dir: epath.PathLike, index: int) -> epath.Path:
    """The file of chunk ``index`` in a pass's work folder."""
    return epath.Path(chunks_dir) / CHUNK_PATTERN.format(index)


def read_chunk(path: epath.PathLike, spec: Spec, expected: int) -> dict[str, np.ndarray]:
    """The arrays ``{key: [m, ...]}`` of one chunk file, checked against ``spec`` and the expected length ``m``.

    Raises:
      ValueError: naming the file and the key whose shape or dtype differs, or that is missing.
    """
    path = epath.Path(path)
    with path.open("rb") as f, np.load(f) as data:
        out = {}
        for key, (shape, dtype) in normalize_spec(spec).items():
            if key not in data.files:
                raise ValueError(f"chunk {path} has no key '{key}' (keys {sorted(data.files)})")
            value = data[key]
            if value.shape != (expected, *shape) or value.dtype != dtype:
                raise ValueError(
                    f"chunk {path}: key '{key}' has shape {value.shape} dtype {value.dtype}, expected "
                    f"{(expected, *shape)} {dtype}; delete the chunk and run the pass again"
                )
            out[key] = value
    return out


class BevjaxDerived(BevjaxBuilder):
    """Outputs of an offline pass, one split named like the source split (see the module docstring).

    Prepared only from the chunks of a finished pass: ``builder.prepare(chunks_dir=..., chunk_size=...)``
    (what :func:`bevjax.training.offline.run_offline_pass` does).
    """

    name = DATASET_NAME
    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = {str(VERSION): "Per-example outputs of an offline pass, in the source split's order."}
    BUILDER_CONFIGS: list = []
    PREDEFINED_CONFIGS: Mapping[str, Any] = {}
    METADATA_KEY = METADATA_KEY
    TITLE = "derived"

    @classmethod
    def config_from_json(cls, d: Mapping[str, Any]) -> DerivedBuilderConfig:
        return config_from_json(d)

    def _split_generators(self, dl_manager) -> dict[str, Iterator]:
        cfg: DerivedBuilderConfig = self.builder_config
        chunks_dir = self._generation.get("chunks_dir")
        chunk_size = self._generation.get("chunk_size")
        if not chunks_dir or not chunk_size:
            raise ValueError(
                f"{DATASET_NAME}/{cfg.name} is written from the chunks of an offline pass: run "
                "bevjax.training.offline.run_offline_pass (or prepare(chunks_dir=..., chunk_size=...))"
            )
        self._announce(cfg.num_records)
        return {cfg.split: self._generate_examples(epath.Path(chunks_dir), int(chunk_size))}

    def _generate_examples(self, chunks_dir: epath.Path, chunk_size: int) -> Iterator[tuple[int, dict]]:
        cfg: DerivedBuilderConfig = self.builder_config
        for k, start in enumerate(range(0, cfg.num_records, chunk_size)):
            m = min(chunk_size, cfg.num_records - start)
            arrays = read_chunk(chunk_path(chunks_dir, k), cfg.output_spec, m)
            for j in range(m):
                if self._progress is not None:
                    self._progress()
                # Key = index in the source split: records keep the source's order.
                yield start + j, {key: value[j] for key, value in arrays.items()}


class ZipSource:
    """A base source's examples with the keys of a derived source merged in, by index (picklable).

    ``ZipSource(base, derived)[i] == {**base[i], **derived[i]}``; e.g. world records plus their pseudo-labels,
    read by ``grain.MapDataset.source`` as any source.

    Attributes:
      base, derived: the two sources (``len``, ``source[i]`` -> dict).
      spec: the merged ``{key: (shape, dtype)}`` when both sources have a ``spec``.
    """

    def __init__(self, base, derived):
        """Raises ValueError when the lengths differ or a key is in both (naming them)."""
        if len(base) != len(derived):
            raise ValueError(
                f"cannot zip sources of different lengths: base {base!r} has {len(base)} records, derived "
                f"{derived!r} has {len(derived)}"
            )
        self.base, self.derived = base, derived
        base_spec, derived_spec = getattr(base, "spec", None), getattr(derived, "spec", None)
        self.spec = None
        if base_spec is not None and derived_spec is not None:
            self._check_keys(base_spec, derived_spec)
            self.spec = {**base_spec, **derived_spec}

    @staticmethod
    def _check_keys(base_keys, derived_keys, index: int | None = None) -> None:
        both = sorted(set(base_keys) & set(derived_keys))
        if both:
            where = "" if index is None else f" (record {index})"
            raise ValueError(
                f"keys {both} are in both the base and the derived source{where}: rename the pass's outputs"
            )

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict:
        base, derived = self.base[index], self.derived[index]
        if self.spec is None:
            self._check_keys(base, derived, index)
        return {**base, **derived}

    def __repr__(self) -> str:
        return f"ZipSource({self.base!r}, {self.derived!r})"
