"""A stream whose first chunk has arrived: the status is decided, the rest is deltas for the client.

``rest`` relays the upstream's chunks through the policies' stream filters and the ``StreamState`` until
the answer is complete, then makes the record durable and ends; ``end`` then says how the client's
stream must close (its usage, or the failure to report). Timeouts are enforced around the upstream's
reads and never around the client's: an ``IdleTimer`` stamps each read, so a slow reader is not taken for
a silent upstream. A failure after the first byte may be continued on another deployment
(``ChatService.resume``); otherwise it is reported, never hidden.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Protocol

from ..config import GatewayConfig
from ..errors import GatewayError, StreamInterrupted, UpstreamEmptyBody, UpstreamError
from ..hooks import RequestContext, StreamFilter
from ..records import RequestRecord
from ..routing.router import Target
from ..types import ChatChunk, ChatRequest, ChoiceDelta, Usage
from .idle_timer import IdleTimer
from .state import StreamState

log = logging.getLogger("sluicegate.service")


class StreamOwner(Protocol):
    """What an open stream needs from the service that opened it (``ChatService``)."""

    config: GatewayConfig

    async def resume(self, stream: OpenStream) -> AsyncIterator[list[ChatChunk]] | None: ...

    async def estimate_usage(self, request: ChatRequest, completion_text: str) -> Usage: ...

    def record(
        self,
        ctx: RequestContext,
        *,
        outcome: str,
        status: int,
        usage: Usage | None = None,
        error_code: str | None = None,
        partial: bool = False,
    ) -> RequestRecord: ...

    async def finish(self, ctx: RequestContext, record: RequestRecord) -> None: ...


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """How the client's stream closes: ``tail`` (text the filters held back), then usage or the failure."""

    tail: list[ChoiceDelta]
    usage: Usage
    failure: str | None  # None: complete


class OpenStream:
    def __init__(
        self,
        service: StreamOwner,
        ctx: RequestContext,
        target: Target,
        upstream: AsyncIterator[list[ChatChunk]],
        filters: list[StreamFilter],
    ) -> None:
        self._service = service
        self.ctx = ctx
        self.target = target
        self._upstream = upstream
        self.state = StreamState()
        self._filters = filters
        self.first: list[ChoiceDelta] = []
        self.end: StreamEnd | None = None  # set when ``rest`` is over
        self.outcome = "pending"  # completed | interrupted | cancelled
        self._recorded = False
        self.abort_reason: str | None = None  # set by a graceful shutdown that ran out of time
        self.resumed = 0  # times the answer was continued on another deployment after a mid-stream failure
        self.relayed = False  # the first bytes reached the client (set by the edge)
        self._timer: asyncio.Timeout | None = None

    def _relay(self, batch: list[ChatChunk]) -> list[ChoiceDelta]:
        for f in self._filters:
            batch = f.feed(batch)
        return self.state.feed(batch)

    async def read_first(self) -> None:
        """Read until the answer has started (the caller times this with the first-token deadline)."""
        first: list[ChoiceDelta] = []
        while not self.state.started:
            try:
                batch = await anext(self._upstream)
            except StopAsyncIteration:
                raise UpstreamEmptyBody("the upstream ended the stream before sending anything") from None
            first.extend(self._relay(batch))
        self.first = first

    def abort(self, reason: str) -> None:
        """End the stream with a failure as soon as possible (used on shutdown)."""
        self.abort_reason = reason
        if self._timer is not None:
            self._timer.reschedule(asyncio.get_running_loop().time())

    async def rest(self) -> AsyncGenerator[list[ChoiceDelta], None]:
        """Everything after the first deltas; ``end`` is set (and the record durable) when it returns."""
        loop = asyncio.get_running_loop()
        t = self.target.deployment.timeouts
        tail_grace = self._service.config.server.tail_grace
        deadline = self.ctx.started + t.total
        state = self.state
        upstream = self._upstream
        in_tail = state.complete
        failure: str | None = None
        try:
            while True:
                idle: IdleTimer | None = None
                try:
                    async with asyncio.timeout(None) as timer:
                        self._timer = timer
                        idle = IdleTimer(timer, deadline)
                        while not (state.complete and state.usage is not None) and self.abort_reason is None:
                            idle.reading(tail_grace if in_tail else t.idle)
                            try:
                                batch = await anext(upstream)
                            except StopAsyncIteration:
                                break
                            idle.done_reading()  # never time the client's reading
                            deltas = self._relay(batch)
                            in_tail = state.complete
                            if deltas:
                                yield deltas
                except TimeoutError:
                    if self.abort_reason is not None:
                        failure = self.abort_reason
                    elif not in_tail:
                        failure = "upstream idle timeout" if loop.time() < deadline else "upstream total timeout"
                except (StreamInterrupted, UpstreamError) as exc:
                    failure = _stream_message(exc)
                finally:
                    self._timer = None
                    if idle is not None:
                        idle.cancel()
                    await close_upstream(upstream)
                if failure is None and self.abort_reason is None and not state.complete:
                    failure = "upstream stream ended without a finish_reason"
                if failure is None or self.abort_reason is not None or loop.time() >= deadline:
                    break
                resumed = await self._service.resume(self)
                if resumed is None:
                    break  # the client gets the original failure, never a fallback's refusal of the prefill
                upstream, failure, in_tail = resumed, None, False
                self._upstream = upstream
            if failure is None and self.abort_reason is not None and not state.complete:
                failure = self.abort_reason
            tail = self._flush_filters()
            if failure is None and not state.complete:
                failure = "upstream stream ended without a finish_reason"
            self._recorded = True
            if failure is not None:
                self.outcome = "interrupted"
                usage = await self._finish_billed(partial=True, error_code="stream_error", status=200)
            else:
                self.outcome = "completed"
                usage = await self._finish_billed(partial=False, error_code=None, status=200)
            self.end = StreamEnd(tail, usage, failure)
        except Exception:
            if not self._recorded:  # a gateway bug mid-stream; the edge ends the stream with its error event
                self.outcome = "interrupted"
                await shielded(self._finish(partial=True, error_code="internal_error"))
            raise
        finally:
            if not self._recorded:  # the client went away (or the task was cancelled) mid-stream
                self.outcome = "cancelled"
                await shielded(self._finish(partial=True, error_code="client_disconnected"))

    async def close(self, *, internal_error: bool = False) -> None:
        """Settle a stream whose relay will not run to its end: the client left, or the edge failed
        (``internal_error``: a gateway bug, recorded as one), before or while ``rest`` ran. Closes the
        upstream and records the request, so what it holds (a budget reservation) is let go. A no-op once
        the stream is recorded."""
        if self._recorded:
            return
        try:
            with contextlib.suppress(Exception):
                await close_upstream(self._upstream)
        finally:
            if internal_error and not self.relayed:
                # Nothing reached the client, which gets a 500: recorded like a failure before the first byte.
                self.outcome = "failed"
                await shielded(self._finish(partial=True, error_code="internal_error", status=500, usage=False))
            elif internal_error:
                self.outcome = "interrupted"
                await shielded(self._finish(partial=True, error_code="internal_error"))
            else:
                self.outcome = "cancelled"
                await shielded(self._finish(partial=True, error_code="client_disconnected"))

    def _flush_filters(self) -> list[ChoiceDelta]:
        """Release text the filters still hold (a stream that ended without its finish chunk)."""
        out: list[ChatChunk] = []
        for i, f in enumerate(self._filters):
            pending = f.flush()
            for later in self._filters[i + 1 :]:
                pending = later.feed(pending) if pending else pending
            out.extend(pending)
        return self.state.feed(out) if out else []

    async def _finish(
        self, *, partial: bool, error_code: str | None, status: int = 200, usage: bool = True
    ) -> Usage | None:
        """Record the request (``usage``: whether it is billed, i.e. anything reached the client)."""
        self._recorded = True
        if not usage:
            await self._service.finish(
                self.ctx, self._service.record(self.ctx, outcome=self.outcome, status=status, error_code=error_code)
            )
            return None
        return await self._finish_billed(partial=partial, error_code=error_code, status=status)

    async def _finish_billed(self, *, partial: bool, error_code: str | None, status: int) -> Usage:
        state = self.state
        usage = state.usage
        if usage is None or partial or self.resumed:
            # A resumed answer came from two upstreams; neither usage report covers the whole of it.
            try:
                estimated = await self._service.estimate_usage(self.ctx.request, state.text)
            except Exception:  # the record (and the after-hooks it feeds) must still happen
                log.exception("could not count the usage of request %s", self.ctx.request_id)
                estimated = Usage(estimated=True)
            if usage is None or usage.completion_tokens == 0:
                usage = estimated
            state.usage = usage
        service = self._service
        record = service.record(
            self.ctx, outcome=self.outcome, status=status, usage=usage, error_code=error_code, partial=partial
        )
        await service.finish(self.ctx, record)
        return usage


async def shielded(awaitable: Awaitable[object]) -> None:
    """Run bookkeeping to completion even if the request's task is being cancelled."""
    task = asyncio.ensure_future(awaitable)
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.shield(task)


async def close_upstream(upstream: AsyncIterator[list[ChatChunk]]) -> None:
    aclose = getattr(upstream, "aclose", None)
    if aclose is not None:
        await aclose()


def _stream_message(exc: BaseException) -> str:
    if isinstance(exc, StreamInterrupted | GatewayError):
        return exc.message
    return "upstream stream interrupted"
