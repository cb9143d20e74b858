"""Authentication with a warm cache, kept honest by identity events on the bus.

A verified key is cached in memory for ``ttl`` seconds, so the hot path costs one SHA-256 and one dict
lookup, not a database round trip. Changes (revoke, rotate, grants) drop cached entries at once on this
process, and through Redis pub/sub on every other process and replica; if the subscription breaks, the
whole cache is dropped when it comes back, since messages may have been missed. Without Redis, staleness
on other processes is bounded by ``ttl``. A store outage never lets an unknown key in: it fails closed.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from dataclasses import dataclass

from sqlalchemy.exc import SQLAlchemyError

from ..bus import LocalBus
from ..errors import AuthenticationFailed, StoreUnavailable
from ..storage.identity import IdentityStore, KeyRow
from ..types import Principal
from .keys import PREFIX_LEN, looks_like_key

log = logging.getLogger("sluicegate.identity")

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


class IdentityEvents:
    """Announces identity changes (``admin.IdentityBus``) and applies every process's to the key cache."""

    def __init__(self, bus: LocalBus, auth: KeyAuthenticator | None = None) -> None:
        self._bus = bus
        if auth is not None:
            bus.subscribe("key", lambda m: auth.forget_key(str(m.get("id"))))
            bus.subscribe("group", lambda m: auth.forget_group(str(m.get("name"))))
            bus.on_resubscribe(auth.forget_all)  # messages may have been missed while unsubscribed

    async def key_changed(self, key_id: str) -> None:
        await self._bus.publish("key", {"id": key_id})

    async def group_changed(self, group_name: str) -> None:
        await self._bus.publish("group", {"name": group_name})
