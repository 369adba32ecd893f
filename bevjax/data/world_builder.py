"""TFDS builder ``bevjax_world``: the embedded driving world written to ArrayRecord files.

The builder renders every sample with :func:`bevjax.world.sample.render_sample` and stores it in the batch schema
(:mod:`bevjax.schema`) in ``array_record`` files, which Grain reads by random access. It needs no TensorFlow.

Layout on disk::

    <data_dir>/bevjax_world/<config name>/<version>/
        bevjax_world-boston_train.array_record-00000-of-00001
        ...
        dataset_info.json  features.json  metadata.json

Configs (:class:`WorldBuilderConfig`) carry a :class:`~bevjax.world.config.WorldConfig`, the domain names and the
number of sequences per split kind:

=========  ==========================  ===========================================  =====  ===
name       world                       domains                                      train  val
=========  ==========================  ===========================================  =====  ===
default    ``WorldConfig()``           ``DEFAULT_DOMAINS``                            8     2
tiny       ``tiny_config()``           ``('boston', 'singapore')``                    2     1
custom_*   anything                    anything                                     any    any
=========  ==========================  ===========================================  =====  ===

Custom configs come from :func:`custom_config` (or :func:`make_builder_config`); their name is
``custom_<hash>`` where the hash covers the world config, the domains and the sizes, so that different contents
never share a directory. A custom config is written to ``metadata.json`` and can be reopened from its name alone
(:func:`config_from_prepared`).

Splits are named ``<domain>_<kind>`` with kind ``train`` or ``val`` (``boston_train``,
``singapore_night_val``). A split holds ``num_sequences[kind] * world.frames_per_sequence`` samples; record ``i``
(shuffling is disabled, keys are the integer render indices) equals ``render_sample(world, domain, kind, i)``:
sequence ``i // frames_per_sequence``, frame ``i % frames_per_sequence``.

Features: one ``tfds.features.Tensor`` per schema key with the spec's shape and dtype
(:func:`bevjax.data.records.tensor_feature`); arrays are stored zlib-compressed raw bytes, scalars as plain
``Tensor(shape=())`` except float64 ones, which are stored as raw bytes (TFDS writes unencoded floats as float32
and would round them).

:class:`BevjaxWorld` is a :class:`~bevjax.data.base_builder.BevjaxBuilder` like the nuScenes and Argoverse 2
builders. Prepare with ``python -m bevjax.data.prepare world --config tiny`` (see :mod:`bevjax.data.prepare`);
open a split with :func:`bevjax.data.sources.open_world_split`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import tensorflow_datasets as tfds

from bevjax.data import records
from bevjax.data.base_builder import BevjaxBuilder
from bevjax.geometry.grid import BEVGrid
from bevjax.world import sample as world_sample
from bevjax.world.config import DEFAULT_DOMAINS, WorldConfig, parse_domain, tiny_config

DATASET_NAME = "bevjax_world"
SPLIT_KINDS = ("train", "val")
VERSION = "1.0.0"
METADATA_KEY = "world_builder_config"  # in metadata.json: the full config (custom ones are reopened from it)


@dataclasses.dataclass(eq=False, kw_only=True)
class WorldBuilderConfig(tfds.core.BuilderConfig):
    """A ``bevjax_world`` config: world parameters, domains and sequences per split kind.

    Attributes:
      world: the world configuration every sample is rendered with.
      domains: domain names (see :func:`bevjax.world.config.parse_domain`); each gives one split per kind.
      num_sequences: sequences per split kind, ``{'train': N, 'val': M}``.
    """

    world: WorldConfig = dataclasses.field(default_factory=WorldConfig)
    domains: tuple[str, ...] = DEFAULT_DOMAINS
    num_sequences: Mapping[str, int] = dataclasses.field(default_factory=lambda: {"train": 8, "val": 2})

    def __post_init__(self):
        self.domains = tuple(self.domains)
        for d in self.domains:
            parse_domain(d)  # raises a clear ValueError for unknown names
        if len(set(self.domains)) != len(self.domains) or not self.domains:
            raise ValueError(f"world builder config '{self.name}': domains must be unique and non-empty")
        self.num_sequences = {k: int(v) for k, v in dict(self.num_sequences).items()}
        if set(self.num_sequences) - set(SPLIT_KINDS) or any(v < 0 for v in self.num_sequences.values()):
            raise ValueError(
                f"world builder config '{self.name}': num_sequences must map a subset of {SPLIT_KINDS} to "
                f"counts >= 0, got {self.num_sequences}"
            )

    @property
    def frames_per_sequence(self) -> int:
        return self.world.frames_per_sequence

    def split_names(self) -> list[str]:
        """All split names ``<domain>_<kind>`` of kinds with at least one sequence."""
        return [f"{d}_{k}" for d in self.domains for k in SPLIT_KINDS if self.num_sequences.get(k, 0) > 0]

    def spec(self) -> dict:
        """``{key: (shape, dtype)}`` of a record (stored as it is: ``stored()`` is the same)."""
        return world_sample.example_spec_for(self.world)

    def stored(self) -> dict:
        return self.spec()

    def num_samples(self, kind: str) -> int:
        """Samples in one split of kind ``kind`` ('train' or 'val')."""
        return self.num_sequences.get(kind, 0) * self.world.frames_per_sequence

    def content_hash(self) -> str:
        """A short hash of everything that fixes the content (world repr, domains, sizes)."""
        key = repr((self.world, tuple(self.domains), sorted(self.num_sequences.items())))
        return hashlib.sha1(key.encode()).hexdigest()[:10]

    def to_json(self) -> dict:
        """A JSON-able description from which :func:`config_from_json` rebuilds this config."""
        return {
            "name": self.name,
            "world": dataclasses.asdict(self.world),
            "domains": list(self.domains),
            "num_sequences": dict(self.num_sequences),
        }


def split_name(domain: str, kind: str) -> str:
    """The split name of ``domain`` and kind ``'train'`` / ``'val'``, e.g. ``boston_train``."""
    return f"{domain}_{kind}"


def parse_split(name: str) -> tuple[str, str]:
    """``'singapore_night_val'`` -> ``('singapore_night', 'val')``."""
    domain, _, kind = name.rpartition("_")
    if kind not in SPLIT_KINDS or not domain:
        raise ValueError(f"'{name}' is not a world split name '<domain>_<train|val>'")
    return domain, kind


def _world_from_json(d: Mapping[str, Any]) -> WorldConfig:
    kwargs = {}
    for f in dataclasses.fields(WorldConfig):
        if f.name not in d:
            continue
        v = d[f.name]
        if f.name == "grid":
            v = BEVGrid(**{k: tuple(b) for k, b in v.items()})
        elif isinstance(v, list):
            v = tuple(v)
        kwargs[f.name] = v
    return WorldConfig(**kwargs)


def config_from_json(d: Mapping[str, Any]) -> WorldBuilderConfig:
    """Rebuilds a :class:`WorldBuilderConfig` from :meth:`WorldBuilderConfig.to_json`.

    Args:
      d: the dict written by ``to_json`` (also stored under ``world_builder_config`` in ``metadata.json``).

    Returns:
      The config, with the same name.
    """
    return WorldBuilderConfig(
        name=d["name"],
        version=VERSION,
        world=_world_from_json(d["world"]),
        domains=tuple(d["domains"]),
        num_sequences=dict(d["num_sequences"]),
        description="custom world config",
    )


DEFAULT_CONFIG = WorldBuilderConfig(
    name="default",
    version=VERSION,
    description="WorldConfig() over DEFAULT_DOMAINS, 8 train / 2 val sequences per domain.",
    world=WorldConfig(),
    domains=DEFAULT_DOMAINS,
    num_sequences={"train": 8, "val": 2},
)
TINY_CONFIG = WorldBuilderConfig(
    name="tiny",
    version=VERSION,
    description="tiny_config() over boston and singapore, 2 train / 1 val sequences: for tests and smoke runs.",
    world=tiny_config(),
    domains=("boston", "singapore"),
    num_sequences={"train": 2, "val": 1},
)
PREDEFINED_CONFIGS = {c.name: c for c in (DEFAULT_CONFIG, TINY_CONFIG)}


def custom_config(
    world: WorldConfig,
    domains: Sequence[str] = DEFAULT_DOMAINS,
    train_sequences: int = 8,
    val_sequences: int = 2,
    prefix: str = "custom",
) -> WorldBuilderConfig:
    """A config for any content, named ``<prefix>_<hash of the content>``.

    Args:
      world: world parameters.
      domains: domain names.
      train_sequences: sequences in each ``<domain>_train`` split.
      val_sequences: sequences in each ``<domain>_val`` split (0 for no val splits).
      prefix: name prefix (lowercase letters, digits and underscores).

    Returns:
      A :class:`WorldBuilderConfig` whose name is unique for its content.
    """
    cfg = WorldBuilderConfig(
        name=prefix,
        version=VERSION,
        description="custom world config",
        world=world,
        domains=tuple(domains),
        num_sequences={"train": train_sequences, "val": val_sequences},
    )
    cfg.name = f"{prefix}_{cfg.content_hash()}"
    return cfg


def make_builder_config(
    base: str | WorldBuilderConfig = "default",
    *,
    world: WorldConfig | None = None,
    domains: Sequence[str] | None = None,
    train_sequences: int | None = None,
    val_sequences: int | None = None,
) -> WorldBuilderConfig:
    """A predefined config with optional overrides; a custom (hash-named) one when an override changes it.

    Args:
      base: a predefined config name ('default', 'tiny') or a config.
      world, domains, train_sequences, val_sequences: overrides (None keeps the base's value).

    Returns:
      ``base`` itself when nothing changes, else :func:`custom_config` of the merged content.
    """
    if isinstance(base, str):
        if base not in PREDEFINED_CONFIGS:
            raise ValueError(f"unknown world config '{base}'; predefined: {sorted(PREDEFINED_CONFIGS)}")
        base = PREDEFINED_CONFIGS[base]
    new_world = base.world if world is None else world
    new_domains = base.domains if domains is None else tuple(domains)
    ntrain = base.num_sequences.get("train", 0) if train_sequences is None else train_sequences
    nval = base.num_sequences.get("val", 0) if val_sequences is None else val_sequences
    if (new_world, new_domains, ntrain, nval) == (
        base.world,
        base.domains,
        base.num_sequences.get("train", 0),
        base.num_sequences.get("val", 0),
    ):
        return base
    return custom_config(new_world, new_domains, ntrain, nval)


def prepare_command(data_dir: str, config: WorldBuilderConfig) -> str:
    """The shell command that prepares ``config`` in ``data_dir`` (a Python call when the CLI cannot express it).

    Args:
      data_dir: the data dir.
      config: the builder config.

    Returns:
      A one-line command.
    """
    base = next((c for c in PREDEFINED_CONFIGS.values() if c.world == config.world), None)
    if base is None:
        return (
            f"python -c \"from bevjax.data.prepare import prepare_world; prepare_world('{data_dir}', <the "
            f"WorldBuilderConfig named '{config.name}'>)\""
        )
    cmd = f"python -m bevjax.data.prepare world --data_dir {data_dir} --config {base.name}"
    if config.domains != base.domains:
        cmd += f" --domains {','.join(config.domains)}"
    for kind in SPLIT_KINDS:
        n = config.num_sequences.get(kind, 0)
        if n != base.num_sequences.get(kind, 0):
            cmd += f" --{kind}_sequences {n}"
    return cmd


def _render(world: WorldConfig, domain: str, kind: str, state: None, index: int) -> dict:
    # ``render_sample`` is looked up at call time so that tests (and later renderers) can patch it.
    return world_sample.render_sample(world, domain, kind, index)


class BevjaxWorld(BevjaxBuilder):
    """The ``bevjax_world`` dataset: rendered world samples in the batch schema, one split per domain and kind."""

    name = DATASET_NAME
    VERSION = tfds.core.Version(VERSION)
    RELEASE_NOTES = {str(VERSION): "Initial release: the bevjax batch schema, zlib-encoded arrays."}
    BUILDER_CONFIGS = [DEFAULT_CONFIG, TINY_CONFIG]
    DEFAULT_CONFIG_NAME = "default"
    PREDEFINED_CONFIGS = PREDEFINED_CONFIGS
    METADATA_KEY = METADATA_KEY
    TITLE = "world"

    @classmethod
    def config_from_json(cls, d: Mapping[str, Any]) -> WorldBuilderConfig:
        return config_from_json(d)

    @property
    def world_config(self) -> WorldBuilderConfig:
        return self.builder_config

    def _split_generators(self, dl_manager) -> dict[str, Iterator]:
        cfg: WorldBuilderConfig = self.builder_config
        kinds = [k for k in SPLIT_KINDS if cfg.num_sequences.get(k, 0) > 0]
        self._announce(sum(cfg.num_samples(k) for k in kinds) * len(cfg.domains))
        return {split_name(d, k): self._generate_examples(d, k) for d in cfg.domains for k in kinds}

    def _generate_examples(self, domain: str, kind: str) -> Iterator[tuple[int, dict]]:
        cfg: WorldBuilderConfig = self.builder_config
        # Key i is render index i: records come in order, from this process or from worker processes.
        fn = functools.partial(_render, cfg.world, domain, kind)
        return self._generate_records(fn, list(range(cfg.num_samples(kind))))


def features_for(world: WorldConfig) -> tfds.features.FeaturesDict:
    """The ``FeaturesDict`` of the samples ``world`` renders (one Tensor per key of ``example_spec_for``)."""
    return records.stored_features(world_sample.example_spec_for(world))


def config_from_prepared(data_dir: str, name: str) -> WorldBuilderConfig | None:
    """The config stored in ``metadata.json`` of a prepared ``bevjax_world/<name>``, or None if absent."""
    return BevjaxWorld.config_from_prepared(data_dir, name)


def resolve_config(data_dir: str | None, config: str | WorldBuilderConfig) -> WorldBuilderConfig:
    """A config from a config or a name (predefined, or a prepared custom one in ``data_dir``).

    Raises:
      ValueError: ``unknown world config '<name>'`` with the predefined names and where it was looked for.
    """
    return BevjaxWorld.resolve_config(data_dir, config)


def make_builder(data_dir: str, config: str | WorldBuilderConfig, **kwargs) -> BevjaxWorld:
    """A ``bevjax_world`` builder for ``config`` (a name or a config) in ``data_dir`` (array_record files).

    Args:
      data_dir: the TFDS data dir.
      config: a predefined name, a prepared custom name, or a :class:`WorldBuilderConfig`.
      **kwargs: further ``BevjaxWorld`` arguments.

    Returns:
      The builder (not necessarily prepared).
    """
    return BevjaxWorld(data_dir=str(data_dir), config=resolve_config(data_dir, config), **kwargs)
