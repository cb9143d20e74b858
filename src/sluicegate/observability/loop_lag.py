"""How long the event loop is held: a timer every ``INTERVAL`` seconds, and how late it fires.

A worker serves all its requests on one thread; while one piece of work holds it (decoding a huge body,
scanning a huge prompt), ``/healthz`` and every other stream on the worker wait. A periodic timer shows
that wait as lateness: a stall of S seconds makes the next tick late by between S - ``INTERVAL`` and S,
so the largest lag plus ``INTERVAL`` bounds the longest stall. Cost: one wake-up per tick, ~0.1 % of a
core at 100 ticks a second.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

INTERVAL = 0.01
# The gauge reports the worst lag of the last WINDOW/2 to WINDOW seconds (two rotating halves), so a
# scrape every 15 s or so still sees any stall of the last few seconds.
WINDOW = 10.0


class LoopLagMonitor:
    """Run ``run()`` as a task on the loop to watch; ``report(lag, recent_max)`` is called every tick."""

    def __init__(
        self,
        report: Callable[[float, float], None],
        *,
        interval: float = INTERVAL,
        window: float = WINDOW,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._report = report
        self._interval = interval
        self._half = window / 2
        self._clock = clock

    async def run(self) -> None:
        clock, interval = self._clock, self._interval
        current = previous = 0.0
        rotate_at = clock() + self._half
        while True:
            due = clock() + interval
            await asyncio.sleep(interval)
            now = clock()
            lag = max(0.0, now - due)
            if now >= rotate_at:
                previous, current = current, 0.0
                rotate_at = now + self._half
            current = max(current, lag)
            self._report(lag, max(current, previous))
