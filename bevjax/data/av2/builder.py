"""TFDS builder ``bevjax_av2``: Argoverse 2 LiDAR sweep pairs in the batch schema, written to ArrayRecord files.

Reads the Argoverse 2 sensor dataset (``<root>/<split>/<log_id>/``: ``sensors/lidar/*.feather``, poses,
``annotations.feather``, ``calibration/``, ``map/``), given as TFDS's manual dir, with
:func:`bevjax.data.av2.sample.load_pair`. Prepare with::

    python -m bevjax.data.prepare av2 --dataroot /data/av2/sensor [--config default] [--workers 8]

Splits: ``train`` and ``val`` (the folders present; ``test`` logs carry no cuboids, hence no flow labels, and are
not read). A record is the pair of sweeps (k, k + 1) of one log, for k = 0, stride, 2 stride, ...: logs in sorted
order, pairs in time order; ``sequence_id`` is the log's index in its split, ``frame_index`` the first sweep's index
in its log. Keys: the schema without the camera images and per-pixel labels (``schema.subset_spec``): calibration of
the ring cameras, BEV labels, both sweeps, flow, classes, ground, ``next_ego_from_ego``. ``metadata.json`` keeps the
log table (log id, first record, count) of every split. Open a split with
:func:`bevjax.data.av2.source.open_av2_split`.

===========  ==================================================================================================
config       content
===========  ==================================================================================================
``default``  ``BEVGrid()`` (100 m at 0.5 m), 7 ring cameras, both sweeps padded to 120,000 points, every pair
custom_*     :func:`make_config` with any grid, point count and pair stride
===========  ==================================================================================================
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator
from pathlib import Path

import tensorflow_datasets as tfds

from bevjax.data import records
from bevjax.data.av2.map import AV2Map
from bevjax.data.av2.reader import AV2Log
from bevjax.data.av2.sample import RING_CAMERAS, load_pair
from bevjax.data.base_builder import BevjaxBuilder
from bevjax.geometry.grid import BEVGrid
from bevjax.schema import example_spec, subset_spec

DATASET_NAME = "bevjax_av2"
VERSION = "1.0.0"
SPLITS = ("train", "val")
METADATA_KEY = "av2_builder_config"


@dataclasses.dataclass(eq=False, kw_only=True)
class AV2BuilderConfig(tfds.core.BuilderConfig):
    """What a ``bevjax_av2`` config stores: the label grid, points per sweep and the pair stride."""

    grid: BEVGrid = dataclasses.field(default_factory=BEVGrid)
    num_points: int = 120_000
    stride: int = 1

    def __post_init__(self):
        if self.num_points < 1 or self.stride < 1:
            raise ValueError(f"Argoverse 2 config '{self.name}': need num_points >= 1 and stride >= 1")

    def spec(self) -> dict:
        """``{key: (shape, dtype)}`` of a record (stored as it is: ``stored()`` is the same)."""
        return subset_spec(example_spec(len(RING_CAMERAS), (1, 1), self.grid.shape[:2], self.num_points))

    def stored(self) -> dict:
        return self.spec()

    def content(self) -> dict:
        return {"grid": dataclasses.asdict(self.grid), "num_points": self.num_points, "stride": self.stride}

    def to_json(self) -> dict:
        return {"name": self.name, **self.content()}


def config_from_json(d: dict) -> AV2BuilderConfig:
    """Rebuilds a config from :meth:`AV2BuilderConfig.to_json`."""
    return AV2BuilderConfig(
        name=d["name"],
        version=VERSION,
        grid=BEVGrid(**{k: tuple(v) for k, v in d["grid"].items()}),
        num_points=d["num_points"],
        stride=d["stride"],
        description="custom Argoverse 2 config",
    )


DEFAULT = AV2BuilderConfig(
    name="default", version=VERSION, description="BEVGrid(), 120,000 points, every pair."
)
PREDEFINED_CONFIGS = {DEFAULT.name: DEFAULT}


def make_config(base: str = "default", **overrides) -> AV2BuilderConfig:
    """A predefined config, or a ``custom_<hash>`` one when ``overrides`` (grid, num_points, stride) change it."""
    return records.derive_config(
        PREDEFINED_CONFIGS, base, ("grid", "num_points", "stride"), "Argoverse 2", **overrides
    )


def split_logs(root: Path, split: str) -> list[Path]:
    """Log folders of ``<root>/<split>`` with LiDAR sweeps and cuboids, sorted by log id."""
    folder = Path(root) / split
    if not folder.is_dir():
        return []
    return sorted(
        p
        for p in folder.iterdir()
        if (p / "sensors" / "lidar").is_dir() and (p / "annotations.feather").is_file()
    )


def log_pairs(log_dir: Path, stride: int) -> list[tuple[int, int]]:
    """(t0, t1) nanosecond timestamps of the pairs (k, k + 1), k = 0, stride, ..., of one log."""
    stamps = AV2Log(log_dir).lidar_timestamps()
    return [(int(stamps[k]), int(stamps[k + 1])) for k in range(0, len(stamps) - 1, stride)]


class _LogCache:
    """The open log and its map in one process (records come log by log)."""

    def __init__(self):
        self.key, self.log, self.map = None, None, None

    def get(self, log_dir: str) -> tuple[AV2Log, AV2Map]:
        if self.key != log_dir:
            self.key, self.log, self.map = log_dir, AV2Log(log_dir), AV2Map.load(log_dir)
        return self.log, self.map


def _record(cfg: AV2BuilderConfig, cache: _LogCache, item: tuple[str, int, int, int]) -> dict:
    log_dir, t0, t1, sequence_id = item
    log, av2_map = cache.get(log_dir)
    ex = load_pair(log, t0, t1, cfg.grid, cfg.num_points, av2_map, RING_CAMERAS, sequence_id)
    ex["_points_cut"] = int(ex["lidar_valid"].all() or ex["next_lidar_valid"].all())
    return ex


class BevjaxAV2(BevjaxBuilder):
    """Argoverse 2 sweep pairs in the bevjax schema (see the module docstring)."""

    name = DATASET_NAME
    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = {
        str(VERSION): "Sweep pairs with cuboid scene flow, classes, ground, BEV labels, calibration."
    }
    BUILDER_CONFIGS = [DEFAULT]
    DEFAULT_CONFIG_NAME = "default"
    PREDEFINED_CONFIGS = PREDEFINED_CONFIGS
    METADATA_KEY = METADATA_KEY
    TITLE = "Argoverse 2"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download the Argoverse 2 sensor dataset (https://www.argoverse.org) and pass the folder holding train/ "
        "and val/ (one folder per log) as the manual dir."
    )

    @classmethod
    def config_from_json(cls, d: dict) -> AV2BuilderConfig:
        return config_from_json(d)

    def _split_generators(self, dl_manager) -> dict[str, Iterator]:
        root = Path(dl_manager.manual_dir)
        cfg: AV2BuilderConfig = self.builder_config
        found = {s: split_logs(root, s) for s in SPLITS}
        found = {s: logs for s, logs in found.items() if logs}
        if not found:
            raise ValueError(
                f"Argoverse 2 root {root}: no log with sensors/lidar and annotations.feather under {SPLITS}"
            )
        layout, items = {}, {}
        for split, logs in found.items():
            rows, todo, start = [], [], 0
            for s, log_dir in enumerate(logs):
                pairs = log_pairs(log_dir, cfg.stride)
                rows.append([log_dir.name, start, len(pairs)])
                todo += [(str(log_dir), t0, t1, s) for t0, t1 in pairs]
                start += len(pairs)
            layout[split], items[split] = rows, todo
        self.info.metadata["logs"] = layout
        self.info.metadata["source"] = {"root": str(root)}
        self._announce(sum(len(todo) for todo in items.values()))
        return {split: self._generate_examples(todo) for split, todo in items.items()}

    def _generate_examples(self, items: list) -> Iterator[tuple[int, dict]]:
        return self._generate_records(functools.partial(_record, self.builder_config), items, _LogCache)


def prepare_command(data_dir: str, cfg: AV2BuilderConfig) -> str:
    """The shell command that prepares ``cfg`` (a Python call for custom configs)."""
    if cfg.name in PREDEFINED_CONFIGS:
        root = "<Argoverse 2 sensor root>"
        return f"python -m bevjax.data.prepare av2 --dataroot {root} --data_dir {data_dir} --config {cfg.name}"
    return (
        "python -c \"from bevjax.data.prepare import prepare_av2; prepare_av2('<root>', "
        f"'{data_dir}', <the AV2BuilderConfig named '{cfg.name}'>)\""
    )
