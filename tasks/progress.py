"""Progress of a long stage: done/total, rate and ETA, logged at most every few seconds."""

from __future__ import annotations

import time
from collections.abc import Callable


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds + 0.5), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"


class Progress:
    """Call with (done, total) as work advances; logs "done/total (pct), rate/s, ETA" through `log`
    at the first call, then at most every `every` seconds, and at the end."""

    def __init__(self, log: Callable[[str], None], unit: str, every: float = 10.0):
        self.log, self.unit, self.every = log, unit, every
        self.started = time.monotonic()
        self.last: float | None = None

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and self.last is not None and now - self.last < self.every:
            return
        self.last = now
        rate = done / max(now - self.started, 1e-9)
        eta = f", ETA {_duration((total - done) / rate)}" if done < total and rate > 0 else ""
        self.log(f"{done:,}/{total:,} {self.unit} ({done / max(total, 1):.0%}), {rate:,.0f} {self.unit}/s{eta}")
