"""Handing the C heap's free pages back to the operating system while a model converts.

Converting a layer allocates buffers that live on beside ones it frees at once (its int8
codes before they are packed, a loader's converted copy of its float weights), all below
glibc's mmap threshold once the first large one has been freed (glibc then raises the
threshold to that size), so they come from the heap. The freed ones leave holes among the
layers that stay, which glibc keeps (it gives back only the top of its heap): quantize_ on
SmolLM2-135M left 140-170 MB of the process's memory free inside the heap (RESULTS.md,
session 64). ``malloc_trim`` gives those pages back; it changes no allocation. A trim costs
the time to give the pages back and, where later layers reuse them, to fault them in again,
so HeapTrimmer trims only once the resident memory malloc does not use has grown.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import sys

# Trim once the process's resident memory that malloc does not use has grown by this much
# since the last trim: on SmolLM2-135M the peak of quantize_ then stays within ~20 MB of the
# memory it ends with.
TRIM_AFTER_GROWTH_BYTES = 16 << 20


class _MallInfo2(ctypes.Structure):
    """glibc's struct mallinfo2 (2.33 and later): size_t fields, in bytes."""

    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


@functools.cache
def _glibc() -> tuple | None:
    """(malloc_trim, mallinfo2) of the process's C library on Linux, or None where there are
    none (macOS, musl, Windows, glibc before 2.33): then nothing is trimmed."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        trim, info = libc.malloc_trim, libc.mallinfo2
    except (AttributeError, OSError):
        return None
    info.restype = _MallInfo2
    return trim, info


def resident_unused_bytes() -> int:
    """The process's resident anonymous memory less what malloc has handed out: free heap
    pages still resident, plus memory malloc does not manage (Python's own arenas, thread
    stacks), which changes little while a loop converts layers. 0 without glibc."""
    glibc = _glibc()
    if glibc is None:
        return 0
    with open("/proc/self/statm") as f:
        resident_pages, file_pages = (int(field) for field in f.read().split()[1:3])
    info = glibc[1]()
    return (resident_pages - file_pages) * mmap.PAGESIZE - info.uordblks - info.hblkhd


def release_free_heap() -> None:
    """Give the heap's free pages back to the operating system (no-op without glibc)."""
    glibc = _glibc()
    if glibc is not None:
        glibc[0](0)


class HeapTrimmer:
    """Call ``layer_done`` after each layer a loop converts and ``done`` after the loop: the
    heap's free pages go back whenever the resident memory malloc does not use has grown by
    ``growth_bytes`` since the last trim, and at ``done`` if it grew at all."""

    def __init__(self, growth_bytes: int | None = None) -> None:
        self.growth_bytes = growth_bytes or TRIM_AFTER_GROWTH_BYTES
        self._baseline = resident_unused_bytes()  # after the last trim, or the least since

    def layer_done(self) -> None:
        unused = resident_unused_bytes()
        if unused - self._baseline >= self.growth_bytes:
            release_free_heap()
            self._baseline = resident_unused_bytes()
        else:
            self._baseline = min(self._baseline, unused)

    def done(self) -> None:
        if resident_unused_bytes() > self._baseline:
            release_free_heap()
