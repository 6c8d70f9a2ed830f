"""Progress of long work: a tqdm bar on a terminal, else a log line every few seconds (for `kubectl logs`)."""

from __future__ import annotations

import logging
import sys
import time

logger = logging.getLogger(__name__)


class Progress:
    """``update(k)`` after k more items; reports done/total, the rate (in ``scale`` units per item) and the ETA."""

    def __init__(self, what: str, total: int, done: int = 0, scale: int = 1, unit: str = "items",
                 every: float = 10.0):
        self.what, self.total, self.done, self.scale, self.unit, self.every = what, total, done, scale, unit, every
        self.start = self.last = time.monotonic()
        self.start_done = done
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=done, desc=what, file=sys.stderr)

    def update(self, items: int = 1) -> None:
        self.done += items
        if self.bar is not None:
            self.bar.update(items)
            return
        now = time.monotonic()
        if now - self.last < self.every and self.done < self.total:
            return
        self.last = now
        rate = (self.done - self.start_done) * self.scale / max(now - self.start, 1e-9)
        eta = (self.total - self.done) * self.scale / rate if rate else float("inf")
        logger.info("%s: %d/%d, %.1f %s/s, ETA %.0fs", self.what, self.done, self.total, rate, self.unit, eta)

    def callback(self, done: int, total: int) -> None:
        """For APIs that report (done, total) themselves, e.g. GraderPool.grade(progress=...)."""
        self.total = total
        self.update(done - self.done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
