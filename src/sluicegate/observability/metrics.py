"""Prometheus metrics: one ``Metrics`` object per process owns its registry and every metric in it.

Nothing is registered in prometheus_client's global registry: two gateways in one process (tests) keep
separate counts. With ``--workers N`` the CLI sets ``PROMETHEUS_MULTIPROC_DIR`` before the workers
start; prometheus_client then keeps the values in per-process files and ``render`` merges them, so a
scrape that lands on any worker shows the totals of all of them.

Label values are bounded by construction: models and deployments come from the config file, groups are
admin-defined, error codes from the gateway's own error tree plus at most ``MAX_EXTRA_CODES`` codes
passed on from upstreams. Key ids, user strings and request ids are never labels.

The hot path is ``MetricsSink.after``: labelled children are cached in plain dicts (``labels()`` costs
about three times an ``inc``), so a request costs a handful of lock-protected float additions.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .. import errors
from ..config import GatewayConfig
from ..routing.router import deployment_key
from .sink import RecordSink

if TYPE_CHECKING:
    from ..records import RequestRecord

CONTENT_TYPE = CONTENT_TYPE_LATEST

# LLM requests run from tens of milliseconds (a cached short answer) to minutes (long generations).
LATENCY_BUCKETS = (
    0.05,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    1.5,
    2.0,
    3.0,
    5.0,
    7.5,
    10.0,
    15.0,
    20.0,
    30.0,
    45.0,
    60.0,
    90.0,
    120.0,
)
TTFT_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 20.0, 30.0, 60.0, 120.0)
# The gateway's own share is sub-millisecond when healthy; the top buckets catch retry waits and stalls.
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# A healthy loop runs its timer within a millisecond. The gateway keeps every stall under 50 ms: a tick at most
# 0.04 s late (the timer's 10 ms interval on top) shows that it did.
LOOP_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.04, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

OTHER = "_other"  # a value outside the bounded set (an unconfigured model, an unknown upstream error code)
MAX_EXTRA_CODES = 32
# Codes that are not GatewayError classes but appear in records.
_RECORD_CODES = ("stream_error", "client_disconnected", "circuit_open", "context_length_exceeded")
_REJECTION_REASONS = {"rate_limit_exceeded": "rate_limit", "budget_exceeded": "budget", "dlp_blocked": "dlp"}
_ANSWERED = frozenset(("completed", "interrupted"))
TOKEN_TYPES = ("prompt", "completion", "cached", "reasoning")


def _error_codes() -> set[str]:
    """Every code of the error tree, found by walking it (new error classes are known without a list)."""
    codes: set[str] = set(_RECORD_CODES)
    pending: list[type[errors.GatewayError]] = [errors.GatewayError]
    while pending:
        cls = pending.pop()
        codes.add(cls.code)
        pending.extend(cls.__subclasses__())
    return codes


class Metrics:
    """Every metric of one gateway process; ``render`` is the ``/metrics`` body."""

    def __init__(self, config: GatewayConfig, *, multiprocess_dir: str | None = None) -> None:
        self._multiprocess_dir = multiprocess_dir
        self.registry = CollectorRegistry(auto_describe=True)
        self._models = frozenset(m.id for m in config.models)
        self._codes = _error_codes()
        self._extra_codes: set[str] = set()
        # circuit key -> (model, deployment) labels, for the breaker's listener
        self._circuits = {
            deployment_key(m, i): (m.id, d.label) for m in config.models for i, d in enumerate(m.deployments)
        }
        r = self.registry
        self.requests = Counter(
            "sluicegate_requests",
            "Requests by the model and deployment that answered, the HTTP status, outcome and error code, and the "
            "inbound API (chat, messages, responses, embeddings).",
            ["model", "deployment", "status", "outcome", "error_code", "api"],
            registry=r,
        )
        self.duration = Histogram(
            "sluicegate_request_duration_seconds",
            "Total time of answered requests (completed or interrupted), to the record of the last byte.",
            ["model", "deployment", "stream"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "sluicegate_time_to_first_token_seconds",
            "Streams: from the request's arrival to the first chunk from the upstream.",
            ["model", "deployment"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.overhead = Histogram(
            "sluicegate_gateway_overhead_seconds",
            "Time the gateway added: request time (to the answer, or the first token for streams) minus the "
            "time spent in upstream attempts.",
            ["model", "stream"],
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "sluicegate_tokens", "Tokens by model, group and type.", ["model", "group", "type"], registry=r
        )
        self.credits = Counter(
            "sluicegate_credits", "Credits spent, by model and group.", ["model", "group"], registry=r
        )
        self.attempts = Counter(
            "sluicegate_upstream_attempts",
            "Upstream attempts by deployment and outcome "
            "(ok, an error code; circuit_open or model_access_denied: skipped, not sent).",
            ["model", "deployment", "outcome"],
            registry=r,
        )
        self.retries = Counter(
            "sluicegate_upstream_retries",
            "Attempts after a request's first one, by the deployment they went to.",
            ["model", "deployment"],
            registry=r,
        )
        self.fallbacks = Counter(
            "sluicegate_fallbacks",
            "Requests answered by another model than the one asked for.",
            ["requested_model", "model"],
            registry=r,
        )
        self.rejections = Counter(
            "sluicegate_rejections",
            "Requests refused by a policy: rate_limit, budget or dlp.",
            ["reason", "model", "group"],
            registry=r,
        )
        self.dlp_actions = Counter(
            "sluicegate_dlp_actions",
            "DLP findings acted on, by direction (request/response), action and detector.",
            ["direction", "action", "detector"],
            registry=r,
        )
        self.store_refused = Counter(
            "sluicegate_store_refused_records",
            "Usage rows and audit entries the store refused as built: result salvaged (written in their "
            "last-resort form) or lost (not written at all).",
            ["result"],
            registry=r,
        )
        # A dead worker's open streams are gone with it: count only live processes.
        self.open_streams = Gauge(
            "sluicegate_open_streams", "Streams being relayed now.", registry=r, multiprocess_mode="livesum"
        )
        self.circuit_open = Gauge(
            "sluicegate_circuit_open",
            "1 while the deployment's circuit breaker is open (or half-open), else 0.",
            ["model", "deployment"],
            registry=r,
            multiprocess_mode="livemax",
        )
        for model, deployment in self._circuits.values():
            self.circuit_open.labels(model, deployment).set(0)
        self.loop_lag = Histogram(
            "sluicegate_event_loop_lag_seconds",
            "How late the event loop ran a 10 ms timer, every tick: the time other work held it "
            "(a stall of S seconds shows as S - 0.01 to S).",
            buckets=LOOP_LAG_BUCKETS,
            registry=r,
        )
        self.loop_lag_max = Gauge(
            "sluicegate_event_loop_lag_max_seconds",
            "The largest event-loop lag of the last 5 to 10 seconds (with several workers: the largest of the "
            "live ones).",
            registry=r,
            multiprocess_mode="livemax",
        )
        self._lag_max = 0.0
        self._children: dict[tuple[Any, ...], Any] = {}

    # -- bounded labels ----------------------------------------------------------------------------

    def model_label(self, model: str | None) -> str:
        if not model:
            return ""
        return model if model in self._models else OTHER

    def code_label(self, code: str | None) -> str:
        if code is None:
            return ""
        if code in self._codes or code in self._extra_codes:
            return code
        # An upstream's own code, passed on: keep the first few (they are useful: context_length_exceeded,
        # insufficient_quota), then stop, so a misbehaving upstream cannot grow the series without bound.
        if len(self._extra_codes) < MAX_EXTRA_CODES and len(code) <= 64:
            self._extra_codes.add(code)
            return code
        return OTHER

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    # -- updates -----------------------------------------------------------------------------------

    def observe(self, record: RequestRecord) -> None:
        """Everything one finished request contributes."""
        child = self._child
        model = self.model_label(record.model or record.requested_model)
        deployment = record.deployment or ""
        outcome = record.outcome
        code = self.code_label(record.error_code)
        child(self.requests, model, deployment, str(record.status), outcome, code, record.api).inc()
        stream = "true" if record.stream else "false"
        if outcome in _ANSWERED:
            child(self.duration, model, deployment, stream).observe(record.latency_ms / 1000)
        if record.stream and record.ttft_ms is not None:
            child(self.ttft, model, deployment).observe(record.ttft_ms / 1000)
        overhead = gateway_overhead_ms(record)
        if overhead is not None:
            child(self.overhead, model, stream).observe(overhead / 1000)
        usage = record.usage
        if usage is not None and record.billable:
            group = record.group or ""
            child(self.tokens, model, group, "prompt").inc(usage.prompt_tokens)
            child(self.tokens, model, group, "completion").inc(usage.completion_tokens)
            if usage.cached_tokens:
                child(self.tokens, model, group, "cached").inc(usage.cached_tokens)
            if usage.reasoning_tokens:
                child(self.tokens, model, group, "reasoning").inc(usage.reasoning_tokens)
            if record.cost_micro:
                child(self.credits, model, group).inc(record.cost_micro / 1e6)
        if record.attempts:
            self._observe_attempts(record)
        if outcome == "rejected":
            reason = _REJECTION_REASONS.get(record.error_code or "")
            if reason is not None:
                child(self.rejections, reason, model, record.group or "").inc()

    def _observe_attempts(self, record: RequestRecord) -> None:
        child = self._child
        tried = 0
        for attempt in record.attempts:
            model = self.model_label(attempt.model)
            outcome = "ok" if attempt.ok else self.code_label(attempt.error_code)
            child(self.attempts, model, attempt.deployment, outcome).inc()
            if attempt.skipped:
                continue  # not tried (open circuit, or a fallback the key may not use): not a retry
            tried += 1
            if tried > 1:
                child(self.retries, model, attempt.deployment).inc()
        if record.model is not None and record.model != record.requested_model:
            child(self.fallbacks, self.model_label(record.requested_model), self.model_label(record.model)).inc()

    def dlp_action(self, direction: str, action: str, detector: str, count: int = 1) -> None:
        """Called by the DLP policy for findings it acted on (labels: its own bounded names)."""
        self._child(self.dlp_actions, direction, action, detector).inc(count)

    def store_refused_record(self, result: str, count: int) -> None:
        """A ``metering.isolation.Tally`` listener: ``result`` is ``salvaged`` or ``lost``."""
        self._child(self.store_refused, result).inc(count)

    def circuit_changed(self, key: str, state: str) -> None:
        """A ``CircuitBreaker`` listener."""
        labels = self._circuits.get(key)
        if labels is not None:
            self._child(self.circuit_open, *labels).set(1 if state == "open" else 0)

    def loop_lag_tick(self, lag: float, recent_max: float) -> None:
        """A ``LoopLagMonitor`` report."""
        self.loop_lag.observe(lag)
        if recent_max != self._lag_max:
            self._lag_max = recent_max
            self.loop_lag_max.set(recent_max)

    def stream_opened(self) -> None:
        self.open_streams.inc()

    def stream_closed(self) -> None:
        self.open_streams.dec()

    # -- exposition --------------------------------------------------------------------------------

    def render(self) -> bytes:
        if self._multiprocess_dir is None:
            return generate_latest(self.registry)
        # Imported here: only multi-worker servers need it. A fresh registry per scrape is the documented
        # way, the collector reads every worker's files at collect time.
        from prometheus_client import multiprocess

        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged, path=self._multiprocess_dir)  # type: ignore[no-untyped-call]
        return generate_latest(merged)

    def close(self) -> None:
        """Drop this worker's live gauges from the shared directory (its counters stay in the totals)."""
        if self._multiprocess_dir is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid(), self._multiprocess_dir)  # type: ignore[no-untyped-call]


def gateway_overhead_ms(record: RequestRecord) -> float | None:
    """The time the gateway added to an answered request, in milliseconds, or None when not defined.

    Non-streaming: the request's latency minus the time spent inside upstream attempts. Streaming: the
    time to first token minus the time spent inside upstream attempts (an attempt of a stream ends at its
    first chunk); what follows the first token is relayed as it arrives and is the upstream's pace.
    Backoff waits between retries count as gateway time: the gateway chose to wait.
    """
    if record.outcome not in _ANSWERED or not record.attempts:
        return None
    upstream = 0.0
    for attempt in record.attempts:
        upstream += attempt.latency_ms
    total = record.ttft_ms if record.stream else record.latency_ms
    if total is None:
        return None
    return max(0.0, total - upstream)


class MetricsSink(RecordSink):
    """The policy that feeds ``Metrics`` from every request's record."""

    name = "metrics"

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def observe(self, record: RequestRecord) -> None:
        self.metrics.observe(record)
