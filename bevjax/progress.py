"""Progress of long work (preparing data, offline passes) that reads well on a terminal and in a log file.

On a terminal or in a notebook :func:`progress_bar` is a tqdm bar. Where the output goes to a file or a pipe (a
cluster's log, ``nohup``, CI) a redrawn bar would leave carriage returns and escape codes, so it prints a plain
line instead, at most every ``every`` seconds and once at the end::

    bevjax_world/tiny: 120/400 records (30%) | 4.10 records/s | elapsed 00:29 | ETA 01:08

``BEVJAX_PROGRESS=bar|lines|off`` overrides the choice.
"""

from __future__ import annotations

import os
import sys
import time

PROGRESS_ENV = "BEVJAX_PROGRESS"


def format_duration(seconds: float) -> str:
    """``mm:ss`` or ``h:mm:ss``; ``--:--`` when unknown (NaN or infinite)."""
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        return "--:--"
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class LineProgress:
    """A progress report as plain lines (no ``\\r``, no escape codes), with the same ``update`` / ``reset`` /
    ``close`` methods as a tqdm bar.

    Args:
      desc: what is counted, e.g. ``bevjax_world/tiny``.
      unit: the name of one item (``record``; an ``s`` is added for counts other than 1).
      total: the number of items when known (else no percentage or ETA until :meth:`reset` gives it).
      initial: items already done (a resumed pass): said at once; they do not count towards the rate.
      every: seconds between lines.
      stream: where lines go (default ``sys.stderr``).
      clock: the time source (tests pass a fake one).
    """

    def __init__(self, desc, unit="it", total=None, initial=0, every=30.0, stream=None, clock=time.monotonic):
        self.desc, self.unit, self.total, self.n = desc, unit, total, int(initial)
        self.every, self.stream, self.clock = float(every), stream, clock
        self._n0, self._t0 = self.n, clock()
        self._last = self._t0
        self._closed = False
        if self.n:  # resumed work says where it starts
            print(f"{self.line(self._t0)} (resumed)", file=self.stream or sys.stderr, flush=True)

    def reset(self, total=None) -> None:
        """Starts counting again from 0 (towards ``total``), as ``tqdm.reset`` does."""
        self.total, self.n, self._n0 = total, 0, 0
        self._t0 = self._last = self.clock()

    def update(self, n: int = 1) -> None:
        """Counts ``n`` more items; prints a line when ``every`` seconds passed since the last one."""
        self.n += int(n)
        now = self.clock()
        if now - self._last >= self.every:
            self._last = now
            self._print(now)

    def close(self, report: bool = True) -> None:
        """Prints the final line (once; ``report=False``: ends silently, e.g. when the work failed)."""
        if not self._closed:
            self._closed = True
            if report:
                self._print(self.clock())

    def line(self, now: float | None = None) -> str:
        """The current report."""
        now = self.clock() if now is None else now
        elapsed = now - self._t0
        rate = (self.n - self._n0) / elapsed if elapsed > 0 else 0.0
        units = self.unit if self.n == 1 else self.unit + "s"
        if self.total:
            count = f"{self.n}/{self.total} {units} ({100.0 * self.n / self.total:.0f}%)"
            eta = (self.total - self.n) / rate if rate > 0 else float("nan")
            tail = f" | ETA {format_duration(eta)}"
        else:
            count, tail = f"{self.n} {units}", ""
        return f"{self.desc}: {count} | {rate:.3g} {self.unit}s/s | elapsed {format_duration(elapsed)}{tail}"

    def _print(self, now: float) -> None:
        print(self.line(now), file=self.stream or sys.stderr, flush=True)


class _NoProgress:
    def __init__(self, total=None, initial=0):
        self.total, self.n = total, initial

    def update(self, n: int = 1) -> None:
        self.n += n

    def reset(self, total=None) -> None:
        self.total, self.n = total, 0

    def close(self, report: bool = True) -> None:
        pass


def _mode() -> str:
    mode = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if mode:
        if mode not in ("bar", "lines", "off"):
            raise ValueError(f"${PROGRESS_ENV}={mode!r}: use bar, lines or off")
        return mode
    if "ipykernel" in sys.modules:
        return "bar"  # a notebook draws tqdm as a widget
    try:
        return "bar" if sys.stderr.isatty() else "lines"
    except (AttributeError, ValueError):  # a closed or replaced stderr
        return "lines"


def progress_bar(
    desc: str, unit: str = "it", total: int | None = None, initial: int = 0, every: float = 30.0
):
    """A progress report over ``total`` items: a tqdm bar on a terminal or in a notebook, otherwise a
    :class:`LineProgress` (``$BEVJAX_PROGRESS`` overrides). Both have ``update(n)``, ``reset(total)``,
    ``close()``."""
    mode = _mode()
    if mode == "off":
        return _NoProgress(total, initial)
    if mode == "lines":
        return LineProgress(desc, unit, total=total, initial=initial, every=every)
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, smoothing=0.1)


def close_progress(bar, ok: bool = True) -> None:
    """Closes a :func:`progress_bar`; after a failure (``ok=False``) a plain-lines report prints no final line,
    so that the error is what the log ends with."""
    if isinstance(bar, (LineProgress, _NoProgress)):
        bar.close(report=ok)
    else:
        bar.close()
