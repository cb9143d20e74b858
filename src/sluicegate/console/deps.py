"""What the console uses of the serving process."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from ..admin import Admin
    from ..analytics import Analytics
    from ..auth.authenticator import MasterKeyAuthenticator
    from ..config import GatewayConfig
    from ..routing.circuit import CircuitBreaker
    from ..storage.usage import UsageStore


@dataclass(frozen=True, slots=True)
class ConsoleDeps:
    """What the console uses of the serving process (built by ``app.Gateway``)."""

    config: GatewayConfig
    engine: AsyncEngine
    redis: Any  # redis.asyncio.Redis when configured: login limits shared across workers
    master: MasterKeyAuthenticator
    master_set: bool  # whether SLUICEGATE_MASTER_KEY is set at all (the login page says so)
    admin: Admin
    analytics: Analytics
    usage: UsageStore
    breaker: CircuitBreaker
