"""Handing the C heap's free pages back to the operating system while a model converts.

Converting a layer allocates buffers that live on beside ones it frees at once (its int8
codes before they are packed, a loader's converted copy of its float weights), all below
glibc's mmap threshold once the first large one has been freed (glibc then raises the
threshold to that size), so they come from the heap. The freed ones leave holes among the
layers that stay, which glibc keeps (it gives back only the top of its heap): loading
SmolLM2-135M as bf16 with EffgenConfig peaked 110 MB higher for them (RESULTS.md, session
64). ``malloc_trim`` gives those pages back; it changes no allocation. A trim costs
the time to give the pages back and, where later layers reuse them, to fault them in again,
so HeapTrimmer trims only once the process's resident memory has grown.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import os
import sys
from collections.abc import Callable

# Trim once the resident anonymous memory has grown by this much since the last trim. On
# SmolLM2-135M loaded as bf16 with EffgenConfig (the loader's bf16 copies make the holes)
# 16 and 64 MB both cut the peak by ~110 MB; 16 cost ~0.1 s more load time, 64 about half.
TRIM_AFTER_GROWTH_BYTES = 64 << 20


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim on Linux, or None where there is none (macOS, musl, Windows): then
    nothing is trimmed."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError):
        return None


@functools.cache
def _statm(pid: int) -> int:
    """A descriptor of /proc/<pid>/statm, kept open: a pread of it takes 0.5 us, opening it
    6 (keyed by pid: a forked child must not read its parent's)."""
    return os.open(f"/proc/{pid}/statm", os.O_RDONLY)


def resident_anonymous_bytes() -> int:
    """The process's resident memory less its file-backed pages (from /proc/self/statm:
    mallinfo2, which walks the heap's free chunks, took 0.1-1 ms a look); 0 where nothing is
    trimmed."""
    if _malloc_trim() is None:
        return 0
    resident_pages, file_pages = (int(field) for field in os.pread(_statm(os.getpid()), 256, 0).split()[1:3])
    return (resident_pages - file_pages) * mmap.PAGESIZE


def release_free_heap() -> None:
    """Give the heap's free pages back to the operating system (no-op without glibc)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


class HeapTrimmer:
    """Call ``layer_done`` after each layer a loop converts and ``done`` after the loop: the
    heap's free pages go back whenever the resident anonymous memory has grown by
    ``growth_bytes`` since the last trim (or the least since), and at ``done`` if it grew at
    all. What the converted layers hold counts as growth too: a trim every 64 MB of them,
    cheap where there are few holes."""

    def __init__(self, growth_bytes: int | None = None) -> None:
        self.growth_bytes = growth_bytes or TRIM_AFTER_GROWTH_BYTES
        self._baseline = resident_anonymous_bytes()  # after the last trim, or the least since

    def layer_done(self) -> None:
        resident = resident_anonymous_bytes()
        if resident - self._baseline >= self.growth_bytes:
            release_free_heap()
            self._baseline = resident_anonymous_bytes()
        else:
            self._baseline = min(self._baseline, resident)

    def done(self) -> None:
        if resident_anonymous_bytes() > self._baseline:
            release_free_heap()
