"""Evaluate the latest checkpoint of a run: ``python -m bevjax.evaluate --config configs/lss.py --workdir runs/lss``.

Prints the per-class IoU table and writes ``eval.json`` and ``prediction.png`` into the workdir. On real data:
``--dataset nuscenes --data_dir ../shared/data/nuscenes`` evaluates on the keyframes of a nuScenes dataroot
(``eval_nuscenes.json``, ``prediction_nuscenes.png``; of the map classes only drivable area is labelled there
without ``maps/expansion/``). A run trained with ``--config.data.dataset=nuscenes`` evaluates on its config's
prepared split (e.g. ``--config.data.eval_split=night_val``) without ``--dataset``.
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from bevjax.training.host import reexec_with_huge_pages
from bevjax.training.logging import check_command_line, run_reporting_errors

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (path.py[:variant]).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory holding checkpoints/.")
_DATASET = flags.DEFINE_enum("dataset", "world", ["world", "nuscenes"], "Evaluation data.")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "With --dataset nuscenes: the dataroot.")
_DEBUG = flags.DEFINE_bool("debug", False, "Show the full traceback of an error instead of one line.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    check_command_line(argv)
    from bevjax.training.trainer import evaluate

    if _DATASET.value != "world" and not _DATA_DIR.value:
        raise app.UsageError(f"--dataset {_DATASET.value} needs --data_dir")
    run_reporting_errors(evaluate, _CONFIG.value, _WORKDIR.value, _DATASET.value, _DATA_DIR.value, debug=_DEBUG.value)


if __name__ == "__main__":
    reexec_with_huge_pages()
    app.run(main)
