"""TFDS builder ``bevjax_nuscenes``: nuScenes keyframes in the batch schema, written to ArrayRecord files.

Reads a dataroot (``<root>/v1.0-*/`` tables, ``samples/``, ``sweeps/``, ``maps/``) given as TFDS's manual dir,
with :func:`bevjax.data.nuscenes.sample.load_sample`; needs no devkit and no TensorFlow. Prepare with::

    python -m bevjax.data.prepare nuscenes --dataroot /data/nuscenes [--config keyframes] [--workers 8]

Stored splits are the official scene splits present in the dataroot (``train``, ``val``, ``test``, ``mini_train``,
``mini_val``; see :mod:`bevjax.data.nuscenes.splits`), keyframes in scene order and, within a scene, in time
order. The domain splits ``<boston|singapore|day|night|dry|rain>_<train|val>`` are views over ``train`` / ``val``
(no second copy on disk): :func:`bevjax.data.nuscenes.source.open_nuscenes_split` selects their scenes from the
scene table kept in ``metadata.json``.

Per record: the schema keys but ``pv_labels`` and ``depth`` (``schema.DENSE_LABEL_KEYS``), images as one JPEG
byte string per camera (``images_jpeg``; the original files' bytes when the config keeps the stored size,
re-encoded at quality 95 when it resizes), decoded to ``images`` [n, h, w, 3] on reading. ``sequence_id`` is the
scene's index in its split, ``frame_index`` the keyframe's index in its scene.

=============  ==============================================================================================
config         content
=============  ==============================================================================================
``keyframes``  1600x900 images, ``BEVGrid()`` (100 m at 0.5 m), the keyframe LiDAR sweep padded to 35,000 points
``sweeps10``   as ``keyframes``, with the 9 earlier LiDAR sweeps merged in, padded to 350,000 points
custom_*       :func:`make_config` with any grid, image size, point count, sweep count and cameras
=============  ==============================================================================================
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from bevjax.data import records
from bevjax.data.base_builder import BevjaxBuilder
from bevjax.data.nuscenes import splits as nusc_splits
from bevjax.data.nuscenes.sample import camera_jpeg, load_sample
from bevjax.data.nuscenes.tables import NuScenesTables, find_version
from bevjax.geometry.grid import BEVGrid
from bevjax.schema import DENSE_LABEL_KEYS, NUSCENES_CAMERAS, example_spec, subset_spec

DATASET_NAME = "bevjax_nuscenes"
VERSION = "1.0.0"
NUSCENES_IMAGE_HW = (900, 1600)  # every nuScenes camera image
STORED_SPLITS = ("train", "val", "test", "mini_train", "mini_val")
METADATA_KEY = "nuscenes_builder_config"


@dataclasses.dataclass(eq=False, kw_only=True)
class NuScenesBuilderConfig(tfds.core.BuilderConfig):
    """What a ``bevjax_nuscenes`` config stores.

    Attributes:
      grid: the BEV grid of the labels.
      image_hw: stored image size (images resized, intrinsics scaled); None keeps the files' 900 x 1600.
      num_points: LiDAR points per record (padded, or cut with the count recorded in the metadata).
      num_sweeps: earlier LiDAR sweeps merged into each keyframe's points.
      cameras: camera channels, in order.
    """

    grid: BEVGrid = dataclasses.field(default_factory=BEVGrid)
    image_hw: tuple[int, int] | None = None
    num_points: int = 35_000
    num_sweeps: int = 0
    cameras: tuple[str, ...] = NUSCENES_CAMERAS

    def __post_init__(self):
        self.cameras = tuple(self.cameras)
        self.image_hw = None if self.image_hw is None else tuple(int(v) for v in self.image_hw)
        unknown = [c for c in self.cameras if c not in NUSCENES_CAMERAS]
        if unknown or not self.cameras:
            raise ValueError(f"nuScenes config '{self.name}': cameras {unknown} not in {NUSCENES_CAMERAS}")
        if self.num_points < 1 or self.num_sweeps < 0:
            raise ValueError(f"nuScenes config '{self.name}': need num_points >= 1 and num_sweeps >= 0")

    @property
    def stored_image_hw(self) -> tuple[int, int]:
        return self.image_hw or NUSCENES_IMAGE_HW

    def spec(self) -> dict:
        """``{key: (shape, dtype)}`` of a decoded record."""
        full = example_spec(len(self.cameras), self.stored_image_hw, self.grid.shape[:2], self.num_points)
        return subset_spec(full, DENSE_LABEL_KEYS)

    def stored(self) -> dict:
        """The spec as stored (``images_jpeg`` [n] of bytes instead of ``images``)."""
        return records.stored_spec(self.spec())

    def content(self) -> dict:
        return {
            "grid": dataclasses.asdict(self.grid),
            "image_hw": self.image_hw,
            "num_points": self.num_points,
            "num_sweeps": self.num_sweeps,
            "cameras": list(self.cameras),
        }

    def to_json(self) -> dict:
        return {"name": self.name, **self.content()}


def config_from_json(d: dict) -> NuScenesBuilderConfig:
    """Rebuilds a config from :meth:`NuScenesBuilderConfig.to_json`."""
    grid = BEVGrid(**{k: tuple(v) for k, v in d["grid"].items()})
    return NuScenesBuilderConfig(
        name=d["name"],
        version=VERSION,
        grid=grid,
        image_hw=d["image_hw"],
        num_points=d["num_points"],
        num_sweeps=d["num_sweeps"],
        cameras=tuple(d["cameras"]),
        description="custom nuScenes config",
    )


KEYFRAMES = NuScenesBuilderConfig(
    name="keyframes",
    version=VERSION,
    description="1600x900 images, BEVGrid(), keyframe LiDAR (35,000 points).",
)
SWEEPS10 = NuScenesBuilderConfig(
    name="sweeps10",
    version=VERSION,
    description="As keyframes, with 9 earlier LiDAR sweeps merged in (350,000 points).",
    num_sweeps=9,
    num_points=350_000,
)
PREDEFINED_CONFIGS = {c.name: c for c in (KEYFRAMES, SWEEPS10)}


def make_config(base: str = "keyframes", **overrides) -> NuScenesBuilderConfig:
    """A predefined config, or a ``custom_<hash>`` one when ``overrides`` (config attributes) change it."""
    fields = ("grid", "image_hw", "num_points", "num_sweeps", "cameras")
    return records.derive_config(PREDEFINED_CONFIGS, base, fields, "nuScenes", **overrides)


# Generation (module-level so that worker processes can run it) ---------------------------------------------


def _open_tables(dataroot: str, version: str) -> NuScenesTables:
    return NuScenesTables(dataroot, version)


def _record(cfg: NuScenesBuilderConfig, tables: NuScenesTables, item: tuple[str, int]) -> dict:
    """One stored record: ``load_sample`` with JPEG images and the split's sequence id."""
    token, sequence_id = item
    copy = cfg.image_hw is None  # keep the original JPEG bytes: no decoding, no second lossy encoding
    if copy:  # the files' bytes as they are, each checked first to decode whole (a damaged file fails, named)
        jpegs = np.empty(len(cfg.cameras), object)
        for i, channel in enumerate(cfg.cameras):
            jpegs[i], hw = camera_jpeg(tables, token, channel)
            if hw != NUSCENES_IMAGE_HW:
                path = tables.path(tables.sample_data(token, channel))
                raise ValueError(f"{path} is {hw[1]}x{hw[0]}, not 1600x900: set image_hw in the config")
    ex = load_sample(
        tables,
        token,
        cfg.grid,
        cfg.image_hw,
        cfg.num_points,
        cfg.cameras,
        cfg.num_sweeps,
        decode_images=not copy,
    )
    if not copy:
        jpegs = records.encode_jpegs(ex.pop("images"))
    ex["images_jpeg"] = jpegs
    ex["sequence_id"] = np.int32(sequence_id)
    ex["_points_cut"] = int(ex["lidar_valid"].all())
    return ex


class BevjaxNuScenes(BevjaxBuilder):
    """nuScenes keyframes in the bevjax schema (see the module docstring)."""

    name = DATASET_NAME
    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = {
        str(VERSION): "Keyframes with JPEG images, BEV labels, LiDAR (and sweeps), official splits."
    }
    BUILDER_CONFIGS = [KEYFRAMES, SWEEPS10]
    DEFAULT_CONFIG_NAME = "keyframes"
    PREDEFINED_CONFIGS = PREDEFINED_CONFIGS
    METADATA_KEY = METADATA_KEY
    TITLE = "nuScenes"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download nuScenes (https://www.nuscenes.org/download) and pass the dataroot holding v1.0-*/, samples/, "
        "sweeps/ and maps/ (and maps/expansion/ for all six map classes) as the manual dir."
    )

    @classmethod
    def config_from_json(cls, d: dict) -> NuScenesBuilderConfig:
        return config_from_json(d)

    def _split_generators(self, dl_manager) -> dict[str, Iterator]:
        root = Path(dl_manager.manual_dir)
        version = self._generation.get("version") or find_version(root)
        tables = NuScenesTables(root, version)
        scenes = {k: v for k, v in nusc_splits.split_scenes(tables).items() if k in STORED_SPLITS}
        if not scenes:
            raise ValueError(
                f"nuScenes dataroot {root}/{version}: no scene of an official split {STORED_SPLITS}"
            )
        layout, domains = {}, {}
        for split, tokens in scenes.items():
            rows, start = [], 0
            for token in tokens:
                scene = tables.get("scene", token)
                n = len(tables.scene_samples(token))
                rows.append([scene["name"], start, n])
                domains[scene["name"]] = nusc_splits.scene_domains(
                    scene, tables.get("log", scene["log_token"])
                )
                start += n
            layout[split] = rows
        self.info.metadata["scenes"] = layout
        self.info.metadata["scene_domains"] = domains
        self.info.metadata["source"] = {"dataroot": str(root), "version": version}
        self._announce(sum(n for rows in layout.values() for _, _, n in rows))
        return {split: self._generate_examples(tables, tokens) for split, tokens in scenes.items()}

    def _generate_examples(
        self, tables: NuScenesTables, scene_tokens: list[str]
    ) -> Iterator[tuple[int, dict]]:
        items = [(t, s) for s, scene in enumerate(scene_tokens) for t in tables.scene_samples(scene)]
        fn = functools.partial(_record, self.builder_config)
        opener = functools.partial(_open_tables, str(tables.dataroot), tables.version)
        return self._generate_records(fn, items, opener)


def prepare_command(data_dir: str, cfg: NuScenesBuilderConfig) -> str:
    """The shell command that prepares ``cfg`` (a Python call for custom configs)."""
    if cfg.name in PREDEFINED_CONFIGS:
        return (
            f"python -m bevjax.data.prepare nuscenes --dataroot <nuScenes dataroot> --data_dir {data_dir} "
            f"--config {cfg.name}"
        )
    return (
        "python -c \"from bevjax.data.prepare import prepare_nuscenes; prepare_nuscenes('<dataroot>', "
        f"'{data_dir}', <the NuScenesBuilderConfig named '{cfg.name}'>)\""
    )
