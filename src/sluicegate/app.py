"""Composition root: the one place that builds concrete clients, adapters and services.

``Gateway`` owns every resource of one process (no module-level state); the ASGI ``App`` opens them
in the lifespan and closes them on shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, Any

import aiohttp
from sqlalchemy.ext.asyncio import AsyncEngine

from .admin import Admin
from .analytics import Analytics
from .config import GatewayConfig, ModelConfig, load_config
from .errors import GatewayError, MethodNotAllowed, NotFound
from .http.asgi import Receive, Request, Scope, Send, send_error
from .http.edge import Edge
from .http.errors import internal_error
from .http.protocol import EdgeLimits
from .http.routes import OWN_REQUEST_ID, PREFIX_ROUTES, ROUTES, methods_for
from .http.shedding import LoadShedder
from .identity import KeyAuthenticator, LocalBus, MasterKeyAuthenticator, RedisBus
from .metering.audit import AuditEntry
from .metering.recorder import AuditSink, MeteringSink, UsageRecorder
from .metering.tokens import TokenCounter
from .metering.usage_analytics import UsageAnalytics
from .metering.usage_store import UsageStore
from .observability import Observability
from .observability.logs import install_log_scrubber
from .observability.loop_lag import LoopLagMonitor
from .policies.base import Policy, PolicyChain
from .policies.budgets import BudgetPolicy, Ledger, LocalLedger, RedisLedger
from .policies.dlp_policy import DlpEngines, DlpPolicy
from .policies.ratelimit import Limiter, LocalLimiter, RateLimitPolicy, RedisLimiter
from .providers.anthropic import AnthropicProvider
from .providers.base import Provider
from .providers.demo import DemoProvider
from .providers.gemini import GeminiProvider
from .providers.openai_compat import OpenAICompatProvider
from .providers.scrubbed import Scrubbed
from .resilience import CircuitBreaker
from .routing import Router
from .scrub import Scrubber
from .service import ChatService, OpenStream
from .settings import Settings
from .storage.db import create_engine
from .storage.identity import IdentityStore
from .storage.migrations import migrate

if TYPE_CHECKING:
    from .console.app import Console

log = logging.getLogger("sluicegate")
LAST_USED_FLUSH_SECONDS = 5.0
# The cyclic collector runs when net allocations pass the first number. CPython's 700 is crossed all the time by
# requests in flight (64 of them hold thousands of objects), so it ran ~3,000 times in 30 s of load, promoting
# live request objects into older generations that then had to be walked again: 3-4 % of the gateway's CPU
# under non-streaming load, 9 % (with 140 ms full-collection pauses) while 5,000 streams opened. Requests make
# almost no reference cycles, so at 10,000 it runs ~15 times in the same 30 s; the garbage it may hold
# meanwhile is bounded by those 10,000 objects. Measured with benchmarks/bench_features.py and bench_streams.py
# (docs/benchmarks.md).
GC_THRESHOLDS = (10_000, 10, 10)


class Gateway:
    """Everything one process needs to answer requests; built in the lifespan, closed on shutdown."""

    def __init__(self, settings: Settings, config: GatewayConfig) -> None:
        self.settings = settings
        self.config = config
        self.started_at = int(time.time())
        self.tokens = TokenCounter()
        self.master = MasterKeyAuthenticator(settings.master_key)
        # Every provider key, the master key and upstream addresses: kept out of responses and logs.
        self.scrubber = Scrubber.from_config(config, settings)
        self._unscrub_logs: Callable[[], None] | None = None
        self.session: aiohttp.ClientSession | None = None
        self.providers: dict[str, Provider] = {}
        self.engine: AsyncEngine | None = None
        self.redis: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self.streams: set[OpenStream] = set()  # open streams, for the graceful shutdown
        self.observability: Observability | None = None  # built in start(): the CLI needs none
        self.recorder: UsageRecorder | None = None
        self.dlp = DlpEngines(config.dlp)
        self.shedder = LoadShedder(config.server.max_concurrent_requests, config.server.max_concurrent_per_key)
        self.usage: UsageStore
        self.draining = False
        self.drain_expired = False
        self.router: Router
        self.service: ChatService
        self.authenticator: KeyAuthenticator
        self.bus: LocalBus
        self.admin: Admin
        self.analytics: Analytics
        self.console: Console | None = None  # the web console, built on its first request (console/__init__.py)
        self.identity: IdentityStore

    async def open_store(self) -> None:
        """Store, migrations, identity cache and bus: shared by ``serve`` and the CLI."""
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
            self.bus = RedisBus(self.redis, self.authenticator)
        else:
            self.bus = LocalBus(self.authenticator)
        self.usage = UsageStore(self.engine)
        self.admin = Admin(self.identity, self.bus, AuditSink(self._write_audit), self.usage)
        prompts = self.config.metering.audit_prompts
        self.analytics = Analytics(UsageAnalytics(self.engine), self.admin, prompts_logged=prompts)

    async def _write_audit(self, entry: AuditEntry) -> None:
        """Admin actions from a process without a recorder (the CLI) go straight to the store."""
        await self.usage.write([], [entry])

    async def close_store(self) -> None:
        await self.bus.aclose()
        if self.redis is not None:
            await self.redis.aclose()
        await self.usage.close()
        if self.engine is not None:
            await self.engine.dispose()

    async def start(self) -> None:
        await self.open_store()
        if isinstance(self.bus, RedisBus):
            self.bus.start()
        loop = asyncio.get_running_loop()
        self.recorder = UsageRecorder(
            self.usage,
            max_pending=self.config.metering.max_pending,
            audit_requests=self.config.metering.audit_requests,
        )
        self.recorder.start()
        self.admin.set_audit(AuditSink(self.recorder.audit))
        self._tasks.append(loop.create_task(self._flush_last_used()))
        self._tasks.append(loop.create_task(self._rollups()))
        self._tasks.append(loop.create_task(self.analytics.keep_rolling(self.config)))
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30, ttl_dns_cache=300)
        self.session = aiohttp.ClientSession(connector=connector, auto_decompress=True, raise_for_status=False)
        self._unscrub_logs = install_log_scrubber(self.scrubber.text)
        adapters: dict[str, Provider] = {
            "openai": OpenAICompatProvider(self.session),
            "anthropic": AnthropicProvider(self.session),
            "gemini": GeminiProvider(self.session),
            "demo": DemoProvider(self.tokens),
        }
        self.providers = {name: Scrubbed(adapter, self.scrubber) for name, adapter in adapters.items()}
        missing = {d.provider for m in self.config.models for d in m.deployments} - self.providers.keys()
        if missing:
            raise RuntimeError(f"providers not available in this build: {sorted(missing)}")
        self.router = Router(self.config, self.providers)
        self.breaker = CircuitBreaker(self.config.routing.circuit)
        if isinstance(self.bus, RedisBus):
            self.breaker.add_listener(self.bus.circuit_changed)
            self.bus.breaker = self.breaker
        self.observability = Observability(self.config, self.settings)
        if self.observability.metrics is not None:
            self.breaker.add_listener(self.observability.metrics.circuit_changed, remote=True)
            self.usage.tally.listener = self.observability.metrics.store_refused_record
        self.service = ChatService(self.config, self.router, self.tokens, PolicyChain(self.policies()), self.breaker)
        self._install_drain_signal()
        # Before serving: tiktoken builds the vocabulary holding the GIL for 0.2-0.5 s, even in a thread, which
        # at first use would stall every stream. Counting is needed by limits, budgets and every partial stream.
        await asyncio.to_thread(self.tokens.warm)
        if self.observability.metrics is not None:  # from here on, a stall is one a request would feel
            self._tasks.append(loop.create_task(LoopLagMonitor(self.observability.metrics.loop_lag_tick).run()))
        # Long-lived objects built at start never become garbage: keep the collector off them.
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)

    def policies(self) -> list[Policy]:
        """The policy chain, in order: limits and budgets refuse early, DLP rewrites, sinks record last."""
        limiter: Limiter
        ledger: Ledger
        if self.redis is not None:
            limiter, ledger = RedisLimiter(self.redis), RedisLedger(self.redis, self.usage.spent_since)
        else:
            limiter, ledger = LocalLimiter(), LocalLedger(self.usage.spent_since)
        fail_open = self.config.limits.on_redis_error == "open"
        metering = self.config.metering
        prompts = metering.audit_prompt_max_chars if metering.audit_prompts else None
        assert self.recorder is not None, "policies are built after the recorder starts"
        assert self.observability is not None, "policies are built after observability"
        return [
            # Sinks come first: their before-hooks never refuse, so they are in every request's policies_run
            # and see refusals by the policies below; after-hooks run in reverse, so they still record last
            # (the usage record after the budget is settled, metrics and logs after the record is durable).
            *self.observability.sinks,
            *([MeteringSink(self.recorder, audit_prompts=prompts)] if metering.enabled else []),
            RateLimitPolicy(limiter, self.tokens, fail_open=fail_open),
            DlpPolicy(self.dlp),
            BudgetPolicy(ledger, self.tokens, time.time, self._budget_hold_ttl),
        ]

    def _budget_hold_ttl(self, model: ModelConfig) -> float:
        return self.config.request_deadline(model) + self.config.limits.budget_hold_grace

    async def _rollups(self) -> None:
        """Roll complete days into daily totals and prune raw rows past retention (idempotent on every replica)."""
        while True:
            try:
                await self.usage.rollup()
                await self.usage.prune(self.config.metering.retention_days)
            except Exception as exc:  # another replica may have rolled the same day first
                log.info("usage rollup skipped: %s", exc)
            await asyncio.sleep(self.config.metering.rollup_interval)

    def _install_drain_signal(self) -> None:
        """On SIGTERM, give open streams ``drain_timeout`` seconds, then end them with a stream_error frame.

        uvicorn stops accepting and waits for in-flight requests on its own; we chain its handler.
        """
        loop = asyncio.get_running_loop()
        try:
            previous = signal.getsignal(signal.SIGTERM)
        except ValueError:
            return

        def on_term(signum: int, frame: FrameType | None) -> None:
            loop.call_soon_threadsafe(self.begin_drain)
            if callable(previous):
                previous(signum, frame)

        try:
            signal.signal(signal.SIGTERM, on_term)
        except ValueError:  # not the main thread (embedded use): the host handles signals
            return

    def begin_drain(self) -> None:
        if self.draining:
            return
        self.draining = True
        log.info("draining %d open stream(s) for up to %.0f s", len(self.streams), self.config.server.drain_timeout)
        asyncio.get_running_loop().call_later(self.config.server.drain_timeout, self._abort_streams)

    def _abort_streams(self) -> None:
        self.drain_expired = True  # streams that open from now on are ended at once (see http/openai_api.py)
        for stream in list(self.streams):
            stream.abort("gateway shutting down")

    async def _flush_last_used(self) -> None:
        """Last-use times are written in batches, never on the request path."""
        while True:
            await asyncio.sleep(LAST_USED_FLUSH_SECONDS)
            try:
                await self.identity.touch_keys(self.authenticator.take_last_used())
            except Exception as exc:
                log.warning("could not record key last-use times: %s", exc)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await self.identity.touch_keys(self.authenticator.take_last_used())
        if self.recorder is not None:
            await self.recorder.close()
        await self.close_store()
        for provider in self.providers.values():
            await provider.aclose()
        if self.session is not None:
            await self.session.close()
        if self.observability is not None:
            self.observability.close()
        if self._unscrub_logs is not None:
            self._unscrub_logs()
        self.tokens.close()

    async def readiness_problems(self) -> list[str]:
        problems = [] if self.session is not None and not self.session.closed else ["upstream client not started"]
        try:
            await self.identity.ping()
        except Exception:
            problems.append("store unreachable")
        return problems


class App:
    """The ASGI application: lifespan, then route lookup; errors become OpenAI envelopes here."""

    def __init__(self, settings: Settings, config: GatewayConfig) -> None:
        self.gateway = Gateway(settings, config)
        server = config.server
        # Read once per connection by the HTTP protocol (http/protocol.py), which sees only the app.
        self.edge_limits = EdgeLimits(
            server.header_timeout, server.body_timeout, server.max_header_bytes, server.max_headers
        )
        self.edge = Edge(server)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, send)
        handler = ROUTES.get((scope["method"], scope["path"]))
        ids: dict[str, str] | None = None
        try:
            if handler not in OWN_REQUEST_ID or self.edge.cors is not None:
                ids = {}
                send = request.send = self.edge.decorated(request, handler not in OWN_REQUEST_ID, ids)
            preflight = handler is None and self.edge.is_preflight(request)  # also on the admin API's paths
            if handler is None and not preflight:
                handler = next((h for prefix, h in PREFIX_ROUTES if scope["path"].startswith(prefix)), None)
            if handler is None:
                methods = methods_for(scope["path"])
                if methods and preflight:
                    await self.edge.preflight(request, methods)
                    return
                if methods:
                    raise MethodNotAllowed(
                        f"Method {scope['method']} is not allowed on {scope['path']}",
                        headers={"allow": self.edge.allow(methods)},
                    )
                raise NotFound(f"Unknown path {scope['path']}")
            await handler(self.gateway, request)
        except GatewayError as exc:
            await send_error(send, exc, ids)
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            await send_error(send, internal_error())

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.gateway.start()
                except Exception as exc:
                    log.exception("start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.gateway.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return


def create_app(settings: Settings | None = None, config: GatewayConfig | None = None) -> App:
    settings = settings or Settings.from_env()
    config = config or load_config(settings.config_path)
    return App(settings, config)


def app_from_env() -> Any:
    """The uvicorn factory (``--workers`` needs an import string): settings from the environment."""
    return create_app()
