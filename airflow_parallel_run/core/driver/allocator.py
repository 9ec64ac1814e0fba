"""glibc's allocator in a process that runs the engine's jobs and then ends: from a job's report on, large
blocks go back to the system as soon as they are freed.

Why: glibc serves a block of 128 KiB or more from a memory map of its own, which it unmaps when the block is
freed, but each such free raises that threshold to the block's size (up to 32 MiB), and from then on blocks
under it come from its heaps, where freed memory mostly stays. The report's build (core/logs/report.py:
pandas over every attempt) makes and frees many arrays of hundreds of KiB. For the 100,000 attempts of a
1,000,000-file job with the embedded dashboard off, it added 44-46 MB to the driver's peak, 34-37 MB with
the threshold fixed from the build on; with the dashboard on, whose heaps already had free room for the
arrays, it changed nothing (docs/performance.md, "glibc's threshold for the report"). The page is the same.

Only where the engine owns the process: the CLI's and an Airflow task's (`own_process`, called by those
front ends), and only from the report on (`large_blocks_returned`, called before it is built). The
setting lasts as long as the process (glibc has no way back to its raising threshold), and a library call
(`run_job` in a notebook, a job driven inside a Dask worker) must not change how its caller's process
allocates. The run itself keeps glibc's default: an embedded worker thread receives results of many
hundreds of KiB, which a raised threshold serves from memory already mapped.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import threading

#: mallopt's parameter number of the threshold (glibc's malloc.h: M_MMAP_THRESHOLD).
M_MMAP_THRESHOLD = -3
#: The threshold fixed: glibc's own first value, which it then keeps instead of raising it.
LARGE_BLOCK = 128 * 1024

_lock = threading.Lock()
_owned = False
_fixed = False


def own_process() -> None:
    """This process runs the engine's jobs and then ends (the CLI, an Airflow task): its allocator may be
    set for that (`large_blocks_returned`)."""
    global _owned
    _owned = True


def large_blocks_returned() -> bool:
    """In a process the engine owns, on glibc: blocks of `LARGE_BLOCK` bytes and more are mapped and unmapped
    one by one from now on. Whether the threshold is fixed (False elsewhere: nothing is changed)."""
    global _fixed
    with _lock:
        if _owned and not _fixed:
            mallopt = _glibc_mallopt()
            _fixed = mallopt is not None and mallopt(M_MMAP_THRESHOLD, LARGE_BLOCK) == 1
        return _fixed


@functools.cache
def _glibc_mallopt() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """glibc's `mallopt`, or None (another C library, such as musl's, or none to load)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - glibc only: others' mallopt may read the numbers otherwise
    except (OSError, AttributeError):
        return None
    mallopt = libc.mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt  # type: ignore[no-any-return]
