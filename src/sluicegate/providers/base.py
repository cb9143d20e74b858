"""The provider adapter contract.

An adapter is a pure translation (OpenAI request → provider request, provider response/stream →
canonical ``Completion``/``ChatChunk``) plus one call. It knows nothing of keys, budgets or HTTP
responses to the client. It reports every failure as an ``UpstreamError`` (before the stream) or a
``StreamInterrupted`` (after it started), and closes its upstream connection when its iterator is
closed or cancelled, which is how client disconnects and timeouts reach the upstream socket.

Timeouts are enforced by the caller (``service``) around ``__anext__``; an adapter only has to
apply the connect timeout when it opens the connection.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from ..config import Deployment
from ..types import ChatChunk, ChatRequest, Completion


@dataclass(slots=True)
class StreamStats:
    """What the adapter saw that the caller cannot: counted, never raised."""

    valid_events: int = 0
    malformed_events: int = 0
    dropped_events: list[str] = field(default_factory=list)


class Provider(Protocol):
    """One provider family (``openai``, ``anthropic``, ...); one instance serves all its deployments."""

    async def complete(self, request: ChatRequest, deployment: Deployment, request_id: str) -> Completion:
        """Answer without streaming."""
        ...

    def stream(
        self, request: ChatRequest, deployment: Deployment, request_id: str, stats: StreamStats
    ) -> AsyncIterator[list[ChatChunk]]:
        """Stream the answer; each item is what one upstream read delivered (coalesced downstream)."""
        ...

    async def aclose(self) -> None:
        """Release pooled connections."""
        ...
