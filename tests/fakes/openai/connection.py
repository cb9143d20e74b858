"""One TCP connection of the fake: reading HTTP/1.1 requests by hand, writing, resetting; and the request log."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass
class RecordedRequest:
    """One request as the fake saw it. Fields after ``received_at`` are updated live by the server thread."""

    index: int
    connection_id: int
    method: str
    path: str
    headers: dict[str, str]
    body: Any  # parsed JSON, or None when the body was empty or not JSON
    raw_body: bytes
    scenario: str | None  # None for requests other than chat completions
    received_at: float
    status: int | None = None  # None when no status line was sent (silence, reset before headers)
    finished_at: float | None = None  # when the fake was done with the response (completed, reset or closed)
    client_closed_at: float | None = None  # set when the client closed its socket before the response finished
    outcome: str | None = None  # complete | reset | closed | client_closed | server_stopped


@dataclass
class HttpRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


class PeerGone(Exception):
    """The client closed its socket: the handler stops writing."""


class ConnectionOwner(Protocol):
    """The server a connection reports to (``FakeOpenAI``)."""

    def adopt(self, conn: Connection) -> None: ...

    def forget(self, conn: Connection) -> None: ...


class Connection(asyncio.Protocol):
    def __init__(self, fake: ConnectionOwner, connection_id: int) -> None:
        self.fake = fake
        self.id = connection_id
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.data_arrived = asyncio.Event()
        self.peer_gone = asyncio.Event()
        self.writable = asyncio.Event()
        self.writable.set()
        self.closed_by_us = False
        self.current: RecordedRequest | None = None

    # asyncio.Protocol callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.fake.adopt(self)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.data_arrived.set()

    def eof_received(self) -> bool:
        # An HTTP client only half-closes when it gives up, so EOF means "gone"; returning False closes our side.
        self._on_peer_gone()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._on_peer_gone()
        self.writable.set()  # wake a writer blocked on flow control so it notices
        self.fake.forget(self)

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def _on_peer_gone(self) -> None:
        if self.peer_gone.is_set():
            return
        self.peer_gone.set()
        self.data_arrived.set()
        record = self.current
        if not self.closed_by_us and record is not None and record.finished_at is None:
            # Outcome first: tests poll for client_closed_at from another thread, then read the outcome.
            record.outcome = "client_closed"
            record.client_closed_at = time.monotonic()

    # reading

    async def _more_data(self) -> bool:
        if self.peer_gone.is_set():
            return False
        self.data_arrived.clear()
        await self.data_arrived.wait()
        return True

    async def _read_until(self, marker: bytes) -> bytes | None:
        """Bytes up to ``marker`` (consumed, not returned), or None when the client closed first."""
        while (end := self.buffer.find(marker)) < 0:
            if not await self._more_data():
                return None
        data = bytes(self.buffer[:end])
        del self.buffer[: end + len(marker)]
        return data

    async def _read_exact(self, size: int) -> bytes | None:
        while len(self.buffer) < size:
            if not await self._more_data():
                return None
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    async def _read_chunked(self) -> bytes | None:
        body = bytearray()
        while (size_line := await self._read_until(b"\r\n")) is not None:
            size = int(size_line.split(b";", 1)[0], 16)
            if size == 0:
                while await self._read_until(b"\r\n"):  # trailers, up to the empty line
                    pass
                return bytes(body)
            if (data := await self._read_exact(size + 2)) is None:
                return None
            body += data[:-2]
        return None

    async def read_request(self) -> HttpRequest | None:
        """The next request on this connection, or None when the client closed it."""
        head = await self._read_until(b"\r\n\r\n")
        if head is None:
            return None
        request_line, *lines = head.decode("latin-1").lstrip("\r\n").split("\r\n")
        method, target, version = request_line.split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines:
            name, _, value = line.partition(":")
            key = name.strip().lower()
            headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
        if headers.get("expect", "").lower() == "100-continue":
            self.write_now(b"HTTP/1.1 100 Continue\r\n\r\n")
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = await self._read_chunked()
        else:
            body = await self._read_exact(int(headers.get("content-length", "0")))
        if body is None:
            return None
        connection = headers.get("connection", "").lower()
        keep_alive = "close" not in connection and (version == "HTTP/1.1" or "keep-alive" in connection)
        return HttpRequest(method.upper(), target.split("?", 1)[0], headers, body, keep_alive)

    # writing

    def write_now(self, data: bytes) -> None:
        if self.peer_gone.is_set() or self.transport is None or self.transport.is_closing():
            raise PeerGone
        self.transport.write(data)

    async def send(self, data: bytes) -> None:
        self.write_now(data)
        await self.writable.wait()

    async def reset(self) -> None:
        """Abort with a TCP RST, after what was written has reached the kernel (abort() discards our buffer)."""
        assert self.transport is not None
        while self.transport.get_write_buffer_size() and not self.peer_gone.is_set():
            await asyncio.sleep(0.001)
        self.closed_by_us = True
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abort()

    def close(self) -> None:
        """Close cleanly (FIN) once the write buffer has been flushed."""
        self.closed_by_us = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed_by_us = True
        if self.transport is not None:
            self.transport.abort()
