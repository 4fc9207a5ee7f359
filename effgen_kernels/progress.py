"""A progress bar on stderr for long runs (training loops, demo stages, benchmark workers):
redrawn in place on a terminal, one line every few seconds in a log; no dependency."""

from __future__ import annotations

import sys
import time

WIDTH = 24


class Progress:
    """``done`` of ``total`` units with a bar, the elapsed time, an ETA and a free-form
    detail. Draws at most every ``every_s`` seconds (and always at the end), and nothing
    until ``silent_s`` seconds have passed: a library call that is over sooner prints nothing."""

    def __init__(self, total: int, label: str, enabled: bool = True, every_s: float | None = None,
                 silent_s: float = 0.0) -> None:
        self.total, self.label, self.enabled, self.silent_s = max(total, 1), label, enabled, silent_s
        self.tty = sys.stderr.isatty()
        self.every_s = every_s if every_s is not None else (0.2 if self.tty else 5.0)
        self.done, self.started, self.last = 0, time.monotonic(), float("-inf")

    def update(self, done: int | None = None, detail: str = "") -> None:
        self.done = self.done + 1 if done is None else done
        now = time.monotonic()
        elapsed = now - self.started
        if not self.enabled or elapsed < self.silent_s or (self.done < self.total and now - self.last < self.every_s):
            return
        self.last = now
        eta = elapsed / self.done * (self.total - self.done) if self.done else 0.0
        filled = WIDTH * self.done // self.total
        line = (f"{self.label} [{'#' * filled}{'.' * (WIDTH - filled)}] {self.done}/{self.total} "
                f"{elapsed:.0f}s, eta {eta:.0f}s{' | ' + detail if detail else ''}")
        sys.stderr.write(("\r" + line + "\x1b[K") if self.tty else line + "\n")
        if self.tty and self.done >= self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()
