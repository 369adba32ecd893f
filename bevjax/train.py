"""Train a bevjax model: ``python -m bevjax.train --config configs/lss.py --workdir runs/lss`` (or ``bevjax-train``).

Flags: ``--config`` (an ml_collections config file, ``path.py[:variant]``, with ``--config.a.b=value``
overrides), ``--workdir`` (checkpoints, metrics, pictures; a rerun resumes from the newest readable checkpoint,
or from ``--restore_step``), ``--distributed`` (call
``jax.distributed.initialize()`` first, for multi-process runs on pods and clusters; where the cluster is not
detected automatically (TPU, Slurm, Open MPI are), also ``--coordinator_address=host:port --num_processes=N
--process_id=i``). On CPU, processes exchange gradients through gloo.
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from bevjax.cli import check_command_line, parse_flags, run_reporting_errors
from bevjax.training.host import reexec_with_huge_pages

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (path.py[:variant]).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (checkpoints, metrics, pictures).")
_RESTORE_STEP = flags.DEFINE_integer(
    "restore_step", None, "Resume from this checkpoint step of the workdir instead of the newest readable one."
)
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() first.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "With --distributed: host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "With --distributed: number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "With --distributed: this process's index.")
_DEBUG = flags.DEFINE_bool("debug", False, "Show the full traceback of an error instead of one line.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    check_command_line(argv)
    import jax

    if _DISTRIBUTED.value:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU devices across processes
        jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    elif any(f.present for f in (_COORDINATOR, _NUM_PROCESSES, _PROCESS_ID)):
        raise app.UsageError("--coordinator_address, --num_processes and --process_id need --distributed")
    from bevjax.training.trainer import train_and_evaluate

    config, workdir, step = _CONFIG.value, _WORKDIR.value, _RESTORE_STEP.value
    run_reporting_errors(train_and_evaluate, config, workdir, restore_step=step, debug=_DEBUG.value)


def run() -> None:
    """The ``bevjax-train`` console script (same as ``python -m bevjax.train``)."""
    reexec_with_huge_pages()
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
