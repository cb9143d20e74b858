"""The one seam where upstream failures cross into the client-facing side.

Adapters stay pure translations: their errors carry whatever the upstream said. ``app.py`` wraps every
adapter in a ``Scrubbed`` provider, so each failure one reports (an HTTP error's envelope and headers, an
in-band ``{"error": ...}`` frame before or after the first byte, a broken stream) is cleaned by the
gateway's ``Scrubber`` before the service turns it into a response, a ``stream_error`` frame, a record or a
log line. Answers pass through untouched.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from ..config import Deployment
from ..errors import GatewayError, StreamInterrupted
from ..scrub import Scrubber
from ..types import ChatChunk, ChatRequest, Completion
from .base import Provider, StreamStats


class Scrubbed:
    """A provider whose failures never carry a configured secret or an upstream address."""

    __slots__ = ("_inner", "_scrubber")

    def __init__(self, inner: Provider, scrubber: Scrubber) -> None:
        self._inner = inner
        self._scrubber = scrubber

    async def complete(self, request: ChatRequest, deployment: Deployment, request_id: str) -> Completion:
        try:
            return await self._inner.complete(request, deployment, request_id)
        except (GatewayError, StreamInterrupted) as exc:
            self._scrubber.error(exc)  # cleaned in place: the same exception, traceback and all
            raise

    async def stream(
        self, request: ChatRequest, deployment: Deployment, request_id: str, stats: StreamStats
    ) -> AsyncIterator[list[ChatChunk]]:
        upstream = self._inner.stream(request, deployment, request_id, stats)
        try:
            async for batch in upstream:
                yield batch
        except (GatewayError, StreamInterrupted) as exc:
            self._scrubber.error(exc)
            raise
        finally:
            aclose = getattr(upstream, "aclose", None)
            if aclose is not None:  # closing this stream closes the upstream connection at once
                await aclose()

    async def aclose(self) -> None:
        await self._inner.aclose()
