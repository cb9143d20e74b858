"""Server-sent-events framing shared by every streaming wire format."""

from __future__ import annotations

# A comment line: every SSE client ignores it, intermediaries see traffic (used while a first token is slow).
KEEPALIVE = b": keep-alive\n\n"


def event(name: str | None, data: bytes) -> bytes:
    """One event: an optional ``event:`` name and one ``data:`` line (``data`` must hold no newline)."""
    if name is None:
        return b"data: " + data + b"\n\n"
    return b"event: " + name.encode() + b"\ndata: " + data + b"\n\n"
