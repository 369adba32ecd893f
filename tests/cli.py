"""Helpers of the end-to-end tests: the command-line programs in a subprocess, and a run's saved state."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import orbax.checkpoint as ocp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(module, config, workdir, data_dir, *args, wait=True, check=True, devices=1):
    """Runs ``python -m bevjax.<module> --config <config> --workdir <workdir> <args>`` from the repository root
    (CPU, ``devices`` forced host devices, the data dir ``data_dir``); or starts it (``wait=False``: a Popen
    with stdout and stderr merged). With ``check`` a non-zero exit fails, showing the output's end."""
    cmd = [sys.executable, "-m", f"bevjax.{module}", "--config", config, "--workdir", str(workdir)]
    env = dict(os.environ, BEVJAX_DATA_DIR=str(data_dir), JAX_PLATFORMS="cpu", BEVJAX_HUGE_PAGES="0")
    if devices > 1:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
        # XLA:CPU runs all forced devices on one thread pool of max(cores, devices) threads; a device blocked in
        # two collectives at once can leave another without a thread (an all-reduce deadlock on 2 cores).
        env["NPROC"] = str(2 * devices)
    if not wait:
        return subprocess.Popen(
            cmd + list(args), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    result = subprocess.run(cmd + list(args), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def saved_state(workdir, step) -> dict:
    """The train state saved at ``step`` in ``workdir`` as nested dicts of arrays, restored onto this process's
    first device (whatever devices saved it)."""
    path = os.path.join(workdir, "checkpoints", str(step), "state")
    checkpointer = ocp.StandardCheckpointer()
    one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=one),
        checkpointer.metadata(path).item_metadata.tree,
    )
    return checkpointer.restore(path, target)
