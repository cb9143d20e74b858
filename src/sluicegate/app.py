"""Composition root: the one place that builds concrete clients, adapters, policies and services.

``Gateway`` owns every resource of one serving process (no module-level state): the ``Runtime`` (stores,
identity, bus) shared with the CLI, plus the recorder, the upstream session, the adapters, the router and
the service. The ASGI ``App`` opens it in the lifespan and closes it on shutdown; handlers receive only the
narrow ``http.deps.Services`` view of it. Nothing here changes process-wide state (GC tuning, signal
handlers): that is the serve command's business (``cli.serve``), so an embedding host keeps its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from .analytics import Analytics
from .asgi import Receive, Request, Scope, Send, send_error
from .config import GatewayConfig, ModelConfig, load_config
from .console import ConsoleDeps, ConsoleEntry
from .errors import GatewayError, MethodNotAllowed, NotFound
from .hooks import Policy, PolicyChain, Sink
from .http.deps import Services
from .http.edge import Edge
from .http.errors import internal_error
from .http.protocol import EdgeLimits
from .http.routes import OWN_REQUEST_ID, PREFIX_ROUTES, ROUTES, methods_for
from .http.shedding import LoadShedder
from .metering.recorder import AdminAuditWriter, MeteringSink, UsageRecorder
from .observability import Observability
from .observability.logs import install_log_scrubber
from .observability.loop_lag import LoopLagMonitor
from .policies.budgets import BudgetPolicy, Ledger, LocalLedger, RedisLedger
from .policies.dlp import DlpEngines, DlpPolicy
from .policies.ratelimit import Limiter, LocalLimiter, RateLimitPolicy, RedisLimiter
from .providers.base import Provider
from .providers.registry import PROVIDERS, Deps, ProviderRegistry
from .providers.scrubbed import Scrubbed
from .routing.circuit import CircuitBreaker, CircuitSharing
from .routing.router import Router
from .runtime import Runtime
from .scrub import Scrubber
from .service import ChatService, StreamRegistry
from .settings import Settings
from .storage.analytics import UsageAnalytics
from .tokens import TokenCounter

log = logging.getLogger("sluicegate")
LAST_USED_FLUSH_SECONDS = 5.0


class Gateway:
    """Everything one serving process needs to answer requests; built in the lifespan, closed on shutdown."""

    def __init__(self, settings: Settings, config: GatewayConfig, registry: ProviderRegistry = PROVIDERS) -> None:
        self.settings = settings
        self.config = config
        self.registry = registry
        self.runtime = Runtime(settings, config)
        self.started_at = int(time.time())
        self.tokens = TokenCounter()
        # Every provider key, the master key and upstream addresses: kept out of responses and logs.
        self.scrubber = Scrubber.from_config(config, settings)
        self._unscrub_logs: Callable[[], None] | None = None
        self.session: aiohttp.ClientSession | None = None
        self.providers: dict[str, Provider] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.streams = StreamRegistry(config.server.drain_timeout)
        self.observability: Observability | None = None
        self.recorder: UsageRecorder | None = None
        self.dlp = DlpEngines(config.dlp)
        self.shedder = LoadShedder(config.server.max_concurrent_requests, config.server.max_concurrent_per_key)
        self.service: ChatService
        self.services: Services
        self.analytics: Analytics

    async def start(self) -> None:
        runtime = self.runtime
        await runtime.open()
        runtime.bus.start()
        loop = asyncio.get_running_loop()
        self.recorder = UsageRecorder(
            runtime.usage,
            max_pending=self.config.metering.max_pending,
            audit_requests=self.config.metering.audit_requests,
        )
        self.recorder.start()
        runtime.audit_through(AdminAuditWriter(self.recorder.audit))
        prompts = self.config.metering.audit_prompts
        self.analytics = Analytics(UsageAnalytics(runtime.engine), runtime.admin, prompts_logged=prompts)
        self._tasks.append(loop.create_task(self._flush_last_used()))
        self._tasks.append(loop.create_task(self._rollups()))
        self._tasks.append(loop.create_task(self.analytics.keep_rolling(self.config)))
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30, ttl_dns_cache=300)
        self.session = aiohttp.ClientSession(connector=connector, auto_decompress=True, raise_for_status=False)
        in_use = {d.provider for m in self.config.models for d in m.deployments}
        missing = sorted(in_use - set(self.registry.names))
        if missing:
            raise RuntimeError(f"providers not available in this build: {missing}")
        self._unscrub_logs = install_log_scrubber(self.scrubber.text)
        adapters = self.registry.build(Deps(self.session, self.tokens), in_use)
        self.providers = {name: Scrubbed(adapter, self.scrubber) for name, adapter in adapters.items()}
        router = Router(self.config, self.providers, self.registry)
        breaker = CircuitBreaker(self.config.routing.circuit)
        if runtime.bus.shared:
            CircuitSharing(breaker, runtime.bus)
        self.observability = Observability(self.config, self.settings, self.registry.trace_names())
        if self.observability.metrics is not None:
            breaker.add_listener(self.observability.metrics.circuit_changed, remote=True)
            runtime.usage.tally.listener = self.observability.metrics.store_refused_record
        chain = PolicyChain(self.policies(), self.sinks())
        self.service = ChatService(self.config, router, self.tokens, chain, breaker)
        console = ConsoleDeps(
            config=self.config,
            engine=runtime.engine,
            redis=runtime.redis,
            master=runtime.master,
            master_set=self.settings.master_key is not None,
            admin=runtime.admin,
            analytics=self.analytics,
            usage=runtime.usage,
            breaker=breaker,
        )
        self.services = Services(
            server=self.config.server,
            metrics_auth=self.config.observability.metrics_auth,
            started_at=self.started_at,
            authenticator=runtime.authenticator,
            master=runtime.master,
            shedder=self.shedder,
            service=self.service,
            admin=runtime.admin,
            observability=self.observability,
            streams=self.streams,
            readiness=self.readiness_problems,
            analytics=self.analytics,
            console=ConsoleEntry(console),
        )
        # Before serving: tiktoken builds the vocabulary holding the GIL for 0.2-0.5 s, even in a thread, which
        # at first use would stall every stream. Counting is needed by limits, budgets and every partial stream.
        await asyncio.to_thread(self.tokens.warm)
        if self.observability.metrics is not None:  # from here on, a stall is one a request would feel
            self._tasks.append(loop.create_task(LoopLagMonitor(self.observability.metrics.loop_lag_tick).run()))

    def policies(self) -> list[Policy]:
        """The policies, in order: limits and budgets refuse early, DLP rewrites."""
        limiter: Limiter
        ledger: Ledger
        redis = self.runtime.redis
        spent = self.runtime.usage.spent_since
        if redis is not None:
            limiter, ledger = RedisLimiter(redis), RedisLedger(redis, spent)
        else:
            limiter, ledger = LocalLimiter(), LocalLedger(spent)
        fail_open = self.config.limits.on_redis_error == "open"
        return [
            RateLimitPolicy(limiter, self.tokens, fail_open=fail_open),
            DlpPolicy(self.dlp),
            BudgetPolicy(ledger, self.tokens, time.time, self._budget_hold_ttl),
        ]

    def _budget_hold_ttl(self, model: ModelConfig) -> float:
        return self.config.request_deadline(model) + self.config.limits.budget_hold_grace

    def sinks(self) -> list[Sink]:
        """What reads each finished record, in order: the usage record first (durable before the last byte),
        then metrics, logs and traces, which then see the record as stored."""
        metering = self.config.metering
        prompts = metering.audit_prompt_max_chars if metering.audit_prompts else None
        assert self.recorder is not None and self.observability is not None, "sinks are built after both"
        return [
            *([MeteringSink(self.recorder, audit_prompts=prompts)] if metering.enabled else []),
            *self.observability.sinks,
        ]

    async def _rollups(self) -> None:
        """Roll complete days into daily totals and prune raw rows past retention (idempotent on every replica)."""
        usage = self.runtime.usage
        while True:
            try:
                await usage.rollup()
                await usage.prune(self.config.metering.retention_days)
            except Exception as exc:  # another replica may have rolled the same day first
                log.info("usage rollup skipped: %s", exc)
            await asyncio.sleep(self.config.metering.rollup_interval)

    async def _flush_last_used(self) -> None:
        """Last-use times are written in batches, never on the request path."""
        runtime = self.runtime
        while True:
            await asyncio.sleep(LAST_USED_FLUSH_SECONDS)
            try:
                await runtime.identity.touch_keys(runtime.authenticator.take_last_used())
            except Exception as exc:
                log.warning("could not record key last-use times: %s", exc)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        runtime = self.runtime
        with contextlib.suppress(Exception):
            await runtime.identity.touch_keys(runtime.authenticator.take_last_used())
        if self.recorder is not None:
            await self.recorder.close()
        await runtime.close()
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
            await self.runtime.identity.ping()
        except Exception:
            problems.append("store unreachable")
        return problems


StartHook = Callable[[Gateway], None]


class App:
    """The ASGI application: lifespan, then route lookup; errors become OpenAI envelopes here.

    ``on_started`` runs once the gateway is up (the serve command tunes the process there).
    """

    def __init__(self, settings: Settings, config: GatewayConfig, on_started: StartHook | None = None) -> None:
        self.gateway = Gateway(settings, config)
        self._on_started = on_started
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
            await handler(self.gateway.services, request)
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
                    if self._on_started is not None:
                        self._on_started(self.gateway)
                except Exception as exc:
                    log.exception("start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.gateway.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return


def create_app(
    settings: Settings | None = None, config: GatewayConfig | None = None, on_started: StartHook | None = None
) -> App:
    settings = settings or Settings.from_env()
    config = config or load_config(settings.config_path, providers=PROVIDERS)
    return App(settings, config, on_started)


def app_from_env() -> Any:
    """An ASGI factory (``uvicorn --factory``): settings from the environment, no process tuning."""
    return create_app()
