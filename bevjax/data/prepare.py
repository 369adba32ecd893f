"""Prepare datasets on disk: ``python -m bevjax.data.prepare world|nuscenes|av2 [--data_dir DIR] ...``.

Examples::

    python -m bevjax.data.prepare nuscenes --dataroot /data/nuscenes --workers 8
    python -m bevjax.data.prepare av2 --dataroot /data/av2/sensor --workers 8
    python -m bevjax.data.prepare world --config tiny
    python -m bevjax.data.prepare world --data_dir /data/bevjax --config default --domains boston,singapore_night
    python -m bevjax.data.prepare world --config tiny --train_sequences 4 --val_sequences 1

Overriding the domains or the sizes of a predefined config makes a custom config named ``custom_<hash>`` (see
:mod:`bevjax.data.world_builder`); the command prints its name, which the openers accept. Preparing is
idempotent: a config that is already prepared in the data dir is left as it is. Training runs prepare what they
need on first use (:func:`bevjax.data.datasets.open_splits`); this command does it ahead of time.

``--data_dir`` is where prepared data goes (default ``$BEVJAX_DATA_DIR`` or ``~/bevjax_data``,
:func:`default_data_dir`); ``--dataroot`` is the raw dataset read. ``bevjax-prepare`` is the same command. A
damaged input file ends in one ``error:`` line naming it (``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Sequence

from bevjax.cli import run_reporting_errors
from bevjax.data import world_builder as wb
from bevjax.data.av2 import builder as ab
from bevjax.data.base_builder import DATA_DIR_ENV, default_data_dir
from bevjax.data.nuscenes import builder as nb


def prepare_world(
    data_dir: str | None,
    config: str | wb.WorldBuilderConfig = "default",
    *,
    progress: bool = True,
    workers: int = 0,
) -> wb.BevjaxWorld:
    """Renders and writes a ``bevjax_world`` config (a no-op if it is already prepared).

    Args:
      data_dir: the TFDS data dir (None: :func:`default_data_dir`).
      config: a predefined config name or a :class:`~bevjax.data.world_builder.WorldBuilderConfig`.
      progress: show a tqdm bar over all samples (with ETA) besides TFDS's own bars.
      workers: processes rendering samples in parallel (0: this process).

    Returns:
      The prepared builder (``builder.data_path`` is where the files are, ``builder.info.splits`` their sizes).
    """
    data_dir = default_data_dir() if data_dir is None else str(data_dir)
    builder = wb.make_builder(data_dir, config)
    return builder.prepare(progress=progress, workers=workers)


def prepare_nuscenes(
    dataroot: str,
    data_dir: str | None = None,
    config="keyframes",
    *,
    version: str | None = None,
    workers: int = 0,
    progress: bool = True,
):
    """Writes a ``bevjax_nuscenes`` config from a dataroot (a no-op if it is already prepared).

    Args:
      dataroot: the folder holding ``v1.0-*/``, ``samples/``, ``sweeps/`` and ``maps/``.
      data_dir: the TFDS data dir (None: :func:`default_data_dir`).
      config: a predefined name (``keyframes``, ``sweeps10``) or a ``NuScenesBuilderConfig``.
      version: the table folder (default: the dataroot's only ``v1.0-*``).
      workers: processes loading keyframes in parallel (0: this process).
      progress: a tqdm bar over the records, with ETA.

    Returns:
      The prepared builder.
    """
    data_dir = data_dir or default_data_dir()
    builder = nb.BevjaxNuScenes(data_dir=data_dir, config=nb.BevjaxNuScenes.resolve_config(data_dir, config))
    return builder.prepare(dataroot, progress=progress, workers=workers, version=version)


def prepare_av2(root: str, data_dir: str | None = None, config="default", *, workers: int = 0, progress=True):
    """Writes a ``bevjax_av2`` config from an Argoverse 2 sensor root (a no-op if it is already prepared).

    Args:
      root: the folder holding ``train/`` and ``val/`` log folders.
      data_dir: the TFDS data dir (None: :func:`default_data_dir`).
      config: a predefined name (``default``) or an ``AV2BuilderConfig``.
      workers: processes loading pairs in parallel (0: this process).
      progress: a tqdm bar over the records, with ETA.

    Returns:
      The prepared builder.
    """
    data_dir = data_dir or default_data_dir()
    builder = ab.BevjaxAV2(data_dir=data_dir, config=ab.BevjaxAV2.resolve_config(data_dir, config))
    return builder.prepare(root, progress=progress, workers=workers)


def describe(builder) -> str:
    """A few lines saying where a prepared builder's files are and how big its splits are.

    Args:
      builder: a prepared builder.

    Returns:
      Text to print.
    """
    lines = [f"{builder.name}/{builder.builder_config.name} is in {builder.data_path}"]
    for name, split in sorted(builder.info.splits.items()):
        lines.append(f"  {name:28s} {split.num_examples:6d} records  {split.num_bytes / 2**20:9.2f} MiB")
    return "\n".join(lines)


def _world_main(args: argparse.Namespace) -> int:
    domains = None if args.domains is None else tuple(d for d in args.domains.split(",") if d)
    cfg = wb.make_builder_config(
        args.config,
        domains=domains,
        train_sequences=args.train_sequences,
        val_sequences=args.val_sequences,
    )
    builder = wb.BevjaxWorld(data_dir=args.data_dir, config=cfg)
    if builder.is_prepared():
        print(f"already prepared, nothing to do: {builder.data_path}")
    else:
        builder = prepare_world(args.data_dir, cfg, progress=not args.no_progress, workers=args.workers)
    print(describe(builder))
    print(
        "open it with: from bevjax.data.sources import open_world_split; "
        f"open_world_split({args.data_dir!r}, {cfg.name!r}, '<domain>_<train|val>')"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The command line entry point.

    Args:
      argv: arguments without the program name (None: ``sys.argv[1:]``).

    Returns:
      The exit status.
    """
    args = build_parser().parse_args(argv)
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)  # TFDS's notes on custom configs; our own lines say enough
    return run_reporting_errors(_prepare, args, debug=args.debug)


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser (``world``, ``nuscenes``, ``av2`` sub-commands)."""
    parser = argparse.ArgumentParser(prog="python -m bevjax.data.prepare", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="dataset", required=True)
    world = sub.add_parser("world", help="render the embedded driving world to array_record files")
    world.add_argument(
        "--data_dir", default=default_data_dir(), help=f"default: ${DATA_DIR_ENV} or ~/bevjax_data"
    )
    world.add_argument("--config", default="default", choices=sorted(wb.PREDEFINED_CONFIGS))
    world.add_argument(
        "--domains", default=None, help="comma-separated domain names, e.g. boston,singapore_night"
    )
    world.add_argument("--train_sequences", type=int, default=None, help="sequences per <domain>_train split")
    world.add_argument("--val_sequences", type=int, default=None, help="sequences per <domain>_val split")
    world.add_argument("--workers", type=int, default=0, help="processes rendering samples in parallel")
    world.add_argument("--no_progress", action="store_true", help="no tqdm bar over the samples")
    nusc = sub.add_parser("nuscenes", help="nuScenes keyframes from a dataroot to array_record files")
    nusc.add_argument("--dataroot", required=True, help="folder holding v1.0-*/, samples/, sweeps/, maps/")
    nusc.add_argument(
        "--version", default=None, help="table folder, e.g. v1.0-trainval (default: the only one)"
    )
    nusc.add_argument("--config", default="keyframes", choices=sorted(nb.PREDEFINED_CONFIGS))
    av2 = sub.add_parser(
        "av2", help="Argoverse 2 LiDAR sweep pairs from the sensor dataset to array_record files"
    )
    av2.add_argument(
        "--dataroot", "--root", dest="root", required=True, help="the sensor folder holding train/ and val/ logs"
    )
    av2.add_argument("--config", default="default", choices=sorted(ab.PREDEFINED_CONFIGS))
    av2.add_argument("--stride", type=int, default=None, help="every stride-th sweep pair (a custom config)")
    for p in (nusc, av2):
        p.add_argument(
            "--data_dir", default=default_data_dir(), help=f"default: ${DATA_DIR_ENV} or ~/bevjax_data"
        )
        p.add_argument("--workers", type=int, default=0, help="processes loading records in parallel")
        p.add_argument("--no_progress", action="store_true", help="no tqdm bar over the records")
    for p in (world, nusc, av2):
        p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    return parser


def _prepare(args: argparse.Namespace) -> int:
    args.data_dir = os.path.abspath(os.path.expanduser(args.data_dir))
    if args.dataset == "world":
        return _world_main(args)
    if args.dataset == "nuscenes":
        cfg = nb.PREDEFINED_CONFIGS[args.config]
        builder = nb.BevjaxNuScenes(data_dir=args.data_dir, config=cfg)
        opener = "from bevjax.data.nuscenes.source import open_nuscenes_split; open_nuscenes_split"
        run = functools.partial(prepare_nuscenes, args.dataroot, version=args.version)
        splits = "'<train|val|mini_train|...|night_val|...>'"
    else:
        cfg = ab.make_config(args.config, stride=args.stride)
        builder = ab.BevjaxAV2(data_dir=args.data_dir, config=cfg)
        opener = "from bevjax.data.av2.source import open_av2_split; open_av2_split"
        run = functools.partial(prepare_av2, args.root)
        splits = "'<train|val>'"
    if builder.is_prepared():
        print(f"already prepared, nothing to do: {builder.data_path}")
    else:
        builder = run(args.data_dir, cfg, workers=args.workers, progress=not args.no_progress)
    print(describe(builder))
    print(f"open it with: {opener}({args.data_dir!r}, {cfg.name!r}, {splits})")
    return 0


def run() -> None:
    """The ``bevjax-prepare`` console script (same as ``python -m bevjax.data.prepare``)."""
    sys.exit(main())


if __name__ == "__main__":
    run()
