"""Evaluate the latest checkpoint of a run: ``python -m bevjax.evaluate --config configs/lss.py --workdir runs/lss``
(or ``bevjax-evaluate``).

``--data_dir`` is the prepared-data folder, as for ``python -m bevjax.data.prepare`` (default: the config's
``data.data_dir``); ``--dataroot`` is a raw dataset folder.

Prints the per-class IoU table and writes ``eval.json`` and ``prediction.png`` into the workdir. On real data:
``--dataset nuscenes --dataroot ../shared/data/nuscenes`` evaluates on the keyframes of a nuScenes dataroot
(``eval_nuscenes.json``, ``prediction_nuscenes.png``; of the map classes only drivable area is labelled there
without ``maps/expansion/``). A run trained with ``--config.data.dataset=nuscenes`` evaluates on its config's
prepared split (e.g. ``--config.data.eval_split=night_val``) without ``--dataset``. SemanticFlow evaluates on
Argoverse 2 sweep pairs with ``--dataset av2 --dataroot ../shared/data/av2/sensor`` (a raw sensor root, prepared
into the data dir on first use) or ``--dataset av2 --data_dir <prepared folder>`` (``eval_av2.json``,
``prediction_av2.png``).
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from bevjax.cli import check_command_line, parse_flags, run_reporting_errors
from bevjax.training.host import reexec_with_huge_pages

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (path.py[:variant]).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory holding checkpoints/.")
_DATASET = flags.DEFINE_enum("dataset", "world", ["world", "nuscenes", "av2"], "Evaluation data.")
_DATAROOT = flags.DEFINE_string(
    "dataroot", "", "With --dataset nuscenes / av2: the raw dataset (nuScenes dataroot, Argoverse 2 sensor root)."
)
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "The prepared-data folder (as in bevjax.data.prepare); default: the config's data.data_dir."
)
_DEBUG = flags.DEFINE_bool("debug", False, "Show the full traceback of an error instead of one line.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    check_command_line(argv)
    from bevjax.training.trainer import evaluate

    dataroot = _DATAROOT.value
    if _DATASET.value == "av2" and not dataroot:
        if not _DATA_DIR.value:
            raise app.UsageError(
                "--dataset av2 needs --dataroot or --data_dir: an Argoverse 2 sensor root (<it>/val/<log>/) or a "
                "prepared data dir"
            )
        dataroot = _DATA_DIR.value  # a raw root or a prepared data dir: the task tells them apart
    elif _DATASET.value != "world" and not dataroot:
        raise app.UsageError(f"--dataset {_DATASET.value} needs --dataroot (the folder holding v1.0-*/, samples/)")
    config = _CONFIG.value
    if _DATA_DIR.value is not None and dataroot != _DATA_DIR.value:
        with config.unlocked():
            config.data.data_dir = _DATA_DIR.value
    args = (config, _WORKDIR.value, _DATASET.value, dataroot)
    run_reporting_errors(evaluate, *args, debug=_DEBUG.value)


def run() -> None:
    """The ``bevjax-evaluate`` console script (same as ``python -m bevjax.evaluate``)."""
    reexec_with_huge_pages()
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
