"""Prepare datasets on disk: ``python -m bevjax.data.prepare world [--data_dir DIR] [--config tiny] ...``.

Examples::

    python -m bevjax.data.prepare world --config tiny
    python -m bevjax.data.prepare world --data_dir /data/bevjax --config default --domains boston,singapore_night
    python -m bevjax.data.prepare world --config tiny --train_sequences 4 --val_sequences 1

Overriding the domains or the sizes of a predefined config makes a custom config named ``custom_<hash>`` (see
:mod:`bevjax.data.world_builder`); the command prints its name, which ``open_world_split`` accepts. Preparing is
idempotent: a config that is already prepared in the data dir is left as it is.

The data dir defaults to ``$BEVJAX_DATA_DIR`` or ``~/bevjax_data``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from bevjax.data import world_builder as wb

DATA_DIR_ENV = "BEVJAX_DATA_DIR"


def default_data_dir() -> str:
    """The data dir used when none is given: ``$BEVJAX_DATA_DIR`` or ``~/bevjax_data``.

    Returns:
      An absolute path (not created).
    """
    return os.path.abspath(os.path.expanduser(os.environ.get(DATA_DIR_ENV) or "~/bevjax_data"))


def prepare_command(data_dir: str, config: wb.WorldBuilderConfig) -> str:
    """The shell command that prepares ``config`` in ``data_dir`` (a Python call when the CLI cannot express it).

    Args:
      data_dir: the data dir.
      config: the builder config.

    Returns:
      A one-line command.
    """
    base = next((c for c in wb.PREDEFINED_CONFIGS.values() if c.world == config.world), None)
    if base is None:
        return (
            f"python -c \"from bevjax.data.prepare import prepare_world; prepare_world('{data_dir}', <the "
            f"WorldBuilderConfig named '{config.name}'>)\""
        )
    cmd = f"python -m bevjax.data.prepare world --data_dir {data_dir} --config {base.name}"
    if config.domains != base.domains:
        cmd += f" --domains {','.join(config.domains)}"
    for kind in wb.SPLIT_KINDS:
        n = config.num_sequences.get(kind, 0)
        if n != base.num_sequences.get(kind, 0):
            cmd += f" --{kind}_sequences {n}"
    return cmd


def prepare_world(
    data_dir: str | None,
    config: str | wb.WorldBuilderConfig = "default",
    *,
    progress: bool = True,
) -> wb.BevjaxWorld:
    """Renders and writes a ``bevjax_world`` config (a no-op if it is already prepared).

    Args:
      data_dir: the TFDS data dir (None: :func:`default_data_dir`).
      config: a predefined config name or a :class:`~bevjax.data.world_builder.WorldBuilderConfig`.
      progress: show a tqdm bar over all samples (with ETA) besides TFDS's own bars.

    Returns:
      The prepared builder (``builder.data_path`` is where the files are, ``builder.info.splits`` their sizes).
    """
    data_dir = default_data_dir() if data_dir is None else str(data_dir)
    cfg = wb.resolve_config(data_dir, config)
    builder = wb.BevjaxWorld(data_dir=data_dir, config=cfg)
    if builder.is_prepared():
        return builder
    total = sum(cfg.num_samples(kind) for kind in wb.SPLIT_KINDS) * len(cfg.domains)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=f"Rendering bevjax_world/{cfg.name}", unit="sample", smoothing=0.1)
    builder.set_progress(None if bar is None else bar.update)
    try:
        builder.download_and_prepare()
    finally:
        if bar is not None:
            bar.close()
    return wb.BevjaxWorld(data_dir=data_dir, config=cfg)  # reads the info written to disk


def describe(builder: wb.BevjaxWorld) -> str:
    """A few lines saying where a prepared builder's files are and how big its splits are.

    Args:
      builder: a prepared builder.

    Returns:
      Text to print.
    """
    lines = [f"bevjax_world/{builder.builder_config.name} is in {builder.data_path}"]
    for name, split in sorted(builder.info.splits.items()):
        lines.append(f"  {name:28s} {split.num_examples:6d} samples  {split.num_bytes / 2**20:9.2f} MiB")
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
        builder = prepare_world(args.data_dir, cfg, progress=not args.no_progress)
    print(describe(builder))
    print(f"open it with: open_world_split({args.data_dir!r}, {cfg.name!r}, '<domain>_<train|val>')")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The command line entry point.

    Args:
      argv: arguments without the program name (None: ``sys.argv[1:]``).

    Returns:
      The exit status.
    """
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
    world.add_argument("--no_progress", action="store_true", help="no tqdm bar over the samples")
    args = parser.parse_args(argv)
    args.data_dir = os.path.abspath(os.path.expanduser(args.data_dir))
    return _world_main(args)


if __name__ == "__main__":
    sys.exit(main())
