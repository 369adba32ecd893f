"""The datasets a run can read: ``config.data.dataset`` names one of :data:`DATASETS`, :func:`open_splits` opens it.

============  ===============  ================================================================================
name          builder          what ``config.data`` sets (besides ``data_dir`` and the run's grid)
============  ===============  ================================================================================
``world``     bevjax_world     ``domains``, ``train_sequences``, ``val_sequences``, ``world`` (seed,
                               frames_per_sequence, lidar_beams, lidar_azimuths); rendered on first use.
                               Splits ``<domain>_<train|val>``; sources have ``frames_per_sequence``.
``nuscenes``  bevjax_nuscenes  ``nuscenes`` (dataroot, config, image_hw: the stored size, num_points,
                               num_sweeps, workers); prepared on first use from the dataroot. Splits ``train``,
                               ``val``, ``test``, ``mini_train``, ``mini_val`` and domain views (``night_val``).
``av2``       bevjax_av2       ``av2`` (root, config, num_points, stride, workers; :data:`AV2_DEFAULTS`);
                               prepared on first use from the sensor root. Splits ``train``, ``val``.
============  ===============  ================================================================================

The model inputs are passed to :func:`open_splits` explicitly (``config.inputs``): ``cameras`` (the world renders
them, nuScenes reads those channels) and ``image_hw`` (the world's render size; nuScenes images keep the stored
size and an augmentation brings them to the network's). Argoverse 2 pairs have no images and use neither.
nuScenes and Argoverse 2 records carry ``sequence_id`` and ``frame_index``.

Each dataset is one :class:`Dataset` entry; a new one (e.g. generated splits) is a new entry in
:data:`DATASETS`. Derived splits (``bevjax_derived``: the outputs of an offline pass over a split of one of these,
made by :func:`bevjax.training.offline.run_offline_pass`) are not prepared from a run config and have no entry;
:func:`open_derived_split` opens them and :class:`~bevjax.data.derived.ZipSource` merges them into their source.
Layering: this module builds on the builders and the sources; only the command line
(:mod:`bevjax.data.prepare`) and the trainer's tasks import it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections

from bevjax.data import derived as db
from bevjax.data import sources
from bevjax.data import world_builder as wb
from bevjax.data.av2 import builder as ab
from bevjax.data.av2.source import open_av2_split
from bevjax.data.base_builder import BevjaxBuilder, default_data_dir
from bevjax.data.nuscenes import builder as nb
from bevjax.data.nuscenes import splits as nusc_splits
from bevjax.data.nuscenes.source import open_nuscenes_split
from bevjax.geometry.grid import BEVGrid
from bevjax.world.config import WorldConfig

# ``config.data.av2`` when a config has none (only ``dataset='av2'`` reads it).
AV2_DEFAULTS = dict(root="", config="default", num_points=120_000, stride=1, workers=0)

Cameras = tuple[str, ...]
ImageHW = tuple[int, int]


@dataclasses.dataclass(frozen=True)
class Dataset:
    """One dataset of the registry.

    Attributes:
      name: the value of ``config.data.dataset``.
      builder: the TFDS builder class (a :class:`~bevjax.data.base_builder.BevjaxBuilder`).
      make_config: ``(data_cfg, grid, cameras, image_hw) -> builder config`` of a run (``data_cfg`` is
        ``config.data``; cameras and image_hw are the model inputs, None for datasets that do not use them).
      open_split: ``(data_dir, builder_config, split) -> source`` of a prepared split.
      prepare: ``(data_dir, builder_config, data_cfg, progress) -> builder``: prepares (a no-op when prepared).
      prepare_command: ``(data_dir, builder_config) -> str``: the shell command that prepares it.
      split_names: ``builder_config -> [split names]`` the config can offer.
      raw_data: ``data_cfg -> (config flag, value)`` of the raw data preparing needs (``value`` may be empty:
        not set), or None when preparing needs no raw data (the world is rendered).
    """

    name: str
    builder: type[BevjaxBuilder]
    make_config: Callable[[ml_collections.ConfigDict, BEVGrid, Cameras | None, ImageHW | None], Any]
    open_split: Callable[[str, Any, str], Any]
    prepare: Callable[[str, Any, ml_collections.ConfigDict, bool], BevjaxBuilder]
    prepare_command: Callable[[str, Any], str]
    split_names: Callable[[Any], list[str]]
    raw_data: Callable[[ml_collections.ConfigDict], tuple[str, str]] | None = None


def _section(data_cfg: ml_collections.ConfigDict, name: str, defaults: Mapping[str, Any]) -> dict:
    """``config.data.<name>`` as a dict, ``defaults`` filling what it lacks."""
    given = data_cfg.get(name)
    return {**defaults, **(given.to_dict() if given is not None else {})}


def _need(value, what: str, dataset: str):
    if value is None:
        raise ValueError(
            f"config.data.dataset='{dataset}' needs the model's {what}: pass {what}= to open_splits()"
        )
    return value


# world -----------------------------------------------------------------------------------------------------


def world_config(
    data_cfg: ml_collections.ConfigDict, grid: BEVGrid, cameras: Cameras, image_hw: ImageHW
) -> WorldConfig:
    """The ``WorldConfig`` of ``config.data.world`` rendering ``cameras`` at ``image_hw`` on ``grid``."""
    w = data_cfg.world
    return WorldConfig(
        seed=int(w.get("seed", 0)),
        cameras=tuple(_need(cameras, "cameras", "world")),
        image_hw=tuple(_need(image_hw, "image_hw", "world")),
        grid=grid,
        frames_per_sequence=int(w.frames_per_sequence),
        lidar_beams=int(w.lidar_beams),
        lidar_azimuths=int(w.lidar_azimuths),
    )


def _world_make_config(data_cfg, grid, cameras, image_hw) -> wb.WorldBuilderConfig:
    return wb.make_builder_config(
        "default",
        world=world_config(data_cfg, grid, cameras, image_hw),
        domains=tuple(data_cfg.domains),
        train_sequences=int(data_cfg.train_sequences),
        val_sequences=int(data_cfg.val_sequences),
    )


def _world_prepare(data_dir, bcfg, data_cfg, progress) -> wb.BevjaxWorld:
    return wb.BevjaxWorld(data_dir=data_dir, config=bcfg).prepare(progress=progress)


# nuScenes --------------------------------------------------------------------------------------------------


def _nuscenes_make_config(data_cfg, grid, cameras, image_hw) -> nb.NuScenesBuilderConfig:
    n = _section(data_cfg, "nuscenes", {})
    stored_hw = tuple(n.get("image_hw") or nb.NUSCENES_IMAGE_HW)
    # The files' own size is stored as None: the builder then copies the JPEG bytes without decoding them.
    return nb.make_config(
        n.get("config", "keyframes"),
        grid=grid,
        image_hw=None if stored_hw == nb.NUSCENES_IMAGE_HW else stored_hw,
        num_points=None if n.get("num_points") is None else int(n["num_points"]),
        num_sweeps=None if n.get("num_sweeps") is None else int(n["num_sweeps"]),
        cameras=tuple(_need(cameras, "cameras", "nuscenes")),
    )


def _nuscenes_prepare(data_dir, bcfg, data_cfg, progress) -> nb.BevjaxNuScenes:
    n = _section(data_cfg, "nuscenes", {})
    builder = nb.BevjaxNuScenes(data_dir=data_dir, config=bcfg)
    return builder.prepare(n.get("dataroot"), progress=progress, workers=int(n.get("workers") or 0))


def _nuscenes_raw(data_cfg) -> tuple[str, str]:
    return "config.data.nuscenes.dataroot", _section(data_cfg, "nuscenes", {}).get("dataroot", "")


def _nuscenes_splits(bcfg) -> list[str]:
    return list(nb.STORED_SPLITS) + [f"{d}_{k}" for d in nusc_splits.DOMAINS for k in ("train", "val")]


# Argoverse 2 -----------------------------------------------------------------------------------------------


def _av2_make_config(data_cfg, grid, cameras, image_hw) -> ab.AV2BuilderConfig:
    a = _section(data_cfg, "av2", AV2_DEFAULTS)
    return ab.make_config(a["config"], grid=grid, num_points=int(a["num_points"]), stride=int(a["stride"]))


def _av2_raw(data_cfg) -> tuple[str, str]:
    return "config.data.av2.root", _section(data_cfg, "av2", AV2_DEFAULTS)["root"]


def _av2_prepare(data_dir, bcfg, data_cfg, progress) -> ab.BevjaxAV2:
    a = _section(data_cfg, "av2", AV2_DEFAULTS)
    builder = ab.BevjaxAV2(data_dir=data_dir, config=bcfg)
    return builder.prepare(a["root"], progress=progress, workers=int(a["workers"]))


DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset(
            name="world",
            builder=wb.BevjaxWorld,
            make_config=_world_make_config,
            open_split=sources.open_world_split,
            prepare=_world_prepare,
            prepare_command=wb.prepare_command,
            split_names=lambda bcfg: bcfg.split_names(),
        ),
        Dataset(
            name="nuscenes",
            builder=nb.BevjaxNuScenes,
            make_config=_nuscenes_make_config,
            open_split=open_nuscenes_split,
            prepare=_nuscenes_prepare,
            prepare_command=nb.prepare_command,
            split_names=_nuscenes_splits,
            raw_data=_nuscenes_raw,
        ),
        Dataset(
            name="av2",
            builder=ab.BevjaxAV2,
            make_config=_av2_make_config,
            open_split=open_av2_split,
            prepare=_av2_prepare,
            prepare_command=ab.prepare_command,
            split_names=lambda bcfg: list(ab.SPLITS),
            raw_data=_av2_raw,
        ),
    )
}


def get(name: str) -> Dataset:
    """The registry entry named ``name``; a ValueError listing the names otherwise."""
    if name not in DATASETS:
        raise ValueError(f"config.data.dataset='{name}': choose from {sorted(DATASETS)}")
    return DATASETS[name]


def _inputs(data_cfg, cameras, image_hw) -> tuple[Cameras | None, ImageHW | None]:
    # Deprecated: before config.inputs existed the model inputs were config.data.world.cameras / image_hw.
    # Callers now pass them; this fallback goes once no config has those fields.
    world = data_cfg.get("world")
    if cameras is None and world is not None and world.get("cameras") is not None:
        cameras = world.cameras
    if image_hw is None and world is not None and world.get("image_hw") is not None:
        image_hw = world.image_hw
    return (
        None if cameras is None else tuple(cameras),
        None if image_hw is None else tuple(int(v) for v in image_hw),
    )


def builder_config(
    data_cfg: ml_collections.ConfigDict,
    grid: BEVGrid,
    *,
    cameras: Sequence[str] | None = None,
    image_hw: Sequence[int] | None = None,
):
    """The registry entry and the builder config of ``config.data`` for the run's grid and model inputs.

    Returns:
      ``(entry, builder_config)``.
    """
    entry = get(data_cfg.dataset)
    cameras, image_hw = _inputs(data_cfg, cameras, image_hw)
    return entry, entry.make_config(data_cfg, grid, cameras, image_hw)


def open_splits(
    data_cfg: ml_collections.ConfigDict,
    grid: BEVGrid,
    splits: Sequence[str],
    *,
    cameras: Sequence[str] | None = None,
    image_hw: Sequence[int] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Opens ``splits`` of the run's dataset, preparing it first when it is not prepared.

    Args:
      data_cfg: the run config's ``config.data`` (``dataset``, ``data_dir`` and the dataset's settings).
      grid: the BEV grid of the labels.
      splits: split names (see :data:`DATASETS` for each dataset's).
      cameras: the model's camera channels, in order (``config.inputs.cameras``).
      image_hw: the model's image size (``config.inputs.image_hw``).
      progress: a progress bar while preparing.

    Returns:
      ``{split: source}``; each source has ``len``, ``source[i]`` -> a schema dict, and ``spec``; world sources
      also ``frames_per_sequence``.

    Raises:
      ValueError: an unknown dataset or split (listing the choices).
      DatasetNotPreparedError: not prepared and the raw data it needs is not set (the message names the flag
        and the prepare command).
    """
    entry, bcfg = builder_config(data_cfg, grid, cameras=cameras, image_hw=image_hw)
    data_dir = str(data_cfg.get("data_dir") or default_data_dir())
    known = entry.split_names(bcfg)
    for split in splits:
        if split not in known:
            raise ValueError(
                f"config.data split '{split}' is not a split of the {entry.name} dataset "
                f"{entry.builder.name}/{bcfg.name}: choose from {known}"
            )
    try:
        return {s: entry.open_split(data_dir, bcfg, s) for s in splits}
    except sources.DatasetNotPreparedError:
        if entry.raw_data is not None:
            flag, value = entry.raw_data(data_cfg)
            if not value:
                raise sources.DatasetNotPreparedError(
                    f"{entry.builder.name}/{bcfg.name} is not prepared in {data_dir}: set --{flag}=/path/to/it "
                    f"to prepare it on first use, or prepare it with:\n  {entry.prepare_command(data_dir, bcfg)}"
                ) from None
        entry.prepare(data_dir, bcfg, data_cfg, progress)
        return {s: entry.open_split(data_dir, bcfg, s) for s in splits}


def open_split(dataset: str, data_dir: str, config, split: str):
    """One prepared split of a dataset of the registry, with no preparing.

    Args:
      dataset: a registry name (``world``, ``nuscenes``, ``av2``).
      data_dir: the TFDS data dir.
      config: a builder config, or the name of a predefined or prepared custom config.
      split: the split name.

    Returns:
      The source.
    """
    entry = get(dataset)
    return entry.open_split(str(data_dir), entry.builder.resolve_config(str(data_dir), config), split)


def open_derived_split(data_dir, config: str | db.DerivedBuilderConfig, split: str | None = None):
    """A prepared split of ``bevjax_derived`` (the outputs of an offline pass), with no preparing.

    Args:
      data_dir: the TFDS data dir.
      config: the :class:`~bevjax.data.derived.DerivedBuilderConfig`, or its name ``<pass>_<hash>`` (reopened
        from its ``metadata.json``).
      split: the split (the source split's name); None for the config's one split.

    Returns:
      A :class:`~bevjax.data.sources.PreparedSplitSource`: record ``i`` holds the outputs of record ``i`` of
      the source split, as ``{key: array}`` of the config's spec.

    Raises:
      DatasetNotPreparedError: the pass has not finished (or never ran) in ``data_dir``; SplitNotFoundError;
        SchemaMismatchError / ConfigMismatchError: the prepared data differs from the config.
    """
    data_dir = str(data_dir)
    cfg = db.BevjaxDerived.resolve_config(data_dir, config)
    builder = db.BevjaxDerived(data_dir=data_dir, config=cfg)
    hint = (
        f"run the offline pass '{cfg.pass_name}' (bevjax.training.offline.run_offline_pass) over {cfg.source}"
    )
    split = cfg.split if split is None else split
    sources.check_prepared(builder, split, cfg.stored(), cfg, db.METADATA_KEY, hint)
    return sources.PreparedSplitSource(builder, split, cfg.spec())
