"""Metrics, log lines and spans computed from request records (the sinks' own logic, in process)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from sluicegate.config import CircuitConfig, GatewayConfig
from sluicegate.errors import RateLimited
from sluicegate.hooks import Policy, PolicyChain
from sluicegate.observability.logs import (
    FIELDS,
    JsonFormatter,
    RequestLogSink,
    TextFormatter,
    log_config,
    resolve_format,
)
from sluicegate.observability.loop_lag import LoopLagMonitor
from sluicegate.observability.metrics import OTHER, Metrics, MetricsSink, gateway_overhead_ms
from sluicegate.observability.tracing import TraceSink, otlp_traces_url
from sluicegate.providers.registry import PROVIDERS
from sluicegate.records import Attempt, RequestRecord
from sluicegate.routing.circuit import CircuitBreaker
from sluicegate.routing.router import deployment_key
from sluicegate.types import Usage

CONFIG = GatewayConfig.model_validate(
    {
        "models": [
            {
                "id": "gpt-x",
                "deployments": [
                    {"provider": "openai", "model": "up-a", "api_base": "http://a.example:8000/v1", "name": "a"},
                    {"provider": "openai", "model": "up-b", "api_base": "http://b.example/v1", "name": "b"},
                ],
                "fallbacks": ["claude-y"],
                "price": {"input": 1.0, "output": 2.0},
            },
            {
                "id": "claude-y",
                "deployments": [{"provider": "anthropic", "model": "claude-up", "name": "c"}],
            },
        ]
    }
)
SECRET_KEY = "sk-sg-THIS-IS-THE-WHOLE-SECRET-KEY-0123456789"


def record(**kw: Any) -> RequestRecord:
    base: dict[str, Any] = {
        "request_id": "req_1",
        "key_id": "key-id-123",
        "key_prefix": SECRET_KEY[:14],
        "group": "eng",
        "requested_model": "gpt-x",
        "model": "gpt-x",
        "deployment": "a",
        "stream": False,
        "started_at": 1_700_000_000.0,
        "user": "alice@example.com",
        "status": 200,
        "outcome": "completed",
        "usage": Usage(prompt_tokens=11, completion_tokens=5, cached_tokens=3, reasoning_tokens=2),
        "cost_micro": 21,
        "latency_ms": 250.0,
        "ttft_ms": 240.0,
        "attempts": [Attempt("gpt-x", "a", True, latency_ms=200.0, started_at=1_700_000_000.01, ended_at=1.7e9 + 0.21)],
    }
    base.update(kw)
    return RequestRecord(**base)


def value(m: Metrics, name: str, **labels: str) -> float:
    v = m.registry.get_sample_value(name, labels)
    return 0.0 if v is None else v


def test_completed_request_counts_latency_overhead_tokens_and_credits() -> None:
    m = Metrics(CONFIG)
    m.observe(record())
    assert value(m, "sluicegate_requests_total", model="gpt-x", deployment="a", status="200", outcome="completed",
                 error_code="", api="chat") == 1  # fmt: skip
    assert value(m, "sluicegate_request_duration_seconds_count", model="gpt-x", deployment="a", stream="false") == 1
    assert value(m, "sluicegate_request_duration_seconds_sum", model="gpt-x", deployment="a", stream="false") == 0.25
    # Non-stream: no TTFT; overhead = 250 ms - 200 ms in attempts.
    assert value(m, "sluicegate_time_to_first_token_seconds_count", model="gpt-x", deployment="a") == 0
    assert value(m, "sluicegate_gateway_overhead_seconds_sum", model="gpt-x", stream="false") == pytest.approx(0.05)
    for kind, n in (("prompt", 11), ("completion", 5), ("cached", 3), ("reasoning", 2)):
        assert value(m, "sluicegate_tokens_total", model="gpt-x", group="eng", type=kind) == n
    assert value(m, "sluicegate_credits_total", model="gpt-x", group="eng") == pytest.approx(21e-6)
    assert value(m, "sluicegate_upstream_attempts_total", model="gpt-x", deployment="a", outcome="ok") == 1
    assert value(m, "sluicegate_upstream_retries_total", model="gpt-x", deployment="a") == 0


def test_stream_ttft_and_overhead_to_first_token() -> None:
    m = Metrics(CONFIG)
    m.observe(record(stream=True, latency_ms=3000.0, ttft_ms=230.0, outcome="interrupted", error_code="stream_error"))
    assert value(m, "sluicegate_time_to_first_token_seconds_sum", model="gpt-x", deployment="a") == pytest.approx(0.23)
    assert value(m, "sluicegate_gateway_overhead_seconds_sum", model="gpt-x", stream="true") == pytest.approx(0.03)
    assert value(m, "sluicegate_request_duration_seconds_count", model="gpt-x", deployment="a", stream="true") == 1
    assert value(m, "sluicegate_requests_total", model="gpt-x", deployment="a", status="200", outcome="interrupted",
                 error_code="stream_error", api="chat") == 1  # fmt: skip


def test_retries_fallbacks_and_skipped_circuits() -> None:
    m = Metrics(CONFIG)
    attempts = [
        Attempt("gpt-x", "a", False, "upstream_error", 500, 10.0),
        Attempt("gpt-x", "a", False, "upstream_timeout", 504, 1500.0),
        Attempt("gpt-x", "b", False, "circuit_open"),
        Attempt("claude-y", "d", False, "model_access_denied"),  # a fallback the key may not use: skipped
        Attempt("claude-y", "c", True, latency_ms=300.0),
    ]
    m.observe(record(model="claude-y", deployment="c", attempts=attempts, latency_ms=2100.0))
    assert value(m, "sluicegate_upstream_attempts_total", model="gpt-x", deployment="a", outcome="upstream_error") == 1
    assert (
        value(m, "sluicegate_upstream_attempts_total", model="gpt-x", deployment="a", outcome="upstream_timeout") == 1
    )
    assert value(m, "sluicegate_upstream_attempts_total", model="gpt-x", deployment="b", outcome="circuit_open") == 1
    assert value(m, "sluicegate_upstream_attempts_total", model="claude-y", deployment="c", outcome="ok") == 1
    assert value(m, "sluicegate_upstream_attempts_total", model="claude-y", deployment="d",
                 outcome="model_access_denied") == 1  # fmt: skip
    # Retries: every real attempt after the first; a skip (open circuit, access denied) is neither.
    assert value(m, "sluicegate_upstream_retries_total", model="gpt-x", deployment="a") == 1
    assert value(m, "sluicegate_upstream_retries_total", model="gpt-x", deployment="b") == 0
    assert value(m, "sluicegate_upstream_retries_total", model="claude-y", deployment="d") == 0
    assert value(m, "sluicegate_upstream_retries_total", model="claude-y", deployment="c") == 1
    assert value(m, "sluicegate_fallbacks_total", requested_model="gpt-x", model="claude-y") == 1
    # Backoff waits count as the gateway's: 2100 - (10 + 1500 + 0 + 300).
    assert value(m, "sluicegate_gateway_overhead_seconds_sum", model="claude-y", stream="false") == pytest.approx(0.29)


@pytest.mark.parametrize(
    ("code", "status", "reason"),
    [("rate_limit_exceeded", 429, "rate_limit"), ("budget_exceeded", 403, "budget"), ("dlp_blocked", 403, "dlp")],
)
def test_policy_rejections_by_reason(code: str, status: int, reason: str) -> None:
    m = Metrics(CONFIG)
    rejected = record(model=None, deployment=None, status=status, outcome="rejected", error_code=code, usage=None,
                      attempts=[], cost_micro=0)  # fmt: skip
    m.observe(rejected)
    assert value(m, "sluicegate_rejections_total", reason=reason, model="gpt-x", group="eng") == 1
    assert value(m, "sluicegate_requests_total", model="gpt-x", deployment="", status=str(status), outcome="rejected",
                 error_code=code, api="chat") == 1  # fmt: skip
    # An upstream's own 429 is a failure passed on, not a gateway rejection.
    m.observe(record(status=429, outcome="failed", error_code="rate_limit_exceeded", usage=None))
    assert value(m, "sluicegate_rejections_total", reason="rate_limit", model="gpt-x", group="eng") == (
        1 if reason == "rate_limit" else 0
    )


def test_labels_stay_bounded() -> None:
    m = Metrics(CONFIG)
    m.observe(record(requested_model="made-up-model", model=None, deployment=None, status=404, outcome="rejected",
                     error_code="model_not_found", usage=None, attempts=[]))  # fmt: skip
    assert value(m, "sluicegate_requests_total", model=OTHER, deployment="", status="404", outcome="rejected",
                 error_code="model_not_found", api="chat") == 1  # fmt: skip
    for i in range(100):  # a misbehaving upstream inventing codes
        m.observe(record(status=400, outcome="failed", error_code=f"weird_{i}", usage=None))
    codes = {s.labels["error_code"] for s in m.requests.collect()[0].samples if s.name.endswith("_total")}
    assert len(codes) <= 34 and OTHER in codes
    body = m.render().decode()
    for private in ("key-id-123", "alice@example.com", "req_1", SECRET_KEY[:14]):
        assert private not in body


def test_dlp_actions_and_open_streams() -> None:
    m = Metrics(CONFIG)
    m.dlp_action("request", "redact", "email", 2)
    m.dlp_action("response", "block", "credit_card")
    assert value(m, "sluicegate_dlp_actions_total", direction="request", action="redact", detector="email") == 2
    assert value(m, "sluicegate_dlp_actions_total", direction="response", action="block", detector="credit_card") == 1
    m.stream_opened()
    m.stream_opened()
    m.stream_closed()
    assert value(m, "sluicegate_open_streams") == 1


def test_circuit_gauge_listens_to_local_and_remote_changes_and_the_bus_to_local_only() -> None:
    m = Metrics(CONFIG)
    breaker = CircuitBreaker(CircuitConfig(failure_threshold=2))
    bus: list[tuple[str, str]] = []
    breaker.add_listener(lambda k, state: bus.append((k, state)))  # as the Redis bus registers
    breaker.add_listener(m.circuit_changed, remote=True)
    key = deployment_key(CONFIG.models[0], 1)
    assert value(m, "sluicegate_circuit_open", model="gpt-x", deployment="b") == 0
    breaker.failure(key)
    breaker.failure(key)
    assert value(m, "sluicegate_circuit_open", model="gpt-x", deployment="b") == 1
    breaker.success(key)
    assert value(m, "sluicegate_circuit_open", model="gpt-x", deployment="b") == 0
    breaker.apply_remote(key, "open")
    assert value(m, "sluicegate_circuit_open", model="gpt-x", deployment="b") == 1
    assert bus == [(key, "open"), (key, "closed")]  # never echoes a remote change back


async def test_sinks_see_refusals_by_policies() -> None:
    class Refuse(Policy):
        async def before(self, ctx: Any) -> None:
            raise RateLimited("slow down")

    class Ctx:
        request_id = "req_x"
        policies_run: list[Policy] = []

    m = Metrics(CONFIG)
    chain = PolicyChain([Refuse()], [MetricsSink(m)])
    ctx: Any = Ctx()
    with pytest.raises(RateLimited):
        await chain.before(ctx)
    rejected = record(model=None, deployment=None, status=429, outcome="rejected", error_code="rate_limit_exceeded",
                      usage=None, attempts=[])  # fmt: skip
    await chain.after(ctx, rejected)
    assert value(m, "sluicegate_rejections_total", reason="rate_limit", model="gpt-x", group="eng") == 1


def test_overhead_is_undefined_for_requests_never_answered() -> None:
    assert gateway_overhead_ms(record(outcome="failed", status=502)) is None
    assert gateway_overhead_ms(record(attempts=[])) is None
    assert gateway_overhead_ms(record(stream=True, ttft_ms=None)) is None


def _log_line(formatter: logging.Formatter, rec: RequestRecord) -> str:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    logger = logging.Logger("sluicegate.request.test")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    RequestLogSink(logger).observe(rec)
    return stream.getvalue()


def test_request_log_json_line_has_the_fields_and_no_private_data() -> None:
    attempts = [Attempt("gpt-x", "a", False, "upstream_error", 500, 12.5), Attempt("gpt-x", "b", True, latency_ms=90)]
    line = _log_line(JsonFormatter(), record(stream=True, attempts=attempts))
    assert line.count("\n") == 1
    entry = json.loads(line)
    assert entry["level"] == "info" and entry["logger"] == "sluicegate.request.test" and entry["msg"] == "request"
    assert entry["ts"].endswith("Z")
    expected = {
        "request_id": "req_1",
        "key_prefix": SECRET_KEY[:14],
        "group": "eng",
        "model": "gpt-x",
        "deployment": "a",
        "status": 200,
        "outcome": "completed",
        "error_code": None,
        "prompt_tokens": 11,
        "completion_tokens": 5,
        "cached_tokens": 3,
        "reasoning_tokens": 2,
        "cost": 21e-6,
        "latency_ms": 250.0,
        "ttft_ms": 240.0,
    }
    assert {k: entry[k] for k in expected} == expected
    assert [a["error_code"] for a in entry["attempts"]] == ["upstream_error", None]
    for private in (SECRET_KEY, "key-id-123", "alice@example.com"):
        assert private not in line


def test_text_format_is_one_readable_line() -> None:
    line = _log_line(TextFormatter(), record(error_code=None))
    assert line.count("\n") == 1
    assert " INFO  sluicegate.request.test request request_id=req_1 " in line
    assert "status=200 outcome=completed" in line and "attempts=1" in line and "error_code" not in line


def test_log_format_choice_and_config() -> None:
    assert resolve_format("auto", True) == "text" and resolve_format("auto", False) == "json"
    assert resolve_format("json", True) == "json"
    cfg = log_config("json", "info")
    assert cfg["formatters"]["sluicegate"]["()"].endswith("JsonFormatter")
    assert cfg["loggers"]["sluicegate"]["level"] == "INFO" and log_config("text", "trace")["root"]
    rec = logging.LogRecord("x", logging.ERROR, __file__, 1, "boom %s", ("now",), None)
    setattr(rec, FIELDS, {"a": 1})
    assert json.loads(JsonFormatter().format(rec))["msg"] == "boom now"


def test_span_tree_of_a_request_with_one_retry() -> None:
    exporter = InMemorySpanExporter()
    sink = TraceSink.with_exporter(CONFIG, exporter, PROVIDERS.trace_names())
    t0 = 1_700_000_000.0
    attempts = [
        Attempt("gpt-x", "a", False, "upstream_error", 500, 20.0, started_at=t0 + 0.001, ended_at=t0 + 0.021),
        Attempt("gpt-x", "a", True, None, None, 150.0, started_at=t0 + 0.2, ended_at=t0 + 0.35),
    ]
    sink.observe(record(stream=True, started_at=t0, latency_ms=900.0, ttft_ms=351.0, attempts=attempts))
    spans = exporter.get_finished_spans()
    root = next(s for s in spans if s.parent is None)
    children = sorted((s for s in spans if s.parent is not None), key=lambda s: s.start_time or 0)
    assert len(spans) == 3 and len(children) == 2
    assert root.name == "chat gpt-x" and root.kind == SpanKind.SERVER
    assert root.start_time == int(t0 * 1e9) and root.end_time == int(t0 * 1e9) + 900_000_000
    attrs = dict(root.attributes or {})
    assert attrs["gen_ai.operation.name"] == "chat" and attrs["gen_ai.system"] == "openai"
    assert attrs["gen_ai.request.model"] == "gpt-x" and attrs["gen_ai.response.model"] == "gpt-x"
    assert attrs["gen_ai.usage.input_tokens"] == 11 and attrs["gen_ai.usage.output_tokens"] == 5
    assert attrs["sluicegate.request_id"] == "req_1" and attrs["sluicegate.attempts"] == 2
    assert "alice@example.com" not in str(attrs) and "key-id-123" not in str(attrs)
    failed, ok = children
    for child in children:
        assert child.parent is not None and child.parent.span_id == root.context.span_id
        assert child.context.trace_id == root.context.trace_id and child.kind == SpanKind.CLIENT
        assert child.name == "chat up-a"
        assert dict(child.attributes or {})["server.address"] == "a.example"
    assert failed.status.status_code == StatusCode.ERROR
    assert dict(failed.attributes or {})["error.type"] == "upstream_error"
    assert failed.start_time == int((t0 + 0.001) * 1e9) and failed.end_time == int((t0 + 0.021) * 1e9)
    assert ok.status.status_code == StatusCode.UNSET
    assert dict(ok.attributes or {})["gen_ai.usage.output_tokens"] == 5
    sink.close()


def test_otlp_url() -> None:
    assert otlp_traces_url("http://collector:4318") == "http://collector:4318/v1/traces"
    assert otlp_traces_url("http://collector:4318/") == "http://collector:4318/v1/traces"
    assert otlp_traces_url("http://c/custom/traces") == "http://c/custom/traces"


def test_loop_lag_monitor_reports_a_stall_and_the_metrics_keep_it() -> None:
    m = Metrics(CONFIG)
    reports: list[tuple[float, float]] = []

    def report(lag: float, recent_max: float) -> None:
        reports.append((lag, recent_max))
        m.loop_lag_tick(lag, recent_max)

    async def run() -> None:
        task = asyncio.create_task(LoopLagMonitor(report, interval=0.005, window=60).run())
        while len(reports) < 3:
            await asyncio.sleep(0.005)
        time.sleep(0.2)  # a stall: this coroutine holds the loop, as a huge synchronous job would
        seen = len(reports)
        while len(reports) < seen + 3:
            await asyncio.sleep(0.005)
        task.cancel()

    asyncio.run(run())
    worst = max(lag for lag, _ in reports)
    assert worst >= 0.2 - 0.005  # the tick due during the stall ran late by (nearly) all of it
    assert reports[-1][1] == worst  # and the recent maximum keeps it
    assert value(m, "sluicegate_event_loop_lag_max_seconds") == worst
    assert value(m, "sluicegate_event_loop_lag_seconds_count") == len(reports)
    assert value(m, "sluicegate_event_loop_lag_seconds_bucket", le="0.1") < len(reports)
