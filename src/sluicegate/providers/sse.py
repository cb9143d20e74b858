"""Incremental server-sent-events decoder for upstream bodies (WHATWG HTML §9.2, PROTOCOL.md §3).

Bytes go in as the socket delivers them, split anywhere (inside a line, a CRLF pair or a UTF-8
character); complete events come out. Lines are split on bytes, so a multi-byte character cut by
a read boundary is never decoded half-way. Only ``event`` and ``data`` fields matter to a chat
stream; ``id``, ``retry`` and comments are consumed and dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

_BOM = b"\xef\xbb\xbf"


@dataclass(slots=True)
class SseEvent:
    event: str | None
    data: bytes


class SseDecoder:
    __slots__ = ("_buf", "_data", "_event", "_started")

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[bytes] = []
        self._event: str | None = None
        self._started = False

    def feed(self, chunk: bytes) -> list[SseEvent]:
        buf = self._buf + chunk if self._buf else chunk
        if not self._started:
            if len(buf) < 3 and _BOM.startswith(buf):
                self._buf = buf
                return []
            self._started = True
            if buf.startswith(_BOM):
                buf = buf[3:]
        if b"\r" in buf:
            # A CR at the very end may be the first half of a CRLF split by the read: keep it.
            tail = b""
            if buf.endswith(b"\r"):
                buf, tail = buf[:-1], b"\r"
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            lines = buf.split(b"\n")
            self._buf = lines.pop() + tail
        else:
            lines = buf.split(b"\n")
            self._buf = lines.pop()
        events: list[SseEvent] = []
        for line in lines:
            if not line:
                if self._data:
                    events.append(SseEvent(self._event, b"\n".join(self._data)))
                    self._data = []
                self._event = None
            elif line[0] == 0x3A:  # ":" comment, e.g. keep-alive
                continue
            else:
                name, sep, value = line.partition(b":")
                if sep and value[:1] == b" ":
                    value = value[1:]
                if name == b"data":
                    self._data.append(value)
                elif name == b"event":
                    self._event = value.decode("utf-8", "replace")
        return events

    @property
    def pending(self) -> bool:
        """True when a partial event is buffered (the body ended mid-event)."""
        return bool(self._data or self._buf.strip())
