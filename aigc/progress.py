"""A one-line progress bar on stderr for steps that take minutes (decoding a dataset)."""

from __future__ import annotations

import sys
import time


class Progress:
    """A one-line progress bar on stderr (a line per 10% when not a terminal)."""

    def __init__(self, label: str, total: int, enabled: bool = True):
        self.label, self.total, self.done = label, max(total, 1), 0
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.start, self.last_decile = time.monotonic(), -1

    def update(self, count: int):
        self.done += count
        if not self.enabled:
            return
        decile = 10 * self.done // self.total
        if self.tty or decile != self.last_decile:
            rate = self.done / max(time.monotonic() - self.start, 1e-6)
            end = "\r" if self.tty else "\n"
            sys.stderr.write(f"{self.label}: {self.done}/{self.total} images ({rate:.0f}/s){end}")
            self.last_decile = decile

    def close(self):
        if self.enabled and self.tty:
            sys.stderr.write("\n")
