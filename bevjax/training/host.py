"""Host-process settings for the command-line entry points.

XLA's CPU runtime allocates each step's temporary buffers afresh (about 6.5 GB for an LSS step at the paper's
size) and glibc hands such sizes straight to ``mmap``, so every step first-touches gigabytes of 4 KiB pages:
about 1.8 million page faults and a fifth of the step time. With glibc's ``hugetlb`` tunable (glibc >= 2.35)
malloc asks for transparent huge pages (2 MiB), which cuts the faults about 100-fold; the kernel must offer
them on request (``/sys/kernel/mm/transparent_hugepage/enabled`` set to ``madvise``; with ``always`` they are
used anyway). The tunable is read when the process starts, so the entry points re-execute themselves once
with it set, and say so on stderr. ``BEVJAX_HUGE_PAGES=0`` turns this off.

The re-execution is for CPU runs started by hand. It is skipped (:func:`huge_pages_skip_reason`), without
importing JAX, when

* the run will not be on the CPU: ``JAX_PLATFORMS`` names anything but ``cpu`` (``cuda``, ``gpu``, ``tpu``,
  ``rocm``, ...), or, with ``JAX_PLATFORMS`` unset or empty, an accelerator plugin is installed
  (:data:`ACCELERATOR_PLUGINS`, ``jax_rocm*``), since JAX then prefers the accelerator
  (``JAX_PLATFORMS=cpu`` brings the huge pages back for a CPU run on such a machine);
* a launcher started the process, which may watch or signal it, or count on its environment: one of
  :data:`LAUNCHER_ENV` is set (Slurm, Open MPI, MPICH / PMIx, torchrun, TPU pods, a JAX coordinator), or
  the command line asks for ``--distributed``.
"""

from __future__ import annotations

import importlib.util
import os
import pkgutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"
THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")
# Modules whose presence makes JAX pick an accelerator when JAX_PLATFORMS is unset (plus jax_rocm*_plugin).
ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "libtpu", "libtpu_nightly")
# Environment variables set by multi-process launchers for the processes they start.
LAUNCHER_ENV = (
    "SLURM_PROCID",  # srun
    "OMPI_COMM_WORLD_RANK",  # Open MPI mpirun
    "PMI_RANK",  # MPICH, Intel MPI
    "PMIX_RANK",  # PMIx launchers
    "TORCHELASTIC_RUN_ID",  # torchrun
    "LOCAL_RANK",  # torchrun, accelerate, deepspeed
    "TPU_WORKER_ID",  # Cloud TPU pod workers
    "CLOUD_TPU_TASK_ID",
    "MEGASCALE_COORDINATOR_ADDRESS",
    "JAX_COORDINATOR_ADDRESS",  # jax.distributed from the environment
)


def installed_accelerator_plugins() -> tuple[str, ...]:
    """Names of the installed modules of :data:`ACCELERATOR_PLUGINS` and ``jax_rocm*``, found without
    importing them (``importlib.util.find_spec``, ``pkgutil.iter_modules``)."""
    found = [name for name in ACCELERATOR_PLUGINS if importlib.util.find_spec(name) is not None]
    found += [m.name for m in pkgutil.iter_modules() if m.name.startswith("jax_rocm")]
    return tuple(found)


def _distributed_flag(argv: Sequence[str]) -> bool:
    """``--distributed`` (or ``--distributed=true``) among the arguments, as absl parses it."""
    for arg in argv:
        if arg == "--":
            return False
        if arg in ("--distributed", "-distributed"):
            return True
        name, _, value = arg.partition("=")
        if name in ("--distributed", "-distributed") and value.lower() in ("true", "t", "1", "yes"):
            return True
    return False


def huge_pages_skip_reason(
    environ: Mapping[str, str], argv: Sequence[str] = (), plugins: Sequence[str] | None = None
) -> str | None:
    """Why the entry points must not re-execute themselves for huge pages, or None where they may.

    Args:
        environ: the process environment.
        argv: the command-line arguments (without the program name).
        plugins: installed accelerator plugins; None looks them up (:func:`installed_accelerator_plugins`).

    Returns:
        A short reason (off, launcher, distributed, platform, plugin), or None.
    """
    if environ.get("BEVJAX_HUGE_PAGES", "1") == "0":
        return "turned off by BEVJAX_HUGE_PAGES=0"
    launcher = [name for name in LAUNCHER_ENV if environ.get(name)]
    if launcher:
        return f"started by a launcher ({launcher[0]} is set)"
    if _distributed_flag(argv):
        return "--distributed run"
    platforms = [p.strip().lower() for p in environ.get("JAX_PLATFORMS", "").split(",") if p.strip()]
    if platforms:
        if set(platforms) != {"cpu"}:
            return f"JAX_PLATFORMS={environ['JAX_PLATFORMS']} is not the CPU"
        return None
    plugins = installed_accelerator_plugins() if plugins is None else tuple(plugins)
    if plugins:
        return f"accelerator plugin {plugins[0]} installed (JAX_PLATFORMS=cpu for a CPU run)"
    return None


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


def huge_pages_env(
    environ: Mapping[str, str],
    thp_setting: str | None = None,
    argv: Sequence[str] = (),
    plugins: Sequence[str] | None = None,
) -> dict[str, str] | None:
    """The environment to re-execute with, or None to carry on as is.

    Args:
        environ: the process environment.
        thp_setting: the content of ``/sys/kernel/mm/transparent_hugepage/enabled``; None reads it.
        argv: the command-line arguments (without the program name), for ``--distributed``.
        plugins: installed accelerator plugins; None looks them up.

    Returns:
        ``environ`` with the glibc huge-page tunable added; None where :func:`huge_pages_skip_reason` gives a
        reason, where the tunable is set already, or where it would not help (not Linux, glibc older than
        2.35, huge pages not on request).
    """
    if huge_pages_skip_reason(environ, argv, plugins) is not None or not sys.platform.startswith("linux"):
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
    :func:`huge_pages_env` says it helps, after one line on stderr; otherwise return. Call first thing in
    ``__main__``, before JAX is imported."""
    env = huge_pages_env(os.environ, argv=sys.argv[1:])
    if env is None:
        return
    print(
        f"bevjax: restarting with GLIBC_TUNABLES={env['GLIBC_TUNABLES']} (transparent huge pages for XLA's CPU "
        "buffers); BEVJAX_HUGE_PAGES=0 turns this off",
        file=sys.stderr,
    )
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, env)
