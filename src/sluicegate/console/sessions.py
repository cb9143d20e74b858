"""Console sessions and the login guard.

A session is a row in ``console_sessions``: the browser's cookie carries a random 256-bit token, the store only
its SHA-256, so a copy of the database opens no session. Sessions live in the store (not in process memory) so
every worker and replica honours them and a logout or expiry applies everywhere at once. A session ends after
``idle`` seconds without a request, and ``max_age`` seconds after login at the latest. Each has its own CSRF
token, which every form that changes something must send back.

Logins are rate limited per client address and in total, with the gateway's own GCRA limiter (in Redis when
configured, so across replicas); every failed or refused attempt is written to the audit chain, refusals at
most once per client per minute so that a flood cannot flood the chain.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from ..errors import StoreUnavailable
from ..policies.ratelimit import Bucket, Limiter, Verdict
from ..storage.console_schema import console_sessions

# last_seen is written at most this often (a page view is not a write), so idle expiry is this coarse.
TOUCH_EVERY = 30.0


@dataclass(frozen=True, slots=True)
class Session:
    token_hash: str
    csrf: str
    actor: str
    client: str
    created_at: float
    last_seen: float
    expires_at: float

    @property
    def who(self) -> str:
        """Who the audit chain names for a console action: the credential, through the console, from where."""
        return f"console:{self.actor}@{self.client}"

    def csrf_ok(self, sent: str | None) -> bool:
        return sent is not None and hmac.compare_digest(sent.encode(), self.csrf.encode())


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class SessionStore:
    def __init__(
        self, engine: AsyncEngine, *, idle: float, max_age: float, clock: Callable[[], float] = time.time
    ) -> None:
        self._engine = engine
        self.idle = idle
        self.max_age = max_age
        self._clock = clock

    async def create(self, actor: str, client: str) -> tuple[str, Session]:
        """A new session; the returned token goes into the cookie and is never stored."""
        now = self._clock()
        token = secrets.token_urlsafe(32)
        session = Session(_digest(token), secrets.token_urlsafe(32), actor, client[:100], now, now, now + self.max_age)
        t = console_sessions.c
        async with self._engine.begin() as conn:
            # Ended sessions are swept here: logins are rare, and no background task is needed for it.
            await conn.execute(delete(console_sessions).where(t.expires_at < now))
            await conn.execute(delete(console_sessions).where(t.last_seen < now - self.idle, t.expires_at >= now))
            await conn.execute(
                console_sessions.insert().values(
                    token_hash=session.token_hash,
                    csrf=session.csrf,
                    actor=session.actor,
                    client=session.client,
                    created_at=now,
                    last_seen=now,
                    expires_at=session.expires_at,
                )
            )
        return token, session

    async def get(self, token: str | None) -> Session | None:
        """The live session of a cookie's token, or None (unknown, idle too long, or past its maximum age)."""
        if not token or len(token) > 100:
            return None
        now = self._clock()
        key = _digest(token)
        t = console_sessions.c
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(console_sessions).where(t.token_hash == key))).first()
        if row is None:
            return None
        if now >= row.expires_at or now - row.last_seen >= self.idle:
            await self.end(token)
            return None
        if now - row.last_seen >= TOUCH_EVERY:
            async with self._engine.begin() as conn:
                await conn.execute(update(console_sessions).where(t.token_hash == key).values(last_seen=now))
        return Session(row.token_hash, row.csrf, row.actor, row.client, row.created_at, now, row.expires_at)

    async def end(self, token: str) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(delete(console_sessions).where(console_sessions.c.token_hash == _digest(token)))


class LoginGuard:
    """At most ``per_minute`` login attempts per client address, and ten times that from everyone together."""

    def __init__(self, limiter: Limiter, per_minute: int, clock: Callable[[], float] = time.time) -> None:
        self._limiter = limiter
        self._per_minute = per_minute
        self._clock = clock

    async def admit(self, client: str) -> float | None:
        """None when the attempt may go ahead, else the seconds until it would be admitted."""
        buckets = [
            Bucket(f"console:login:{client}", self._per_minute, 1, "requests"),
            Bucket("console:login:*", self._per_minute * 10, 1, "requests"),
        ]
        verdict = await self._take(buckets)
        return None if verdict.allowed else max(verdict.retry_after, 1.0)

    async def first_refusal(self, client: str) -> bool:
        """True once per client per minute: whether this refusal should be written to the audit chain."""
        verdict = await self._take([Bucket(f"console:login-refused:{client}", 1, 1, "requests")])
        return verdict.allowed

    async def _take(self, buckets: list[Bucket]) -> Verdict:
        try:
            return await self._limiter.take(buckets, self._clock())
        except Exception as exc:  # Redis unreachable: no login rather than unlimited guessing
            raise StoreUnavailable("Logging in is not possible right now: the login limiter is unreachable.") from exc
