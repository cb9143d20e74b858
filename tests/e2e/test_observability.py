"""Observability end to end: /metrics after scripted traffic, JSON request logs, request ids in error messages,
no secret in any output, OTLP traces of a retried request, and metrics summed over two workers."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import gateway_config
from tests.fakes.openai import FakeOpenAI
from tests.support.gateway import GatewayProcess, free_port

UPSTREAM_KEY = "sk-upstream-secret-77aa"
PROMPT = "confidential-prompt-text-5d1e"
MODEL = "gpt-test"
DEPLOYMENT = "openai/upstream-gpt"
RETRY = {"max_attempts_per_deployment": 2, "backoff_base": 0.01, "backoff_max": 0.05}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(gw: GatewayProcess) -> tuple[str, Samples]:
    r = httpx.get(gw.url + "/metrics", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return r.text, samples


def sample(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return sample(after, name, **labels) - sample(before, name, **labels)


def ask(
    gw: GatewayProcess, rid: str, scenario: str = "", *, stream: bool = False, key: str | None = None
) -> httpx.Response:
    body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": f"{PROMPT} {scenario}".strip()}]}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    headers = {"Authorization": f"Bearer {key or gw.key}", "x-request-id": rid}
    return httpx.post(gw.base_url + "/chat/completions", json=body, headers=headers, timeout=30)


def admin(gw: GatewayProcess, method: str, path: str, body: Any = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {gw.key}"}
    return httpx.request(method, gw.url + "/admin/v1" + path, json=body, headers=headers, timeout=10)


def json_lines(gw: GatewayProcess) -> list[dict[str, Any]]:
    lines = [line for line in gw.log().splitlines() if line.strip()]
    return [json.loads(line) for line in lines]  # every line of the log is JSON, the CLI's and uvicorn's too


def request_lines(gw: GatewayProcess) -> dict[str, dict[str, Any]]:
    return {e["request_id"]: e for e in json_lines(gw) if e["logger"] == "sluicegate.request"}


@pytest.fixture(scope="module")
def obs_gw(upstream: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    config = gateway_config(upstream.url)
    config["routing"] = {"retry": RETRY, "circuit": {"enabled": False}}
    with GatewayProcess(config, tmp_path_factory.mktemp("obs"), log_format="json") as gw:
        yield gw


@pytest.fixture(scope="module")
def traffic(obs_gw: GatewayProcess, upstream: FakeOpenAI) -> dict[str, Any]:
    """One scripted run: successes, an upstream error, a cut stream, a retry, a bad key and a rate limit."""
    gw = obs_gw
    upstream.reset()
    group = f"obs-{int(time.time() * 1000) % 10**8}"
    assert admin(gw, "POST", "/groups", {"name": group, "models": ["gpt-*"]}).status_code == 201
    created = admin(gw, "POST", "/keys", {"name": group + "-key", "group": group})
    assert created.status_code == 201
    api_key = created.json()["key"]
    assert admin(gw, "PUT", f"/groups/{group}/limits", {"rpm": 1}).status_code == 200
    _, before = scrape(gw)
    out: dict[str, Any] = {"group": group, "api_key": api_key, "before": before}
    out["ok1"] = ask(gw, "obs-ok-1")
    out["ok2"] = ask(gw, "obs-ok-2")
    out["stream"] = ask(gw, "obs-stream", stream=True)
    out["uperr"] = ask(gw, "obs-uperr", "scenario:status:500")
    out["cut"] = ask(gw, "obs-cut", "scenario:reset_after:3", stream=True)
    out["retry"] = ask(gw, "obs-retry", "scenario:fail_times:1")
    out["badkey"] = ask(gw, "obs-badkey", key="sk-wrong-key")
    out["limited1"] = ask(gw, "obs-limited-1", key=api_key)
    out["limited2"] = ask(gw, "obs-limited-2", key=api_key)
    out["text"], out["after"] = scrape(gw)
    return out


def test_metrics_after_scripted_traffic(traffic: dict[str, Any]) -> None:
    t, before, after = traffic, traffic["before"], traffic["after"]
    for name in ("ok1", "ok2", "stream", "cut", "retry", "limited1"):
        assert t[name].status_code == 200, t[name].text
    assert b"event: error" in t["cut"].content
    uperr, limited = t["uperr"], t["limited2"]
    assert uperr.status_code >= 500 and limited.status_code == 429
    up_code, up_status = uperr.json()["error"]["code"], str(uperr.status_code)

    def requests(status: str, outcome: str, code: str = "", model: str = MODEL, deployment: str = "") -> float:
        labels = {"model": model, "deployment": deployment, "status": status, "outcome": outcome, "error_code": code}
        labels["api"] = "chat"
        return delta(before, after, "sluicegate_requests_total", **labels)

    assert requests("200", "completed", deployment=DEPLOYMENT) == 5  # ok1, ok2, stream, retry, limited1
    assert requests("200", "interrupted", "stream_error", deployment=DEPLOYMENT) == 1
    assert requests(up_status, "failed", up_code) == 1
    assert requests("401", "rejected", "invalid_api_key", model="") == 1
    assert requests("429", "rejected", "rate_limit_exceeded") == 1
    group = t["group"]
    assert delta(before, after, "sluicegate_rejections_total", reason="rate_limit", model=MODEL, group=group) == 1

    def hist(name: str, **labels: str) -> float:
        return delta(before, after, name + "_count", **labels)

    duration = "sluicegate_request_duration_seconds"
    assert hist(duration, model=MODEL, deployment=DEPLOYMENT, stream="false") == 4
    assert hist(duration, model=MODEL, deployment=DEPLOYMENT, stream="true") == 2  # the cut stream was answered too
    assert hist("sluicegate_time_to_first_token_seconds", model=MODEL, deployment=DEPLOYMENT) == 2
    assert hist("sluicegate_gateway_overhead_seconds", model=MODEL, stream="false") == 4
    assert hist("sluicegate_gateway_overhead_seconds", model=MODEL, stream="true") == 2
    overhead_sum = delta(before, after, "sluicegate_gateway_overhead_seconds_sum", model=MODEL, stream="false")
    assert 0 < overhead_sum < 4 * 0.5  # sub-second per request, and measured (not zero)

    attempts = "sluicegate_upstream_attempts_total"
    assert delta(before, after, attempts, model=MODEL, deployment=DEPLOYMENT, outcome="ok") == 6
    # The 500 is retried once (2 attempts) and fail_times:1 fails once before its success.
    assert delta(before, after, attempts, model=MODEL, deployment=DEPLOYMENT, outcome=up_code) == 3
    assert delta(before, after, "sluicegate_upstream_retries_total", model=MODEL, deployment=DEPLOYMENT) == 2
    # The rate-limited key's group: one answered request, the fake's usage (11 prompt, 5 completion tokens).
    assert delta(before, after, "sluicegate_tokens_total", model=MODEL, group=group, type="prompt") == 11
    assert delta(before, after, "sluicegate_tokens_total", model=MODEL, group=group, type="completion") == 5
    assert sample(after, "sluicegate_open_streams") == 0
    assert sample(after, "sluicegate_circuit_open", model=MODEL, deployment=DEPLOYMENT) == 0


def test_one_json_log_line_per_request(traffic: dict[str, Any], obs_gw: GatewayProcess) -> None:
    lines = request_lines(obs_gw)
    ok = lines["obs-ok-1"]
    assert ok["level"] == "info" and ok["msg"] == "request" and ok["key_prefix"] == "master"
    assert (ok["model"], ok["deployment"], ok["status"], ok["outcome"]) == (MODEL, DEPLOYMENT, 200, "completed")
    assert (ok["prompt_tokens"], ok["completion_tokens"]) == (11, 5)
    assert ok["latency_ms"] > 0 and ok["ttft_ms"] is None and len(ok["attempts"]) == 1
    stream = lines["obs-stream"]
    assert stream["stream"] is True and 0 < stream["ttft_ms"] <= stream["latency_ms"]
    cut = lines["obs-cut"]
    assert (cut["status"], cut["outcome"], cut["error_code"]) == (200, "interrupted", "stream_error")
    retry = lines["obs-retry"]
    assert [a["ok"] for a in retry["attempts"]] == [False, True]
    assert lines["obs-badkey"]["status"] == 401 and lines["obs-badkey"]["key_prefix"] is None
    limited = lines["obs-limited-2"]
    assert (limited["status"], limited["error_code"], limited["group"]) == (
        429,
        "rate_limit_exceeded",
        traffic["group"],
    )
    assert limited["key_prefix"] == traffic["api_key"][:14]
    for rid in ("obs-ok-1", "obs-ok-2", "obs-stream", "obs-uperr", "obs-cut", "obs-retry", "obs-badkey"):
        assert sum(1 for e in json_lines(obs_gw) if e.get("request_id") == rid) == 1


def test_error_messages_carry_the_request_id(traffic: dict[str, Any]) -> None:
    for name, rid in (("uperr", "obs-uperr"), ("badkey", "obs-badkey"), ("limited2", "obs-limited-2")):
        r = traffic[name]
        assert r.headers["x-request-id"] == rid
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["message"].endswith(f" (request id: {rid})")
    # The stream_error frame stays byte-exact (SPEC §7): no request id in it.
    frame = (
        b'{"error":{"message":"upstream stream interrupted","type":"server_error","param":null,"code":"stream_error"}}'
    )
    assert frame in traffic["cut"].content


def test_no_secret_or_prompt_in_any_output(traffic: dict[str, Any], obs_gw: GatewayProcess) -> None:
    outputs = {
        "log": obs_gw.log(),
        "metrics": traffic["text"],
        **{name: traffic[name].text for name in ("uperr", "badkey", "limited2", "ok1", "cut")},
    }
    secrets = {"master key": obs_gw.key, "upstream key": UPSTREAM_KEY, "API key": traffic["api_key"], "prompt": PROMPT}
    for where, text in outputs.items():
        assert text
        for what, secret in secrets.items():
            if what == "prompt" and where in ("ok1", "cut"):
                continue  # the fake's answers are not the gateway's output
            assert secret not in text, f"the {what} appears in the {where}"


class _Collector(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        self.server.requests.append((self.path, body))  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Collector)
    server.requests = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_otlp_span_tree_of_a_request_with_one_retry(
    upstream: FakeOpenAI, collector: ThreadingHTTPServer, tmp_path: Path
) -> None:
    """The exporter runs inside the real gateway process and posts OTLP/HTTP protobuf to a local collector."""
    upstream.reset()
    config = gateway_config(upstream.url)
    config["routing"] = {"retry": RETRY, "circuit": {"enabled": False}}
    env = {"SLUICEGATE_OTEL_ENDPOINT": f"http://127.0.0.1:{collector.server_port}", "OTEL_BSP_SCHEDULE_DELAY": "50"}
    with GatewayProcess(config, tmp_path, env, log_format="json") as gw:
        r = ask(gw, "trace-me", "scenario:fail_times:1", stream=True)
        assert r.status_code == 200 and r.headers["x-sluicegate-attempts"] == "2"
        spans: list[Any] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(spans) < 4:
            time.sleep(0.05)
            spans = []
            for path, body in list(collector.requests):  # type: ignore[attr-defined]
                assert path == "/v1/traces"
                for rs in ExportTraceServiceRequest.FromString(body).resource_spans:
                    for ss in rs.scope_spans:
                        spans.extend(ss.spans)
    assert len(spans) == 4  # the request, two attempts, the usage write

    def attrs(span: Any) -> dict[str, Any]:
        return {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in span.attributes}

    root = next(s for s in spans if not s.parent_span_id)
    children = sorted(
        (s for s in spans if s.parent_span_id and s.name != "sluicegate.storage.write usage"),
        key=lambda s: s.start_time_unix_nano,
    )
    (write,) = [s for s in spans if s.name == "sluicegate.storage.write usage"]
    assert write.parent_span_id == root.span_id and write.trace_id == root.trace_id
    assert write.start_time_unix_nano >= children[-1].end_time_unix_nano  # written after the answer came back
    assert root.name == "chat gpt-test"
    a = attrs(root)
    assert a["sluicegate.request_id"] == "trace-me" and a["gen_ai.system"] == "openai"
    assert a["gen_ai.request.model"] == "gpt-test" and a["gen_ai.response.model"] == "gpt-test"
    assert a["gen_ai.usage.input_tokens"] == 11 and a["gen_ai.usage.output_tokens"] == 5
    assert [c.parent_span_id for c in children] == [root.span_id, root.span_id]
    assert all(c.trace_id == root.trace_id and c.name == "chat upstream-gpt" for c in children)
    failed, ok = (attrs(c) for c in children)
    assert failed["error.type"] == "upstream_error" and "error.type" not in ok
    assert children[0].status.code == 2  # STATUS_CODE_ERROR
    assert root.start_time_unix_nano <= children[0].start_time_unix_nano < children[0].end_time_unix_nano
    assert children[0].end_time_unix_nano <= children[1].start_time_unix_nano
    assert children[1].end_time_unix_nano <= root.end_time_unix_nano
    for span in spans:
        assert UPSTREAM_KEY not in str(span) and gw.key not in str(span) and PROMPT not in str(span)


def test_two_workers_metrics_sum_over_both(upstream: FakeOpenAI, tmp_path: Path) -> None:
    with GatewayProcess(gateway_config(upstream.url), tmp_path, log_format="json", workers=2) as gw:
        sent = 0
        pids: set[int] = set()
        with ThreadPoolExecutor(8) as pool:
            # Keep sending (each request on a new connection) until both workers have answered some.
            while len(pids) < 2 and sent < 400:
                results = [r.status_code for r in pool.map(lambda i: ask(gw, f"w-{i}"), range(sent, sent + 16))]
                assert results == [200] * 16
                sent += 16
                time.sleep(0.1)
                pids = {e["pid"] for e in json_lines(gw) if e["logger"] == "sluicegate.request"}
        assert len(pids) == 2, "one worker took every connection"
        labels = {"model": MODEL, "deployment": DEPLOYMENT, "status": "200", "outcome": "completed", "error_code": ""}
        labels["api"] = "chat"
        for _ in range(8):  # whichever worker answers the scrape, it reports both workers' counts
            _, samples = scrape(gw)
            assert sample(samples, "sluicegate_requests_total", **labels) == sent
            count = "sluicegate_request_duration_seconds_count"
            assert sample(samples, count, model=MODEL, deployment=DEPLOYMENT, stream="false") == sent
