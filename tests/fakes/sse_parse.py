"""A tiny test-side SSE parser and encoder (WHATWG rules that matter here), independent of the gateway's."""

from __future__ import annotations

import json
from typing import Any


def encode_events(events: list[tuple[str | None, Any]]) -> bytes:
    """``(name, data)`` pairs as an SSE body; ``name=None`` omits ``event:`` (Gemini style)."""
    out: list[str] = []
    for name, data in events:
        if name is not None:
            out.append(f"event: {name}\n")
        out.append(f"data: {json.dumps(data, separators=(',', ':'))}\n\n")
    return "".join(out).encode()


class SseParser:
    """Feed bytes split anywhere; get complete ``(event name or None, data str)`` pairs."""

    def __init__(self) -> None:
        self._buf = b""
        self._event: str | None = None
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[tuple[str | None, str]]:
        self._buf += chunk
        out: list[tuple[str | None, str]] = []
        while True:
            cut = min((i for i in (self._buf.find(b"\r"), self._buf.find(b"\n")) if i >= 0), default=-1)
            if cut < 0:
                return out
            if self._buf[cut : cut + 1] == b"\r" and cut + 1 == len(self._buf):
                return out  # a CR that may be half of CRLF: wait for the next byte
            line = self._buf[:cut].decode()
            skip = 2 if self._buf[cut : cut + 2] == b"\r\n" else 1
            self._buf = self._buf[cut + skip :]
            if not line:
                if self._data:
                    out.append((self._event, "\n".join(self._data)))
                self._event, self._data = None, []
            elif line.startswith(":"):
                continue
            else:
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "data":
                    self._data.append(value)
                elif name == "event":
                    self._event = value
