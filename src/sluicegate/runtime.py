"""The stores and identity of one process, opened the same way by the server and by the CLI.

The database engine (migrated at every open), the identity store and the authenticator with its cache,
Redis and the bus when configured, the usage store, and the admin service on top. The server adds what
only a serving process needs (``app.Gateway``); the CLI's admin commands use this alone.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from .admin import Admin, AdminAudit
from .auth.authenticator import IdentityEvents, KeyAuthenticator, MasterKeyAuthenticator
from .bus import LocalBus, RedisBus
from .config import GatewayConfig
from .records import AuditEntry
from .settings import Settings
from .storage.db import create_engine
from .storage.identity import IdentityStore
from .storage.migrations import migrate
from .storage.usage import UsageStore


class _DirectAudit:
    """Admin actions from a process without a recorder (the CLI) go straight to the store."""

    def __init__(self, usage: UsageStore) -> None:
        self._usage = usage

    async def admin_action(self, actor: str, action: str, target: str, details: dict[str, Any]) -> None:
        await self._usage.write([], [AuditEntry(time.time(), "admin", actor, action, target, details)])


class Runtime:
    def __init__(self, settings: Settings, config: GatewayConfig) -> None:
        self.settings = settings
        self.config = config
        self.master = MasterKeyAuthenticator(settings.master_key)
        self.engine: AsyncEngine
        self.identity: IdentityStore
        self.authenticator: KeyAuthenticator
        self.redis: Any = None
        self.bus: LocalBus
        self.usage: UsageStore
        self.admin: Admin

    async def open(self) -> None:
        storage = self.config.storage
        self.engine = create_engine(
            self.settings.database_url, pool_size=storage.pool_size, max_overflow=storage.max_overflow
        )
        await migrate(self.engine)
        self.identity = IdentityStore(self.engine)
        self.authenticator = KeyAuthenticator(self.identity, self.master, ttl=self.config.auth.cache_ttl)
        if self.settings.redis_url:
            # Imported only when configured: redis-py costs a process ~8 MB it would not use otherwise.
            from redis.asyncio import from_url as redis_from_url

            self.redis = redis_from_url(self.settings.redis_url)
            self.bus = RedisBus(self.redis)
        else:
            self.bus = LocalBus()
        self.usage = UsageStore(self.engine)
        events = IdentityEvents(self.bus, self.authenticator)
        self.admin = Admin(self.identity, events, _DirectAudit(self.usage), self.usage)

    def audit_through(self, audit: AdminAudit) -> None:
        """Admin actions join another writer (the server's recorder) instead of going straight to the store."""
        self.admin.set_audit(audit)

    async def close(self) -> None:
        await self.bus.aclose()
        if self.redis is not None:
            await self.redis.aclose()
        await self.usage.close()
        await self.engine.dispose()
