"""OpenTelemetry traces: a request span with one child per upstream attempt, exported over OTLP/HTTP.

Spans are emitted after the fact from the finished ``RequestRecord``, with the explicit start and end
times it carries (the request's arrival, each attempt's start and end), rather than opened and closed
around the code that does the work. The service then needs no tracing calls at all, and tracing that is
off costs nothing: this module (and OpenTelemetry) is imported only when an endpoint is configured, and
no sink, tracer or span object exists otherwise.

Attributes follow the OpenTelemetry GenAI semantic conventions (``gen_ai.*``) where one applies, and
use the ``sluicegate.*`` namespace otherwise. Like the logs, spans never carry a key, a provider secret,
the ``user`` field or message text.

Not traced yet: storage writes (usage records, key last-use batches) and trace-context propagation
(an incoming ``traceparent`` as parent, and passing one upstream).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from ..config import Deployment, GatewayConfig
from .sink import RecordSink

if TYPE_CHECKING:
    from ..records import Attempt, RequestRecord

_FAILED = frozenset(("failed", "interrupted"))


def otlp_traces_url(endpoint: str) -> str:
    """Accept a collector's base URL (``http://collector:4318``) as well as the full traces URL."""
    parts = urlsplit(endpoint)
    return endpoint if parts.path.strip("/") else endpoint.rstrip("/") + "/v1/traces"


class TraceSink(RecordSink):
    """Turns each record into spans on its own ``TracerProvider`` (never the global one)."""

    name = "tracing"

    def __init__(
        self,
        config: GatewayConfig,
        processor: SpanProcessor,
        systems: Mapping[str, str],
        service_name: str = "sluicegate",
    ) -> None:
        # gen_ai.system / gen_ai.provider.name of each provider kind (the conventions' well-known names).
        self._systems = systems
        self.provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        self.provider.add_span_processor(processor)
        self._tracer = self.provider.get_tracer("sluicegate")
        self._deployments: dict[tuple[str, str], Deployment] = {
            (m.id, d.label): d for m in config.models for d in m.deployments
        }

    @classmethod
    def otlp(cls, config: GatewayConfig, endpoint: str, service_name: str, systems: Mapping[str, str]) -> TraceSink:
        # Imported here so the in-memory exporter of the tests needs no OTLP/protobuf stack.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        processor = BatchSpanProcessor(OTLPSpanExporter(endpoint=otlp_traces_url(endpoint)))
        return cls(config, processor, systems, service_name)

    @classmethod
    def with_exporter(
        cls, config: GatewayConfig, exporter: SpanExporter, systems: Mapping[str, str], service_name: str = "sluicegate"
    ) -> TraceSink:
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor

        return cls(config, SimpleSpanProcessor(exporter), systems, service_name)

    def observe(self, record: RequestRecord) -> None:
        start = _ns(record.started_at)
        attributes: dict[str, AttributeValue] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": record.requested_model,
            "http.response.status_code": record.status,
            "sluicegate.request_id": record.request_id,
            "sluicegate.outcome": record.outcome,
            "sluicegate.stream": record.stream,
            "sluicegate.attempts": len(record.attempts),
        }
        if record.key_prefix:
            attributes["sluicegate.key_prefix"] = record.key_prefix
        if record.group:
            attributes["sluicegate.group"] = record.group
        if record.model:
            attributes["gen_ai.response.model"] = record.model
        served = self._deployments.get((record.model or "", record.deployment or ""))
        if served is not None:
            attributes["gen_ai.system"] = attributes["gen_ai.provider.name"] = self._systems.get(
                served.provider, served.provider
            )
            attributes["sluicegate.deployment"] = served.label
        if record.usage is not None:
            attributes["gen_ai.usage.input_tokens"] = record.usage.prompt_tokens
            attributes["gen_ai.usage.output_tokens"] = record.usage.completion_tokens
            attributes["sluicegate.usage.estimated"] = record.usage.estimated
            if record.billable:
                attributes["sluicegate.cost"] = record.cost_micro / 1e6
        if record.ttft_ms is not None and record.stream:
            attributes["sluicegate.ttft_ms"] = record.ttft_ms
        if record.error_code:
            attributes["error.type"] = record.error_code
        root = self._tracer.start_span(
            f"chat {record.requested_model}".rstrip(), kind=SpanKind.SERVER, start_time=start, attributes=attributes
        )
        parent = trace.set_span_in_context(root)
        for attempt in record.attempts:
            self._attempt_span(parent, attempt, record)
        if record.stored is not None:
            begin, end = record.stored
            write = self._tracer.start_span(
                "sluicegate.storage.write usage",
                context=parent,
                kind=SpanKind.CLIENT,
                start_time=_ns(begin),
                attributes={"db.operation.name": "INSERT", "db.collection.name": "usage"},
            )
            write.end(end_time=_ns(end))
        if record.outcome in _FAILED or record.status >= 500:
            root.set_status(Status(StatusCode.ERROR, record.error_code))
        root.end(end_time=start + int(record.latency_ms * 1e6))

    def _attempt_span(self, parent: Context, attempt: Attempt, record: RequestRecord) -> None:
        deployment = self._deployments.get((attempt.model, attempt.deployment))
        upstream_model = deployment.model if deployment is not None and deployment.model else attempt.model
        attributes: dict[str, AttributeValue] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": upstream_model,
            "sluicegate.model": attempt.model,
            "sluicegate.deployment": attempt.deployment,
        }
        if deployment is not None:
            attributes["gen_ai.system"] = attributes["gen_ai.provider.name"] = self._systems.get(
                deployment.provider, deployment.provider
            )
            if deployment.api_base:
                url = urlsplit(deployment.api_base)
                if url.hostname:
                    attributes["server.address"] = url.hostname
                if url.port:
                    attributes["server.port"] = url.port
        if attempt.status is not None:
            attributes["http.response.status_code"] = attempt.status
        if attempt.ok:
            attributes["gen_ai.response.model"] = upstream_model
            if record.usage is not None and attempt is record.attempts[-1]:
                attributes["gen_ai.usage.input_tokens"] = record.usage.prompt_tokens
                attributes["gen_ai.usage.output_tokens"] = record.usage.completion_tokens
        elif attempt.error_code:
            attributes["error.type"] = attempt.error_code
        span = self._tracer.start_span(
            f"chat {upstream_model}",
            context=parent,
            kind=SpanKind.CLIENT,
            start_time=_ns(attempt.started_at),
            attributes=attributes,
        )
        if not attempt.ok:
            span.set_status(Status(StatusCode.ERROR, attempt.error_code))
        span.end(end_time=_ns(attempt.ended_at))

    def close(self) -> None:
        """Flush what is buffered and stop the export thread."""
        self.provider.shutdown()


def _ns(epoch_seconds: float) -> int:
    return int(epoch_seconds * 1e9)
