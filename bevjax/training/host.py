"""Host-process settings for the command-line entry points.

XLA's CPU runtime allocates each step's temporary buffers afresh (about 6.5 GB for an LSS step at the paper's
size) and glibc hands such sizes straight to ``mmap``, so every step first-touches gigabytes of 4 KiB pages:
about 1.8 million page faults and a fifth of the step time. With glibc's ``hugetlb`` tunable (glibc >= 2.35)
malloc asks for transparent huge pages (2 MiB), which cuts the faults about 100-fold; the kernel must offer
them on request (``/sys/kernel/mm/transparent_hugepage/enabled`` set to ``madvise``; with ``always`` they are
used anyway). The tunable is read when the process starts, so the entry points re-execute themselves once
with it set. ``BEVJAX_HUGE_PAGES=0`` turns this off.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"
THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def glibc_version() -> tuple[int, int] | None:
    """(major, minor) of the C library when it is glibc, else None."""
    try:
        name = os.confstr("CS_GNU_LIBC_VERSION")  # e.g. 'glibc 2.36'
    except (AttributeError, ValueError, OSError):
        return None
    if not name or not name.startswith("glibc "):
        return None
    try:
        major, minor = name.split()[1].split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return None


def huge_pages_env(environ: Mapping[str, str], thp_setting: str | None = None) -> dict[str, str] | None:
    """``environ`` with the glibc huge-page tunable added, or None where it is set already, turned off by
    ``BEVJAX_HUGE_PAGES=0``, or would not help (not Linux, glibc older than 2.35, huge pages not on request)."""
    if environ.get("BEVJAX_HUGE_PAGES", "1") == "0" or not sys.platform.startswith("linux"):
        return None
    version = glibc_version()
    if version is None or version < (2, 35):
        return None
    if thp_setting is None:
        try:
            thp_setting = THP_SETTING.read_text()
        except OSError:
            return None
    if "[madvise]" not in thp_setting:
        return None
    tunables = environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" in tunables:
        return None
    env = dict(environ)
    env["GLIBC_TUNABLES"] = f"{tunables}:{HUGE_PAGES_TUNABLE}" if tunables else HUGE_PAGES_TUNABLE
    return env


def reexec_with_huge_pages() -> None:
    """Re-execute this process (same interpreter, flags and arguments) with the huge-page tunable, where
    :func:`huge_pages_env` says it helps; otherwise return. Call first thing in ``__main__``."""
    env = huge_pages_env(os.environ)
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, env)
