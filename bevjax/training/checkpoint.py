"""Orbax checkpoints of the train state together with the Grain iterator state (wrapped once, here)."""

from __future__ import annotations

import os

import grain
import jax
import orbax.checkpoint as ocp


class Checkpointer:
    """Periodic and final saves of ``state`` (+ data iterator), keep-N, resume from the latest step.

    Args:
      directory: where the step folders go (created).
      max_to_keep: how many recent checkpoints stay on disk.
    """

    def __init__(self, directory: str, max_to_keep: int = 3):
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, data_iterator=None, force: bool = False) -> bool:
        """Saves (asynchronously) ``state`` and the iterator position at ``step``."""
        args = {"state": ocp.args.StandardSave(state)}
        if data_iterator is not None:
            args["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        return self.manager.save(step, args=ocp.args.Composite(**args), force=force)

    def restore(self, state_template, data_iterator=None, step: int | None = None):
        """The saved state (with the template's shardings) at ``step`` (default latest), restoring the iterator
        in place; None when there is no checkpoint."""
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_template)
        args = {"state": ocp.args.StandardRestore(abstract)}
        if data_iterator is not None:
            args["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
        return self.manager.restore(step, args=ocp.args.Composite(**args))["state"]

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
