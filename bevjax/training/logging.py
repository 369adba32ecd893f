"""Metrics to stdout (with steps/s and ETA), to ``metrics.jsonl`` and to TensorBoard event files."""

from __future__ import annotations

import json
import os
import time

import jax
import numpy as np

from bevjax.progress import format_duration


class MetricLogger:
    """Writes scalar metrics of a run to ``workdir`` and prints progress lines on process 0.

    Args:
      workdir: run directory (``metrics.jsonl`` and ``tensorboard/`` go there).
      total_steps: for the ETA.
      tensorboard: also write TensorBoard events (tensorboardX).
    """

    def __init__(self, workdir: str, total_steps: int, tensorboard: bool = True):
        self.is_main = jax.process_index() == 0
        self.total_steps = total_steps
        self._t0, self._s0 = None, None
        self._jsonl = None
        self._tb = None
        if self.is_main:
            os.makedirs(workdir, exist_ok=True)
            self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
            if tensorboard:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

    def write(self, step: int, metrics: dict, prefix: str = "train") -> dict:
        """Logs scalars at ``step``; returns them as floats."""
        values = {f"{prefix}/{k}": float(np.asarray(v)) for k, v in metrics.items() if np.ndim(v) == 0}
        if not self.is_main:
            return values
        now = time.time()
        if prefix == "train":
            if self._t0 is None:
                self._t0, self._s0 = now, step
            rate = (step - self._s0) / max(now - self._t0, 1e-9) if step > self._s0 else 0.0
            values[f"{prefix}/steps_per_s"] = rate
            eta = (self.total_steps - step) / rate if rate > 0 else float("nan")
            shown = " ".join(
                f"{k.split('/')[-1]}={v:.4g}" for k, v in values.items() if "steps_per_s" not in k
            )
            eta_text = format_duration(eta)
            print(f"step {step}/{self.total_steps} {shown} | {rate:.2f} steps/s | ETA {eta_text}", flush=True)
        else:
            print(
                f"[{prefix} @ step {step}] "
                + " ".join(f"{k.split('/', 1)[-1]}={v:.4f}" for k, v in values.items()),
                flush=True,
            )
        self._jsonl.write(json.dumps({"step": int(step), "time": now, **values}) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(k, v, step)
        return values

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()
