"""Authentication with a warm cache, and the bus that keeps every process's cache honest.

A verified key is cached in memory for ``ttl`` seconds, so the hot path costs one SHA-256 and one dict
lookup, not a database round trip. Changes (revoke, rotate, grants) drop cached entries at once on this
process, and through Redis pub/sub on every other process and replica; if the subscription breaks, the
whole cache is dropped when it comes back, since messages may have been missed. Without Redis, staleness
on other processes is bounded by ``ttl``. A store outage never lets an unknown key in: it fails closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy.exc import SQLAlchemyError

from ..errors import AuthenticationFailed, StoreUnavailable
from ..storage.identity import IdentityStore, KeyRow
from ..types import Principal
from .keys import PREFIX_LEN, looks_like_key

if TYPE_CHECKING:
    from ..routing.circuit import CircuitBreaker

log = logging.getLogger("sluicegate.auth.authenticator")

CHANNEL = "sluicegate:identity"
_MAX_ENTRIES = 100_000
# One message for missing, malformed, unknown, revoked and expired keys: a caller cannot probe which.
INVALID_KEY_MESSAGE = "Incorrect or missing API key. Pass a valid key as 'Authorization: Bearer <key>'."


class MasterKeyAuthenticator:
    """The master (admin) key, compared as SHA-256 digests so its length and content leak no timing."""

    def __init__(self, master_key: str | None) -> None:
        self._digest = hashlib.sha256(master_key.encode("utf-8")).digest() if master_key else None
        self.principal = Principal(key_id="master", key_prefix="master", name="master", is_admin=True)

    def is_master(self, credential: str) -> bool:
        if self._digest is None:
            return False
        return hmac.compare_digest(hashlib.sha256(credential.encode("utf-8")).digest(), self._digest)

    async def authenticate(self, credential: str) -> Principal:
        if self.is_master(credential):
            return self.principal
        raise AuthenticationFailed(INVALID_KEY_MESSAGE)


@dataclass(slots=True)
class _Entry:
    principal: Principal
    key_expires_at: float | None
    fresh_until: float


class KeyAuthenticator:
    def __init__(self, store: IdentityStore, master: MasterKeyAuthenticator, ttl: float = 5.0) -> None:
        self._store = store
        self._master = master
        self._ttl = ttl
        self._cache: dict[bytes, _Entry] = {}
        self._last_used: dict[str, float] = {}
        self._inflight: dict[str, asyncio.Task[KeyRow | None]] = {}

    async def authenticate(self, credential: str) -> Principal:
        if self._master.is_master(credential):
            return self._master.principal
        if not looks_like_key(credential):
            raise AuthenticationFailed(INVALID_KEY_MESSAGE)
        digest = hashlib.sha256(credential.encode("utf-8")).digest()
        now = time.time()
        entry = self._cache.get(digest)
        if entry is not None and entry.fresh_until > now:
            if entry.key_expires_at is not None and entry.key_expires_at <= now:
                self._cache.pop(digest, None)
                raise AuthenticationFailed(INVALID_KEY_MESSAGE)
            self._last_used[entry.principal.key_id] = now
            return entry.principal
        try:
            row = await self._lookup(credential[:PREFIX_LEN])
        except (SQLAlchemyError, OSError) as exc:
            log.error("key lookup failed: the store is unreachable (%s)", type(exc).__name__)
            raise StoreUnavailable("The gateway cannot verify API keys right now; try again shortly.") from exc
        # Compare digests in constant time; a prefix match alone proves nothing.
        if row is None or not hmac.compare_digest(row.key_hash, digest.hex()) or not row.usable(now):
            raise AuthenticationFailed(INVALID_KEY_MESSAGE)
        principal = Principal(
            key_id=row.id,
            key_prefix=row.prefix,
            name=row.name,
            group=row.group_name,
            models=row.group_models,
            key_models=row.models,
            key_limits=row.limits,
            group_limits=row.group_limits,
            group_dlp=row.group_dlp,
        )
        if len(self._cache) >= _MAX_ENTRIES:
            self._cache.clear()
        self._cache[digest] = _Entry(principal, row.expires_at, now + self._ttl)
        self._last_used[row.id] = now
        return principal

    async def _lookup(self, prefix: str) -> KeyRow | None:
        """One store query per prefix at a time: a burst on a cold or just-expired key shares it."""
        task = self._inflight.get(prefix)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._store.key_by_prefix(prefix))
            self._inflight[prefix] = task
            task.add_done_callback(lambda _t: self._inflight.pop(prefix, None))
        # Shielded: one caller leaving must not cancel the lookup the others wait on.
        return await asyncio.shield(task)

    # invalidation (called by the bus, locally and from other processes)

    def forget_key(self, key_id: str) -> None:
        for digest in [d for d, e in self._cache.items() if e.principal.key_id == key_id]:
            del self._cache[digest]

    def forget_group(self, group_name: str) -> None:
        for digest in [d for d, e in self._cache.items() if e.principal.group == group_name]:
            del self._cache[digest]

    def forget_all(self) -> None:
        self._cache.clear()

    def take_last_used(self) -> dict[str, float]:
        used, self._last_used = self._last_used, {}
        return used


class LocalBus:
    """Invalidates this process only (no Redis configured); other processes rely on the TTL."""

    def __init__(self, auth: KeyAuthenticator | None = None) -> None:
        self.auth = auth

    async def key_changed(self, key_id: str) -> None:
        if self.auth is not None:
            self.auth.forget_key(key_id)

    async def group_changed(self, group_name: str) -> None:
        if self.auth is not None:
            self.auth.forget_group(group_name)

    async def aclose(self) -> None:
        return None


class RedisBus(LocalBus):
    """Publishes identity changes on Redis and applies everyone's, including other replicas'."""

    def __init__(self, redis: Any, auth: KeyAuthenticator | None = None) -> None:
        super().__init__(auth)
        self._redis = redis
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self.subscribed = asyncio.Event()
        self.breaker: CircuitBreaker | None = None
        self._origin = uuid.uuid4().hex

    def circuit_changed(self, key: str, state: str) -> None:
        """Called synchronously by the breaker; the publish runs in the background."""
        task = asyncio.get_running_loop().create_task(
            self._publish({"kind": "circuit", "key": key, "state": state, "origin": self._origin})
        )
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def key_changed(self, key_id: str) -> None:
        await super().key_changed(key_id)
        await self._publish({"kind": "key", "id": key_id})

    async def group_changed(self, group_name: str) -> None:
        await super().group_changed(group_name)
        await self._publish({"kind": "group", "name": group_name})

    async def _publish(self, message: dict[str, str]) -> None:
        try:
            await self._redis.publish(CHANNEL, orjson.dumps(message))
        except Exception as exc:  # the local change is done; others fall back to the TTL
            log.error("could not publish an identity change to Redis (%s); other replicas rely on the TTL", exc)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._listen())

    async def _listen(self) -> None:
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(CHANNEL)
                    if self.auth is not None:
                        self.auth.forget_all()  # anything may have changed while we were not listening
                    self.subscribed.set()
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            self._apply(message.get("data"))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.subscribed.clear()
                log.warning("identity subscription to Redis lost (%s); retrying", exc)
                await asyncio.sleep(0.5)

    def _apply(self, data: Any) -> None:
        try:
            message = orjson.loads(data)
        except (orjson.JSONDecodeError, TypeError):
            return
        if message.get("kind") == "circuit":
            if self.breaker is not None and message.get("origin") != self._origin:
                self.breaker.apply_remote(str(message.get("key")), str(message.get("state")))
            return
        if self.auth is None:
            return
        if message.get("kind") == "key":
            self.auth.forget_key(str(message.get("id")))
        elif message.get("kind") == "group":
            self.auth.forget_group(str(message.get("name")))

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
