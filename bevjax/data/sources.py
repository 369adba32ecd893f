"""Random-access sources over prepared splits, the checks before opening them and errors that say what to do.

- :class:`PreparedSplitSource`: one split of any prepared bevjax builder (``len(source)``, ``source[i]`` -> a dict
  of NumPy arrays in the batch schema), suitable for ``grain.MapDataset.source`` and picklable for Grain worker
  processes; errors name the array_record file and the record's index in it.
- :class:`SubsetSource`: chosen records of a source (the nuScenes domain views).
- :func:`check_prepared`: prepared, split present, stored features and config equal to the code's.
- :func:`open_world_split` / :class:`WorldSplitSource`: a ``bevjax_world`` split, e.g.
  ``open_world_split(data_dir, 'tiny', 'boston_train')[i] == render_sample(world, 'boston', 'train', i)``.

The nuScenes and Argoverse 2 openers build on this module (:func:`bevjax.data.nuscenes.source.open_nuscenes_split`,
:func:`bevjax.data.av2.source.open_av2_split`); :mod:`bevjax.data.datasets` opens any of them from a run config.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Mapping

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from bevjax.data import world_builder as wb
from bevjax.data.records import JPEG_SUFFIX, decode_jpegs
from bevjax.world.sample import example_spec_for


class DatasetNotPreparedError(FileNotFoundError):
    """The requested dataset config has not been prepared in the data dir."""


class SplitNotFoundError(ValueError):
    """The prepared dataset has no split of the requested name."""


class SchemaMismatchError(ValueError):
    """The prepared features differ from the spec the code expects."""


class ConfigMismatchError(ValueError):
    """The prepared data was rendered from a different world config than the one of the same name in the code."""


class CorruptRecordError(OSError):
    """A record could not be read or decoded."""


def _describe(shape, dtype) -> str:
    return f"shape {tuple(shape)} dtype {np.dtype(dtype).name}"


def check_prepared_schema(features_path: epath.PathLike, spec: Mapping[str, tuple]) -> None:
    """Compares the features stored in a prepared dataset with ``spec``.

    Args:
      features_path: the prepared ``features.json`` file.
      spec: ``{key: (shape, dtype)}`` the code expects (``example_spec_for(world)``).

    Raises:
      SchemaMismatchError: naming the key, the file and both shapes/dtypes (or the missing/extra keys).
    """
    features_path = epath.Path(features_path)
    try:
        stored = tfds.features.FeatureConnector.from_config(str(features_path.parent))
    except Exception as e:
        raise SchemaMismatchError(f"could not read the prepared features from {features_path}: {e}") from e
    stored_keys = set(stored.keys()) if isinstance(stored, tfds.features.FeaturesDict) else set()
    hint = "delete the prepared directory and prepare it again (or use another config name)"
    missing, extra = sorted(set(spec) - stored_keys), sorted(stored_keys - set(spec))
    if missing or extra:
        raise SchemaMismatchError(
            f"prepared features in {features_path} do not match the schema: keys missing there {missing}, "
            f"unexpected keys there {extra}; {hint}"
        )
    for key, (shape, dtype) in spec.items():
        feature = stored[key]
        if tuple(feature.shape) != tuple(shape) or np.dtype(feature.np_dtype) != np.dtype(dtype):
            raise SchemaMismatchError(
                f"key '{key}' in {features_path} has {_describe(feature.shape, feature.np_dtype)} but the code "
                f"expects {_describe(shape, dtype)}; {hint}"
            )


def check_prepared_config(metadata_path: epath.PathLike, config, key: str = "world_builder_config") -> None:
    """Compares the config stored in a prepared dataset's ``metadata.json`` with ``config``.

    Args:
      metadata_path: the prepared ``metadata.json``.
      config: the config the code uses under that name (anything with ``to_json()`` and ``name``).
      key: the metadata entry holding the stored ``to_json()``.

    Raises:
      ConfigMismatchError: naming the file and the first differing field (e.g. after a change of
        ``tiny_config()``, whose data would otherwise be silently reused).
    """
    metadata_path = epath.Path(metadata_path)
    if not metadata_path.exists():
        return
    stored = json.loads(metadata_path.read_text()).get(key)
    if stored is None:
        return
    expected = json.loads(json.dumps(config.to_json()))

    def first_difference(a, b, path=""):
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                d = first_difference(a.get(k), b.get(k), f"{path}.{k}" if path else k)
                if d:
                    return d
            return None
        return None if a == b else f"'{path}' is {a!r} there but {b!r} in the code"

    diff = first_difference(stored, expected)
    if diff:
        raise ConfigMismatchError(
            f"{metadata_path} was prepared from another '{config.name}' config: {diff}; delete "
            f"{metadata_path.parent} and prepare it again"
        )


class PreparedSplitSource:
    """Random access to one split of a prepared TFDS dataset: ``len(source)``, ``source[i]`` -> schema dict.

    Keys stored as ``<name>_jpeg`` (JPEG bytes per camera) are decoded into ``<name>`` with the shape of the
    spec. Errors name the array_record file and the record's index in it.

    Attributes:
      data_dir: the TFDS data dir; ``data_path``: the prepared version directory.
      split: the split name.
      spec: ``{key: (shape, dtype)}`` of one decoded example.
      files: ``[(path, first index, number of records, skip)]`` of the split's array_record files, in order.
    """

    def __init__(self, builder, split: str, spec: Mapping[str, tuple]):
        self.data_dir = builder.data_dir_root
        self.data_path = builder.data_path
        self.split = split
        self.spec = dict(spec)
        self._source = builder.as_data_source(split)
        self.files = []
        start = 0
        for fi in builder.info.splits[split].file_instructions:
            # ``filename`` is relative to the data path in TFDS 4.9; keep an absolute path either way.
            path = epath.Path(fi.filename)
            if not path.is_absolute():
                path = builder.data_path / fi.filename
            self.files.append((str(path), start, int(fi.take), int(fi.skip)))
            start += int(fi.take)
        self._starts = [f[1] for f in self.files]
        self._len = start

    def __len__(self) -> int:
        return self._len

    def locate(self, index: int) -> tuple[str, int]:
        """The array_record file holding record ``index`` of the split and the record's index within it.

        Args:
          index: the record index in the split, in ``[0, len(self))``.

        Returns:
          ``(path, index within the file)``.
        """
        k = bisect.bisect_right(self._starts, index) - 1
        path, start, _, skip = self.files[k]
        return path, index - start + skip

    def _where(self, index: int) -> str:
        path, j = self.locate(index)
        return f"record {j} of array_record file {path} (index {index} of split '{self.split}')"

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if index < 0:
            index += self._len
        if not 0 <= index < self._len:
            raise IndexError(f"index {index} out of range for split '{self.split}' of {self._len} records")
        try:
            record = self._source[index]
        except Exception as e:
            raise CorruptRecordError(
                f"could not read or decode {self._where(index)}: {type(e).__name__}: {e}. The file is corrupt "
                f"or truncated: delete {self.data_path} and prepare the dataset again"
            ) from e
        out = {}
        for key, (shape, dtype) in self.spec.items():
            if key not in record and key + JPEG_SUFFIX in record:
                try:
                    value = decode_jpegs(
                        record[key + JPEG_SUFFIX], shape, f"{self._where(index)}, key '{key}'"
                    )
                except OSError as e:
                    raise CorruptRecordError(f"{self._where(index)}: key '{key}': bad JPEG data: {e}") from e
            else:
                value = np.asarray(record[key], dtype)
            if value.shape != tuple(shape):
                raise CorruptRecordError(
                    f"{self._where(index)}: key '{key}' decoded to {_describe(value.shape, value.dtype)}, "
                    f"expected {_describe(shape, dtype)}"
                )
            out[key] = value[()] if value.ndim == 0 else value
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.data_path}, split={self.split!r}, len={self._len})"


class SubsetSource:
    """Records ``indices`` of a base source, in that order (``len``, ``source[i]``); picklable."""

    def __init__(self, base, indices: list[int], split: str):
        self.base, self.indices, self.split = base, list(indices), split
        self.spec = base.spec

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        if not -len(self) <= int(i) < len(self):
            raise IndexError(f"index {i} out of range for split '{self.split}' of {len(self)} records")
        return self.base[self.indices[int(i)]]

    def __repr__(self) -> str:
        return f"SubsetSource({self.base!r}, split={self.split!r}, len={len(self)})"


class WorldSplitSource(PreparedSplitSource):
    """A prepared ``bevjax_world`` split (see :class:`PreparedSplitSource`).

    Attributes:
      config: the :class:`~bevjax.data.world_builder.WorldBuilderConfig`.
      domain, kind: the split's domain and kind (``'train'`` / ``'val'``).
      frames_per_sequence: consecutive records ``[s * F, (s + 1) * F)`` form sequence ``s``.
    """

    def __init__(self, builder: wb.BevjaxWorld, split: str):
        self.config: wb.WorldBuilderConfig = builder.builder_config
        self.domain, self.kind = wb.parse_split(split)
        self.frames_per_sequence = self.config.world.frames_per_sequence
        super().__init__(builder, split, example_spec_for(self.config.world))

    @property
    def num_sequences(self) -> int:
        return self._len // self.frames_per_sequence


def check_prepared(builder, split: str, stored_spec, config, metadata_key: str, prepare_hint: str) -> None:
    """All checks before opening a prepared split: prepared, the split exists, the stored features equal
    ``stored_spec`` and ``metadata.json`` holds ``config`` under ``metadata_key``
    (:func:`check_prepared_split`, :func:`check_prepared_schema`, :func:`check_prepared_config`)."""
    check_prepared_split(builder, split, prepare_hint)
    check_prepared_schema(builder.data_path / "features.json", stored_spec)
    check_prepared_config(builder.data_path / "metadata.json", config, metadata_key)


def check_prepared_split(builder, split: str, prepare_hint: str) -> None:
    """Raises DatasetNotPreparedError (with ``prepare_hint``, the command that prepares it) or SplitNotFoundError
    (listing the available splits) for a TFDS builder and a split name."""
    if not builder.is_prepared():
        raise DatasetNotPreparedError(
            f"{builder.name} config '{builder.builder_config.name}' is not prepared in data_dir "
            f"{builder.data_dir_root} (no {builder.data_path}/dataset_info.json). Prepare it with:\n  {prepare_hint}"
        )
    available = list(builder.info.splits.keys())
    if split not in available:
        raise SplitNotFoundError(
            f"split '{split}' not found in {builder.data_path}; available splits: {sorted(available)}"
        )


def open_world_split(
    data_dir: str | epath.PathLike,
    config: str | wb.WorldBuilderConfig,
    split: str,
) -> WorldSplitSource:
    """Opens a prepared split of ``bevjax_world`` for random access.

    Args:
      data_dir: the TFDS data dir the dataset was prepared in.
      config: a predefined config name (``'default'``, ``'tiny'``), a prepared custom name or a
        :class:`~bevjax.data.world_builder.WorldBuilderConfig`.
      split: ``<domain>_<train|val>``, e.g. ``'boston_train'``.

    Returns:
      A :class:`WorldSplitSource`.

    Raises:
      DatasetNotPreparedError: the config is not prepared in ``data_dir`` (the message gives the command).
      SplitNotFoundError: no such split (the message lists the available ones).
      SchemaMismatchError: the prepared features differ from ``example_spec_for(config.world)``.
      ConfigMismatchError: the prepared data was rendered from another config of the same name.
    """
    data_dir = str(data_dir)
    cfg = wb.resolve_config(data_dir, config)
    builder = wb.BevjaxWorld(data_dir=data_dir, config=cfg)
    spec = example_spec_for(cfg.world)
    check_prepared(builder, split, spec, cfg, wb.METADATA_KEY, wb.prepare_command(data_dir, cfg))
    return WorldSplitSource(builder, split)
