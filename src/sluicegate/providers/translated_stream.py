"""The stream loop of the adapters that translate another API's events (Anthropic, Gemini).

Both APIs announce a message before the model has produced anything, and an error event often follows
(``overloaded_error``, a quota refusal). So chunks are held back until the first real content (text,
reasoning, a tool call) or the finish: until then a failure is still *before* the first byte, where the
service can fail over or answer with a real HTTP status. After it, a failure ends the client's stream with
the ``stream_error`` frame (``StreamInterrupted``). The adapters differ only in how the stream ends:
Anthropic says so in an event (the translator's ``done``), Gemini only by ending the body (``at_end``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

import aiohttp
import orjson

from ..config import Deployment
from ..errors import GatewayError, StreamInterrupted, UpstreamEmptyBody, UpstreamError
from ..types import ChatChunk
from ._http import end_response, malformed_event, read_some
from .base import StreamStats
from .sse import SseDecoder


class TranslatorState(Protocol):
    @property
    def content_sent(self) -> bool:
        """Any content, reasoning or tool-call delta was produced."""
        ...

    @property
    def done(self) -> bool:
        """The finish chunk was produced."""
        ...


async def translated_stream(
    open_response: Callable[[], Awaitable[aiohttp.ClientResponse]],
    deployment: Deployment,
    stats: StreamStats,
    log: logging.Logger,
    state: TranslatorState,
    feed: Callable[[str, dict[str, Any]], list[ChatChunk]],
    at_end: Callable[[], list[ChatChunk]] | None = None,
) -> AsyncIterator[list[ChatChunk]]:
    """Open the response, decode its SSE events and hand each object to ``feed(event name, object)``.

    ``at_end``: called when the body ends, for the last chunks, or raising ``UpstreamError`` if the stream
    is incomplete; None when the stream ends with ``state.done`` and a body ending before it is a failure.
    """
    resp = await open_response()
    decoder = SseDecoder()
    held: list[ChatChunk] = []  # chunks not yet released: nothing but the role chunk so far
    released = False
    finished = False
    ends_on_done = at_end is None
    try:
        while True:
            data = await read_some(resp)
            if not data:
                break
            batch, held = held, []
            failure: GatewayError | StreamInterrupted | None = None
            for event in decoder.feed(data):
                try:
                    obj = orjson.loads(event.data)
                except orjson.JSONDecodeError:
                    obj = None
                try:
                    if not isinstance(obj, dict):
                        malformed_event(stats, deployment, started=released, size=len(event.data), log=log)
                        continue
                    stats.valid_events += 1
                    batch.extend(feed(event.event or "", obj))
                except (GatewayError, StreamInterrupted) as exc:
                    failure = exc
                    break
                if ends_on_done and state.done:
                    break
            released = released or state.content_sent or state.done
            if released:
                if batch:
                    yield batch
            else:
                held = batch
            if failure is not None:
                if released and isinstance(failure, GatewayError):
                    raise StreamInterrupted(failure.message) from failure
                raise failure
            if ends_on_done and state.done:
                finished = True
                return
        if at_end is None:
            if released:
                raise StreamInterrupted("upstream stream ended early")
            if not stats.valid_events:
                raise UpstreamEmptyBody("the upstream ended the stream before sending anything")
            raise UpstreamError("the upstream ended the stream before any content")
        try:
            tail = at_end()
        except UpstreamError as exc:
            if released:
                raise StreamInterrupted("upstream stream ended early") from exc
            if not stats.valid_events:
                raise UpstreamEmptyBody("the upstream ended the stream before sending anything") from exc
            raise
        finished = True
        yield held + tail
    finally:
        # A client that stops reading right after the finish chunk still leaves a reusable connection.
        end_response(resp, finished=finished or (ends_on_done and state.done))
