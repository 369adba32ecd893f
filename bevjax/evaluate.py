"""Evaluate the latest checkpoint of a run: ``python -m bevjax.evaluate --config configs/lss.py --workdir runs/lss``.

Prints the per-class IoU table and writes ``eval.json`` and ``prediction.png`` into the workdir.
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from bevjax.training.host import reexec_with_huge_pages
from bevjax.training.logging import check_command_line

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (path.py[:variant]).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory holding checkpoints/.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    check_command_line(argv)
    from bevjax.training.trainer import evaluate

    evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    reexec_with_huge_pages()
    app.run(main)
