"""Observability: Prometheus metrics, request logs and OpenTelemetry traces (docs/observability.md).

All three read the ``RequestRecord`` every request ends with, through sinks in the policy chain, so the
request path carries no observability code beyond the open-streams gauge. ``Observability`` builds the
sinks the config asks for; OpenTelemetry is imported only when tracing is configured.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..records import RequestRecord
from .logs import RequestLogSink
from .metrics import Metrics, MetricsSink
from .sink import RecordSink

if TYPE_CHECKING:
    from ..config import GatewayConfig
    from ..errors import GatewayError
    from ..hooks import RequestContext
    from ..settings import Settings
    from ..types import ChatRequest, Principal
    from .tracing import TraceSink

__all__ = ["Metrics", "MetricsSink", "Observability", "RecordSink", "RequestLogSink"]

log = logging.getLogger("sluicegate.observability")


class _FanOut(RecordSink):
    """The enabled sinks as one policy: one hook call per request in the chain instead of one per sink."""

    name = "observability"

    def __init__(self, parts: list[RecordSink], metrics: Metrics | None) -> None:
        self.parts = parts
        self._metrics = metrics

    async def finished(self, ctx: RequestContext, record: RequestRecord) -> None:
        self.observe(record)
        if self._metrics is not None:
            for event in ctx.dlp_events:  # what DLP did lives on the context, not in the record
                self._metrics.dlp_action(event.direction, event.action, event.detector, event.count)

    def observe(self, record: RequestRecord) -> None:
        for part in self.parts:
            try:
                part.observe(record)
            except Exception:  # as in the policy chain: the answer is decided, one sink must not stop the others
                log.exception("%s failed on request %s", part.name, record.request_id)


class Observability:
    """The sinks of one process; ``sinks`` is what goes into the hook chain (empty when all are off)."""

    def __init__(self, config: GatewayConfig, settings: Settings, systems: Mapping[str, str]) -> None:
        """``systems``: each provider's ``gen_ai.system`` name for traces (``providers.registry``)."""
        obs = config.observability
        self.metrics: Metrics | None = None
        parts: list[RecordSink] = []
        self.tracing: TraceSink | None = None
        if obs.metrics:
            self.metrics = Metrics(config, multiprocess_dir=settings.prometheus_multiproc_dir)
            parts.append(MetricsSink(self.metrics))
        if obs.request_log:
            parts.append(RequestLogSink())
        endpoint = settings.otel_endpoint or obs.otlp_endpoint
        if endpoint:
            from .tracing import TraceSink

            self.tracing = TraceSink.otlp(config, endpoint, obs.service_name, systems)
            parts.append(self.tracing)
        self._fan_out = _FanOut(parts, self.metrics)
        self.sinks: list[RecordSink] = [self._fan_out] if parts else []

    def refused_at_edge(
        self,
        request_id: str,
        principal: Principal | None,
        chat: ChatRequest | None,
        exc: GatewayError,
        started_at: float,
        api: str = "chat",
    ) -> None:
        """A request refused before the policy chain (bad key, body or model): still counted and logged."""
        if not self.sinks:
            return
        record = RequestRecord(
            request_id=request_id,
            key_id=principal.key_id if principal else "",
            key_prefix=principal.key_prefix if principal else "",
            group=principal.group if principal else None,
            requested_model=chat.model if chat else "",
            model=None,
            deployment=None,
            stream=chat.stream if chat else False,
            started_at=started_at,
            status=exc.status,
            outcome="rejected",
            error_code=exc.code,
            latency_ms=(time.time() - started_at) * 1000,
            api=api,
        )
        self._fan_out.observe(record)

    def close(self) -> None:
        if self.tracing is not None:
            self.tracing.close()
        if self.metrics is not None:
            self.metrics.close()
