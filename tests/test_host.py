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
    env = host.huge_pages_env({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1", "X": "1"}, MADVISE)
    assert env == {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1:glibc.malloc.hugetlb=1", "X": "1"}
    assert host.huge_pages_env({}, MADVISE) == {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}


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
    assert host.huge_pages_env(environ, thp) is None


def test_old_glibc_or_other_platform(monkeypatch):
    monkeypatch.setattr(host.sys, "platform", "linux")
    monkeypatch.setattr(host, "glibc_version", lambda: (2, 34))
    assert host.huge_pages_env({}, MADVISE) is None
    monkeypatch.setattr(host, "glibc_version", lambda: None)  # musl
    assert host.huge_pages_env({}, MADVISE) is None
    monkeypatch.setattr(host, "glibc_version", lambda: (2, 36))
    monkeypatch.setattr(host.sys, "platform", "darwin")
    assert host.huge_pages_env({}, MADVISE) is None


def test_reexec_keeps_arguments_and_sets_tunable():
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "BEVJAX_HUGE_PAGES")}
    code = (
        "import os, sys; from bevjax.training.host import reexec_with_huge_pages; reexec_with_huge_pages(); "
        "print(os.environ.get('GLIBC_TUNABLES'), sys.argv[1:])"
    )
    out = (
        subprocess.run(
            [sys.executable, "-c", code, "a", "--b=1"], env=env, capture_output=True, text=True, check=True
        )
        .stdout.strip()
        .split(maxsplit=1)
    )
    expected = (host.huge_pages_env(env) or {}).get("GLIBC_TUNABLES", "None")
    assert out == [expected, "['a', '--b=1']"]
