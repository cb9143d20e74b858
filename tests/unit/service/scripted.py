"""An in-process provider whose every deployment follows a script: the service's units without sockets.

The adapter boundary is the one seam these tests replace (the end-to-end suite covers real upstreams on
sockets); everything from the service down to the records is the real code. A deployment's ``model``
names its script in ``ScriptedProvider.scripts``: a list of steps per attempt, each attempt taking the
next list (the last one repeats).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from sluicegate.config import Deployment, GatewayConfig
from sluicegate.hooks import PolicyChain, RequestContext
from sluicegate.providers.base import StreamStats
from sluicegate.providers.registry import ProviderRegistry, ProviderSpec
from sluicegate.records import RequestRecord
from sluicegate.routing.circuit import CircuitBreaker
from sluicegate.routing.router import Router
from sluicegate.service import ChatService
from sluicegate.tokens import TokenCounter
from sluicegate.types import ChatChunk, ChatRequest, ChoiceDelta, Completion, Principal, Usage

# Steps of a streamed attempt: a list of chunks to yield, an exception to raise, ("sleep", seconds), or "end".
Step = Any

ADMIN = Principal(key_id="master", key_prefix="master", name="master", is_admin=True)


def text(t: str, finish: str | None = None) -> ChatChunk:
    return ChatChunk([ChoiceDelta(0, {"content": t}, finish)])


def role() -> ChatChunk:
    return ChatChunk([ChoiceDelta(0, {"role": "assistant", "content": ""})])


def finish(reason: str = "stop") -> ChatChunk:
    return ChatChunk([ChoiceDelta(0, {}, reason)])


def usage(prompt: int, completion: int) -> ChatChunk:
    return ChatChunk([], Usage(prompt_tokens=prompt, completion_tokens=completion))


@dataclass
class ScriptedProvider:
    scripts: dict[str, list[list[Step]]] = field(default_factory=dict)
    calls: list[tuple[str, list[dict[str, Any]]]] = field(default_factory=list)  # (deployment model, messages)
    closed: list[str] = field(default_factory=list)  # deployment models whose stream was closed

    def _next(self, deployment: Deployment, request: ChatRequest) -> list[Step]:
        self.calls.append((deployment.model, request.messages))
        script = self.scripts[deployment.model]
        return script.pop(0) if len(script) > 1 else script[0]

    async def complete(self, request: ChatRequest, deployment: Deployment, request_id: str) -> Completion:
        steps = self._next(deployment, request)
        for step in steps:
            if isinstance(step, BaseException):
                raise step
            if isinstance(step, tuple):
                await asyncio.sleep(step[1])
        choice = {"index": 0, "message": {"role": "assistant", "content": "done"}, "finish_reason": "stop"}
        return Completion([choice], Usage(prompt_tokens=5, completion_tokens=1))

    async def stream(
        self, request: ChatRequest, deployment: Deployment, request_id: str, stats: StreamStats
    ) -> AsyncIterator[list[ChatChunk]]:
        steps = self._next(deployment, request)
        try:
            for step in steps:
                if isinstance(step, BaseException):
                    raise step
                if isinstance(step, tuple):
                    await asyncio.sleep(step[1])
                elif step == "end":
                    return
                else:
                    yield step
            await asyncio.sleep(3600)  # a script that runs out goes silent
        finally:
            self.closed.append(deployment.model)

    async def aclose(self) -> None:
        return None


class Records:
    """A sink keeping every finished record (in order)."""

    name = "records"

    def __init__(self) -> None:
        self.all: list[RequestRecord] = []

    async def finished(self, ctx: RequestContext, record: RequestRecord) -> None:
        self.all.append(record)


def service(models: list[dict[str, Any]], provider: ScriptedProvider, **config: Any) -> tuple[ChatService, Records]:
    raw = {
        "models": models,
        "routing": {"retry": {"backoff_base": 0.0, "backoff_max": 0.0}, **config.pop("routing", {})},
        **config,
    }
    cfg = GatewayConfig.model_validate(raw)
    registry = ProviderRegistry([ProviderSpec("scripted", lambda _d: provider, trace_name="scripted", prefill=True)])
    router = Router(cfg, {"scripted": provider}, registry)
    records = Records()
    svc = ChatService(cfg, router, TokenCounter(), PolicyChain([], [records]), CircuitBreaker(cfg.routing.circuit))
    return svc, records


def deployments(*names: str, **timeouts: float) -> list[dict[str, Any]]:
    t = {"connect": 1, "headers": 1, "first_token": 0.5, "idle": 0.3, "total": 5, **timeouts}
    return [{"provider": "scripted", "model": n, "timeouts": t} for n in names]


def chat(model: str = "m", *, stream: bool = True) -> ChatRequest:
    return ChatRequest(model=model, messages=[{"role": "user", "content": "hi"}], params={}, stream=stream)
