"""The orchestrator of one chat request: targets → attempts → the client's answer.

Before the first byte, every failure is still an ordinary error: the first chunk is awaited
(under the first-token timeout) before the response starts, so a failing upstream can be replaced
by the next target or reported as an HTTP error. After it, failures become the ``stream_error``
frame. Timeouts are enforced here, around the adapter's reads and never around writes to the
client, so a slow reader is not mistaken for a silent upstream.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from .config import Deployment, GatewayConfig, ModelConfig
from .errors import (
    GatewayError,
    ModelNotFound,
    StreamInterrupted,
    UpstreamEmptyBody,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from .http.sse import DONE, StreamEncoder, stream_error_frame
from .metering.tokens import TokenCounter
from .policies.access import check_model_access
from .providers.base import StreamStats
from .routing import Router, Target
from .types import ChatChunk, ChatRequest, Principal, Usage


@dataclass(slots=True)
class RequestContext:
    request_id: str
    principal: Principal
    request: ChatRequest
    model: ModelConfig | None = None
    attempts: int = 0
    fallbacks: int = 0
    served_by: Target | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    started: float = field(default_factory=lambda: asyncio.get_running_loop().time())

    def response_headers(self) -> dict[str, str]:
        return {
            "x-request-id": self.request_id,
            "x-sluicegate-attempts": str(self.attempts),
            "x-sluicegate-fallbacks": str(self.fallbacks),
        }


def new_completion_id() -> str:
    return "chatcmpl-" + secrets.token_urlsafe(18)


class ChatService:
    def __init__(self, config: GatewayConfig, router: Router, tokens: TokenCounter) -> None:
        self._config = config
        self._router = router
        self._tokens = tokens

    def resolve(self, ctx: RequestContext) -> ModelConfig:
        """Model lookup and access check: 404 before 403, both before any upstream call."""
        model = self._router.model(ctx.request.model)
        if model is None:
            raise ModelNotFound(f"The model '{ctx.request.model}' does not exist", param="model")
        check_model_access(ctx.principal, model.id)
        ctx.model = model
        return model

    def estimate_usage(self, request: ChatRequest, completion_text: str) -> Usage:
        return Usage(
            prompt_tokens=self._tokens.count_messages(request.messages),
            completion_tokens=self._tokens.count(completion_text),
            estimated=True,
        )

    # -- non-streaming ---------------------------------------------------------------------------

    async def complete(self, ctx: RequestContext) -> dict[str, Any]:
        model = ctx.model or self.resolve(ctx)
        last_error: GatewayError | None = None
        for target in self._router.targets(model):
            ctx.attempts += 1
            try:
                async with asyncio.timeout(target.deployment.timeouts.total):
                    completion = await target.provider.complete(ctx.request, target.deployment, ctx.request_id)
            except TimeoutError:
                last_error = UpstreamTimeout("the upstream did not answer in time")
                continue
            except UpstreamError as exc:
                last_error = exc
                if not exc.retryable:
                    raise
                continue
            ctx.served_by = target
            ctx.fallbacks = int(target.is_fallback)
            usage = completion.usage
            if usage is None:
                text = "".join(_message_text(c) for c in completion.choices)
                usage = self.estimate_usage(ctx.request, text)
            return {
                "id": new_completion_id(),
                "object": "chat.completion",
                "created": ctx.created,
                "model": target.model.id,
                "choices": completion.choices,
                "usage": usage.to_openai(),
                **completion.extra,
            }
        raise last_error or UpstreamUnavailable("no deployment is available for this model")

    # -- streaming -------------------------------------------------------------------------------

    async def open_stream(self, ctx: RequestContext) -> OpenStream:
        """Find a target whose first chunk arrives; raise the last error if none does."""
        model = ctx.model or self.resolve(ctx)
        last_error: GatewayError | None = None
        completion_id = new_completion_id()
        for target in self._router.targets(model):
            ctx.attempts += 1
            encoder = StreamEncoder(completion_id, ctx.created, target.model.id, ctx.request.include_usage)
            stats = StreamStats()
            upstream = target.provider.stream(ctx.request, target.deployment, ctx.request_id, stats)
            try:
                first = await self._first_bytes(upstream, encoder, target.deployment)
            except (UpstreamError, StreamInterrupted, TimeoutError) as exc:
                await _close(upstream)
                last_error = _pre_stream_error(exc)
                if isinstance(last_error, UpstreamError) and not last_error.retryable:
                    raise last_error from exc
                continue
            except BaseException:
                await _close(upstream)
                raise
            ctx.served_by = target
            ctx.fallbacks = int(target.is_fallback)
            return OpenStream(self, ctx, target.deployment, upstream, encoder, first)
        raise last_error or UpstreamUnavailable("no deployment is available for this model")

    async def _first_bytes(
        self, upstream: AsyncIterator[list[ChatChunk]], encoder: StreamEncoder, deployment: Deployment
    ) -> bytes:
        parts: list[bytes] = []
        async with asyncio.timeout(deployment.timeouts.first_token):
            while not encoder.started:
                try:
                    batch = await anext(upstream)
                except StopAsyncIteration:
                    raise UpstreamEmptyBody("the upstream ended the stream before sending anything") from None
                parts.append(encoder.encode(batch))
        return b"".join(parts)


class OpenStream:
    """A stream whose first chunk has arrived: the status is decided, the rest is bytes for the client."""

    def __init__(
        self,
        service: ChatService,
        ctx: RequestContext,
        deployment: Deployment,
        upstream: AsyncIterator[list[ChatChunk]],
        encoder: StreamEncoder,
        first: bytes,
    ) -> None:
        self._service = service
        self.ctx = ctx
        self._deployment = deployment
        self._upstream = upstream
        self.encoder = encoder
        self.first = first
        self.outcome = "pending"  # completed | interrupted | cancelled

    async def rest(self) -> AsyncGenerator[bytes, None]:
        """Everything after the first bytes, ending with ``[DONE]`` or the ``stream_error`` frame."""
        loop = asyncio.get_running_loop()
        t = self._deployment.timeouts
        tail_grace = self._service._config.server.tail_grace
        deadline = self.ctx.started + t.total
        encoder = self.encoder
        upstream = self._upstream
        in_tail = encoder.complete
        try:
            async with asyncio.timeout(None) as timer:
                while not (encoder.complete and encoder.usage is not None):
                    wait = tail_grace if in_tail else t.idle
                    timer.reschedule(min(loop.time() + wait, deadline))
                    try:
                        batch = await anext(upstream)
                    except StopAsyncIteration:
                        break
                    timer.reschedule(None)  # never time the client's reading
                    data = encoder.encode(batch)
                    in_tail = encoder.complete
                    if data:
                        yield data
        except TimeoutError:
            if not in_tail:
                self.outcome = "interrupted"
                message = "upstream idle timeout" if loop.time() < deadline else "upstream total timeout"
                yield stream_error_frame(message)
                return
        except (StreamInterrupted, UpstreamError) as exc:
            self.outcome = "interrupted"
            yield stream_error_frame(_stream_message(exc))
            return
        finally:
            await _close(upstream)
        if not encoder.complete:
            self.outcome = "interrupted"
            yield stream_error_frame("upstream stream ended without a finish_reason")
            return
        self.outcome = "completed"
        if encoder.usage is None:
            encoder.usage = self._service.estimate_usage(self.ctx.request, "".join(encoder.completion_parts))
        if encoder.include_usage:
            yield encoder.usage_frame(encoder.usage) + DONE
        else:
            yield DONE


def _pre_stream_error(exc: BaseException) -> GatewayError:
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout("the upstream sent no first token in time")
    if isinstance(exc, StreamInterrupted):
        return UpstreamError(f"the upstream failed before the first token: {exc.message}")
    return UpstreamError("the upstream failed")


def _stream_message(exc: BaseException) -> str:
    if isinstance(exc, StreamInterrupted):
        return exc.message
    if isinstance(exc, GatewayError):
        return exc.message
    return "upstream stream interrupted"


async def _close(upstream: AsyncIterator[list[ChatChunk]]) -> None:
    aclose = getattr(upstream, "aclose", None)
    if aclose is not None:
        await aclose()


def _message_text(choice: dict[str, Any]) -> str:
    message = choice.get("message") or {}
    parts = [message.get("content") or ""]
    for call in message.get("tool_calls") or ():
        fn = call.get("function") or {}
        parts.append(str(fn.get("name") or "") + str(fn.get("arguments") or ""))
    return "".join(p for p in parts if isinstance(p, str))
