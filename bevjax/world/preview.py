"""Writes a PNG of one world sample: cameras with their labels, BEV labels and the LiDAR seen from above.

python -m bevjax.world.preview --domain boston --index 0 --out preview.png [--config tiny]
"""

from __future__ import annotations

import argparse
import time

from bevjax.cli import run_reporting_errors
from bevjax.viz import preview_image, save_png
from bevjax.world.config import DEFAULT_DOMAINS, WorldConfig, parse_domain, tiny_config


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--domain", default="boston", help=f"e.g. {', '.join(DEFAULT_DOMAINS)}")
    parser.add_argument("--split", default="train")
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--config", choices=("default", "tiny"), default="default")
    parser.add_argument("--seed", type=int, default=0, help="world seed")
    parser.add_argument("--out", default="preview.png")
    parser.add_argument("--data_dir", default=None, help="read the sample from this prepared dataset")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    args = parser.parse_args(argv)
    return run_reporting_errors(_draw, args, debug=args.debug)


def _draw(args: argparse.Namespace) -> str:
    parse_domain(args.domain)  # fails early with the valid choices
    config = (WorldConfig() if args.config == "default" else tiny_config()).replace(seed=args.seed)

    start = time.time()
    if args.data_dir:
        from bevjax.data.sources import open_world_split

        source = open_world_split(args.data_dir, args.config, f"{args.domain}_{args.split}")
        config = source.config.world
        example = source[args.index]
    else:
        from bevjax.world.sample import render_sample

        example = render_sample(config, args.domain, args.split, args.index)
    how = "read" if args.data_dir else "rendered"
    what = (
        f"{args.domain}/{args.split}[{args.index}] (sequence {int(example['sequence_id'])}, frame "
        f"{int(example['frame_index'])}, noise {float(example['noise_level']):.2f})"
    )
    picture = preview_image(example, config.grid, config.cameras, title=f"bevjax world: {what}")
    path = save_png(picture, args.out)
    print(f"{what} {how} in {time.time() - start:.1f}s -> {path} ({picture.shape[1]}x{picture.shape[0]})")
    return path


if __name__ == "__main__":
    main()
