"""Messages between the processes and replicas of one deployment: Redis pub/sub, or this process only.

Two kinds travel today, on one channel: identity changes (a key or group changed: drop cached
credentials) and circuit-breaker state. Each message names its ``kind``; a handler is registered per kind.
A subscription that breaks may have missed messages, so ``on_resubscribe`` callbacks run every time it
is (re)established (the authenticator then drops its whole cache). Each process tags what it publishes
with its origin, so a handler can ignore its own echoes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from typing import Any

import orjson

log = logging.getLogger("sluicegate.bus")

CHANNEL = "sluicegate:identity"  # the name predates the circuit messages; kept so mixed versions interoperate
Handler = Callable[[dict[str, Any]], None]


class LocalBus:
    """No Redis: messages reach this process only (other processes rely on their caches' TTLs)."""

    shared = False

    def __init__(self) -> None:
        self.origin = uuid.uuid4().hex
        self._handlers: dict[str, list[Handler]] = {}
        self._resubscribed: list[Callable[[], None]] = []

    def subscribe(self, kind: str, handler: Handler) -> None:
        self._handlers.setdefault(kind, []).append(handler)

    def on_resubscribe(self, callback: Callable[[], None]) -> None:
        self._resubscribed.append(callback)

    async def publish(self, kind: str, message: dict[str, Any], *, local: bool = True) -> None:
        """Deliver to every other process (on Redis) and, when ``local``, to this process's handlers at once."""
        if local:
            self._deliver({**message, "kind": kind, "origin": self.origin})

    def _deliver(self, message: dict[str, Any]) -> None:
        for handler in self._handlers.get(str(message.get("kind")), ()):
            try:
                handler(message)
            except Exception:
                log.exception("bus handler for %r failed", message.get("kind"))

    def start(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


class RedisBus(LocalBus):
    shared = True

    def __init__(self, redis: Any) -> None:
        super().__init__()
        self._redis = redis
        self._task: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()

    async def publish(self, kind: str, message: dict[str, Any], *, local: bool = True) -> None:
        full = {**message, "kind": kind, "origin": self.origin}
        if local:
            self._deliver(full)
        try:
            await self._redis.publish(CHANNEL, orjson.dumps(full))
        except Exception as exc:  # the local change is done; others fall back to their TTLs
            log.error("could not publish a %s change to Redis (%s); other replicas rely on the TTL", kind, exc)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._listen())

    async def _listen(self) -> None:
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    for callback in self._resubscribed:  # anything may have changed while we were not listening
                        callback()
                    self.subscribed.set()
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            self._apply(message.get("data"))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.subscribed.clear()
                log.warning("bus subscription to Redis lost (%s); retrying", exc)
                await asyncio.sleep(0.5)

    def _apply(self, data: Any) -> None:
        try:
            message = orjson.loads(data)
        except (orjson.JSONDecodeError, TypeError):
            return
        if isinstance(message, dict) and message.get("origin") != self.origin:
            self._deliver(message)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
