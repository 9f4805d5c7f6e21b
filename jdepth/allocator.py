"""Host memory allocator for training processes: keep XLA:CPU's step buffers, not re-fault them.

XLA:CPU allocates every execution's temporary buffer (gigabytes at 640x192) with `posix_memalign`
from a worker thread and frees it at the end of the step. glibc serves such blocks with a fresh
`mmap` and returns them with `munmap`, so every step page-faults its whole working set again: at
12 x 640x192 about 1.5 million faults and 6-9 s of kernel time per ~12 s step, more after an idle
pause. A caching allocator keeps the memory mapped (BENCHMARKS.md, "Speed").

`reexec_with_fast_allocator()` restarts the current command (before JAX starts) with, in order of
preference:
  1. tcmalloc (`libtcmalloc_minimal.so.4`, Debian/Ubuntu package `libtcmalloc-minimal4`) preloaded;
  2. otherwise glibc tunables that keep freed memory in the heap (`arena_max=2`, `mmap_max=0`,
     `trim_threshold=1 TiB`).
The resident memory then stays at the run's peak instead of shrinking between steps.
Set `JDEPTH_ALLOCATOR=system` to keep the process as started, or `JDEPTH_ALLOCATOR=/path/lib.so` to
preload another allocator.
"""

from __future__ import annotations

import ctypes.util
import os
import sys

ENV_CHOICE = "JDEPTH_ALLOCATOR"
_ENV_DONE = "JDEPTH_ALLOCATOR_SET"  # set in the restarted process, so it does not restart again
TCMALLOC_NAMES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4")
_TCMALLOC_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64",
                  "/usr/lib", "/usr/local/lib")
GLIBC_TUNABLES = ("glibc.malloc.arena_max=2:glibc.malloc.mmap_max=0:"
                  "glibc.malloc.trim_threshold=1099511627776")


def find_tcmalloc() -> str | None:
    """Path of an installed tcmalloc shared library, or None."""
    for directory in _TCMALLOC_DIRS:
        for name in TCMALLOC_NAMES:
            path = os.path.join(directory, name)
            if os.path.exists(path):
                return path
    found = ctypes.util.find_library("tcmalloc_minimal") or ctypes.util.find_library("tcmalloc")
    return found if found and os.path.isabs(found) else None


def planned_environment(environ: dict[str, str]) -> tuple[dict[str, str], str] | None:
    """(environment for the restarted process, description), or None to keep this process.

    Pure: reads only `environ` and the file system, so it is testable without restarting.
    """
    if not sys.platform.startswith("linux") or environ.get(_ENV_DONE):
        return None
    choice = environ.get(ENV_CHOICE, "auto")
    if choice == "system":
        return None
    env = dict(environ)
    env[_ENV_DONE] = "1"
    library = choice if choice not in ("auto", "") else find_tcmalloc()
    if library:
        if not os.path.exists(library):
            raise FileNotFoundError(f"{ENV_CHOICE}={choice}: no such file (use 'system' to keep "
                                    "the default allocator, or unset it)")
        if library in environ.get("LD_PRELOAD", ""):
            return None
        env["LD_PRELOAD"] = ":".join(filter(None, [library, environ.get("LD_PRELOAD")]))
        return env, f"tcmalloc ({library})"
    if "glibc.malloc" in environ.get("GLIBC_TUNABLES", ""):
        return None  # the user tuned glibc already
    env["GLIBC_TUNABLES"] = ":".join(filter(None, [environ.get("GLIBC_TUNABLES"), GLIBC_TUNABLES]))
    return env, "glibc malloc tuned to keep freed memory (install libtcmalloc-minimal4 for more)"


def reexec_with_fast_allocator() -> None:
    """Restarts this command under a caching allocator (see module docstring); returns only when
    no restart is needed or possible. Call it first thing in a `__main__`, before JAX runs."""
    plan = planned_environment(dict(os.environ))
    if plan is None:
        return
    env, description = plan
    argv = getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv]
    print(f"jdepth: restarting with {description} (set {ENV_CHOICE}=system to skip)", flush=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *argv[1:]], env)
