"""The two shapes every wire format provides to the edge."""

from __future__ import annotations

from typing import Protocol

from ..errors import GatewayError
from ..types import ChatRequest, ChoiceDelta, Completion, Usage


class StreamEncoder(Protocol):
    """Normalised deltas in, one API's stream bytes out; one per response."""

    content_type: bytes
    keepalive: bytes  # sent while a slow first token is awaited (after the status is committed)

    def encode(self, deltas: list[ChoiceDelta]) -> bytes: ...

    def done(self, usage: Usage) -> bytes:
        """The end of a complete answer (whatever the API sends after the last choice)."""
        ...

    def fail(self, message: str) -> bytes:
        """The terminal error event after the first byte: never a truncated answer that looks complete."""
        ...


class WireFormat(Protocol):
    """One inbound API: ``api`` names it in records and metrics."""

    api: str

    def decode(self, raw: bytes) -> ChatRequest: ...

    def stream_encoder(self, request: ChatRequest, *, model: str, created: int) -> StreamEncoder: ...

    def completion(self, completion: Completion, usage: Usage, *, model: str, created: int) -> bytes: ...

    def error_body(self, exc: GatewayError, request_id: str | None) -> bytes: ...
