"""The entry points' host settings: when the glibc huge-page tunable is added, and the re-execution."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from bevjax.training import host

MADVISE = "always [madvise] never\n"


@pytest.fixture
def glibc_236(monkeypatch):
    monkeypatch.setattr(host, "glibc_version", lambda: (2, 36))
    monkeypatch.setattr(host.sys, "platform", "linux")


def test_tunable_added_to_existing_ones(glibc_236):
    env = host.huge_pages_env(
        {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1", "X": "1"}, MADVISE, plugins=()
    )
    assert env == {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1:glibc.malloc.hugetlb=1", "X": "1"}
    assert host.huge_pages_env({}, MADVISE, plugins=()) == {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}


@pytest.mark.parametrize(
    "environ,thp",
    [
        ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, MADVISE),  # the user's own choice stays
        ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, MADVISE),  # already set: no second re-execution
        ({"BEVJAX_HUGE_PAGES": "0"}, MADVISE),
        ({}, "[always] madvise never\n"),  # huge pages anyway
        ({}, "always madvise [never]\n"),  # none to be had
    ],
)
def test_no_change(glibc_236, environ, thp):
    assert host.huge_pages_env(environ, thp, plugins=()) is None


def test_old_glibc_or_other_platform(monkeypatch):
    monkeypatch.setattr(host.sys, "platform", "linux")
    monkeypatch.setattr(host, "glibc_version", lambda: (2, 34))
    assert host.huge_pages_env({}, MADVISE, plugins=()) is None
    monkeypatch.setattr(host, "glibc_version", lambda: None)  # musl
    assert host.huge_pages_env({}, MADVISE, plugins=()) is None
    monkeypatch.setattr(host, "glibc_version", lambda: (2, 36))
    monkeypatch.setattr(host.sys, "platform", "darwin")
    assert host.huge_pages_env({}, MADVISE, plugins=()) is None


@pytest.mark.parametrize(
    "environ,argv,plugins,reason",
    [
        ({"JAX_PLATFORMS": "cuda"}, (), (), "JAX_PLATFORMS"),
        ({"JAX_PLATFORMS": "tpu"}, (), (), "JAX_PLATFORMS"),
        ({"JAX_PLATFORMS": "rocm"}, (), (), "JAX_PLATFORMS"),
        ({"JAX_PLATFORMS": "cuda,cpu"}, (), (), "JAX_PLATFORMS"),  # the CPU only as a fallback
        ({}, (), ("jax_cuda12_plugin",), "plugin jax_cuda12_plugin"),
        ({"JAX_PLATFORMS": ""}, (), ("libtpu",), "plugin libtpu"),
        ({"SLURM_PROCID": "0"}, (), (), "SLURM_PROCID"),
        ({"OMPI_COMM_WORLD_RANK": "1"}, (), (), "OMPI_COMM_WORLD_RANK"),
        ({"TORCHELASTIC_RUN_ID": "x", "LOCAL_RANK": "0"}, (), (), "launcher"),
        ({"TPU_WORKER_ID": "0"}, (), (), "TPU_WORKER_ID"),
        ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, (), (), "JAX_COORDINATOR_ADDRESS"),
        ({}, ("--config", "c.py", "--distributed"), (), "--distributed"),
        ({}, ("--distributed=true",), (), "--distributed"),
        ({"BEVJAX_HUGE_PAGES": "0"}, (), (), "BEVJAX_HUGE_PAGES=0"),
    ],
)
def test_skipped_off_cpu_and_under_launchers(glibc_236, environ, argv, plugins, reason):
    assert reason in host.huge_pages_skip_reason(environ, argv, plugins)
    assert host.huge_pages_env(environ, MADVISE, argv, plugins) is None


@pytest.mark.parametrize(
    "environ,argv,plugins",
    [
        ({}, (), ()),
        ({"JAX_PLATFORMS": "cpu"}, (), ("jax_cuda12_plugin",)),  # CPU asked for, plugin or not
        ({"JAX_PLATFORMS": " cpu "}, (), ()),
        ({}, ("--nodistributed",), ()),
        ({}, ("--distributed=false",), ()),
        ({}, ("--", "--distributed"), ()),  # after '--': not a flag of ours
        ({"SLURM_PROCID": ""}, (), ()),  # empty: not set by a launcher
    ],
)
def test_not_skipped_for_cpu_runs(glibc_236, environ, argv, plugins):
    assert host.huge_pages_skip_reason(environ, argv, plugins) is None
    assert host.huge_pages_env(environ, MADVISE, argv, plugins) is not None


def test_plugin_lookup_does_not_import(monkeypatch):
    """Plugins are found by module spec: a fake one on sys.path is listed and not imported."""
    monkeypatch.setattr(host.importlib.util, "find_spec", lambda name: object() if name == "libtpu" else None)
    monkeypatch.setattr(host.pkgutil, "iter_modules", lambda: [type("M", (), {"name": "jax_rocm7_plugin"})()])
    assert host.installed_accelerator_plugins() == ("libtpu", "jax_rocm7_plugin")
    assert "libtpu" not in sys.modules


def test_reexec_keeps_arguments_and_sets_tunable():
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "BEVJAX_HUGE_PAGES")}
    env["JAX_PLATFORMS"] = "cpu"
    code = (
        "import os, sys; from bevjax.training.host import reexec_with_huge_pages; reexec_with_huge_pages(); "
        "print(os.environ.get('GLIBC_TUNABLES'), sys.argv[1:])"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "a", "--b=1"], env=env, capture_output=True, text=True, check=True
    )
    expected = host.huge_pages_env(env, argv=["a", "--b=1"])
    assert proc.stdout.strip().split(maxsplit=1) == [
        (expected or {}).get("GLIBC_TUNABLES", "None"),
        "['a', '--b=1']",
    ]
    # One line on stderr when it restarts, naming the way to turn it off; nothing otherwise.
    assert proc.stderr.count("BEVJAX_HUGE_PAGES=0") == (expected is not None)
