"""The open streams of a process, so a graceful shutdown can give them time and then end them cleanly."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .stream import OpenStream

log = logging.getLogger("sluicegate")


class StreamRegistry:
    def __init__(self, drain_timeout: float) -> None:
        self._drain_timeout = drain_timeout
        self._streams: set[OpenStream] = set()
        self.draining = False
        self.expired = False  # the drain window is over: streams that open now are ended at once

    def __len__(self) -> int:
        return len(self._streams)

    def opened(self, stream: OpenStream) -> None:
        self._streams.add(stream)
        if self.expired:
            stream.abort("gateway shutting down")

    def closed(self, stream: OpenStream) -> None:
        self._streams.discard(stream)

    def begin_drain(self) -> None:
        """Open streams get ``drain_timeout`` seconds, then end with the stream's error event."""
        if self.draining:
            return
        self.draining = True
        log.info("draining %d open stream(s) for up to %.0f s", len(self._streams), self._drain_timeout)
        asyncio.get_running_loop().call_later(self._drain_timeout, self._abort_all)

    def _abort_all(self) -> None:
        self.expired = True
        for stream in list(self._streams):
            stream.abort("gateway shutting down")
