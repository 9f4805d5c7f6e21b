"""jdepth/allocator.py: which allocator a training process restarts with (no restart here)."""

from __future__ import annotations

import sys

import pytest

from jdepth import allocator

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")


def test_prefers_tcmalloc(monkeypatch, tmp_path):
    lib = tmp_path / "libtcmalloc_minimal.so.4"
    lib.write_bytes(b"")
    monkeypatch.setattr(allocator, "find_tcmalloc", lambda: str(lib))
    env, description = allocator.planned_environment({"LD_PRELOAD": "/other.so", "PATH": "/bin"})
    assert env["LD_PRELOAD"] == f"{lib}:/other.so"
    assert env["PATH"] == "/bin"
    assert "tcmalloc" in description
    assert allocator.planned_environment(env) is None  # the restarted process stays


def test_glibc_tunables_without_tcmalloc(monkeypatch):
    monkeypatch.setattr(allocator, "find_tcmalloc", lambda: None)
    env, _ = allocator.planned_environment({"GLIBC_TUNABLES": "glibc.rtld.nns=2"})
    assert env["GLIBC_TUNABLES"] == "glibc.rtld.nns=2:" + allocator.GLIBC_TUNABLES
    assert "LD_PRELOAD" not in env
    # A user who tuned malloc already is left alone.
    assert allocator.planned_environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=4"}) is None


def test_opt_out_and_explicit_library(monkeypatch, tmp_path):
    monkeypatch.setattr(allocator, "find_tcmalloc", lambda: None)
    assert allocator.planned_environment({allocator.ENV_CHOICE: "system"}) is None
    lib = tmp_path / "libjemalloc.so.2"
    lib.write_bytes(b"")
    env, _ = allocator.planned_environment({allocator.ENV_CHOICE: str(lib)})
    assert env["LD_PRELOAD"] == str(lib)
    with pytest.raises(FileNotFoundError, match="JDEPTH_ALLOCATOR=/no/such.so"):
        allocator.planned_environment({allocator.ENV_CHOICE: "/no/such.so"})
