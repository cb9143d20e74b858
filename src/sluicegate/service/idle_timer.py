"""Times the upstream's silences in a stream without touching a timer per chunk.

A stream must end when the upstream is silent for ``idle`` seconds (``tail_grace`` after the finish) or
its total deadline passes, but never because the client reads slowly. Rescheduling an
``asyncio.timeout`` around every read did that at the cost of two timer operations per chunk, a
measurable share of a relay whose whole budget is tens of microseconds per chunk. Here a read only
stamps the time it started waiting; one timer wakes up when the earliest possible expiry comes, looks at
the stamp, and either expires the stream's ``asyncio.Timeout`` or goes back to sleep until the next
possible expiry. A stream that chunks every 200 ms with a 30 s idle limit wakes it once per 30 s.
"""

from __future__ import annotations

import asyncio


class IdleTimer:
    __slots__ = ("_deadline", "_handle", "_loop", "_since", "_timeout", "_wait")

    def __init__(self, timeout: asyncio.Timeout, deadline: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._timeout = timeout  # entered by the caller, with no deadline of its own
        self._deadline = deadline  # loop time
        self._since: float | None = None  # when the current read began; None while not reading
        self._wait = 0.0
        self._handle: asyncio.TimerHandle | None = None

    def reading(self, wait: float) -> None:
        """A read from the upstream starts; it may take ``wait`` seconds (and not past the deadline)."""
        now = self._since = self._loop.time()
        self._wait = wait
        due = min(now + wait, self._deadline)
        handle = self._handle
        if handle is None or handle.when() > due:  # a shorter wait than the armed one (the tail grace)
            if handle is not None:
                handle.cancel()
            self._handle = self._loop.call_at(due, self._check)

    def done_reading(self) -> None:
        """The read returned: time spent delivering to the client is not the upstream's silence."""
        self._since = None

    def _check(self) -> None:
        self._handle = None
        since = self._since
        if since is None:
            return  # not reading now; the next read arms the timer again
        due = min(since + self._wait, self._deadline)
        now = self._loop.time()
        if now >= due:
            self._timeout.reschedule(now)  # expires the caller's ``async with`` with TimeoutError
        else:
            self._handle = self._loop.call_at(due, self._check)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._since = None
