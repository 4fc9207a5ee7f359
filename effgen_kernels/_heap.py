"""Handing the C heap's free pages back to the operating system while a model converts.

Converting a layer allocates buffers that live on beside ones it frees at once (its int8
codes before they are packed, a loader's converted copy of its float weights), all below
glibc's mmap threshold once the first large one has been freed (glibc then raises the
threshold to that size), so they come from the heap. The freed ones leave holes among the
layers that stay, which glibc keeps (it gives back only the top of its heap): quantize_ on
SmolLM2-135M left 140-170 MB of the process's memory free inside the heap (RESULTS.md,
session 64). ``malloc_trim`` gives those pages back; it changes no allocation.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable

# Trim once layers of this many bytes have converted. On SmolLM2-135M (fp32, fresh
# processes) every 16 MB kept quantize_'s peak within 10-30 MB of the memory it ends with,
# every 64 MB within 30-60, and each cost about as much load time (~50 ms of 0.5 s: the pages
# given back fault in again when reused).
TRIM_EVERY_BYTES = 16 << 20


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None where the C library has none (macOS, musl, Windows)."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError, TypeError):
        return None


def release_free_heap() -> None:
    """Give the heap's free pages back to the operating system (no-op without glibc)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


class HeapTrimmer:
    """Counts the bytes a loop goes through layer by layer (a layer's float weights where it
    quantizes or dequantizes them, its codes where it packs them); hands the heap's free
    pages back every ``every_bytes`` of them and at ``done``."""

    def __init__(self, every_bytes: int | None = None) -> None:
        self.every_bytes, self._since = every_bytes or TRIM_EVERY_BYTES, 0

    def converted(self, nbytes: int) -> None:
        self._since += nbytes
        if self._since >= self.every_bytes:
            self.done()

    def done(self) -> None:
        if self._since:
            release_free_heap()
            self._since = 0
