"""Retries, failover before the first byte, timeouts, fallbacks and context-window fallback, end to end.

One real gateway process in front of three fault-injecting upstreams: ``up_a`` (the first deployment of each
model), ``up_b`` (the second deployment of ``pair``) and ``up_big`` (the fallback and larger-context models).
Faults are injected per test with ``fake.scenario`` (the whole upstream) or a ``scenario:`` token in the user
message (every deployment without its own), and every attempt is counted from the upstreams' own logs.
The circuit breaker is off here (it would carry state from test to test); it, client disconnects, keep-alive and
graceful shutdown are in ``test_resilience_lifecycle.py``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.resilience_support import (
    FIRST,
    SECOND,
    assert_complete_stream,
    assert_envelope,
    chat,
    chats,
    chunks_of,
    counters,
    deployment,
    error_frame,
    frames,
    post,
    text_of,
)
from tests.fakes.openai import NORMAL_TEXT, FakeOpenAI
from tests.support.gateway import GatewayProcess, free_port

RETRY = {
    "max_attempts_per_deployment": 2,
    "backoff_base": 0.05,
    "backoff_max": 0.2,
    "retry_after_cap": 1.0,
    "max_retry_time": 8,
}


@pytest.fixture(scope="module")
def ups() -> Iterator[dict[str, FakeOpenAI]]:
    with FakeOpenAI() as a, FakeOpenAI() as b, FakeOpenAI() as big:
        yield {"a": a, "b": b, "big": big}


@pytest.fixture(scope="module")
def gw(ups: dict[str, FakeOpenAI], tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    a, b, big = ups["a"], ups["b"], ups["big"]
    config: dict[str, Any] = {
        "models": [
            {"id": "solo", "deployments": [deployment(a, "solo-up")]},
            {
                "id": "pair",
                "deployments": [
                    deployment(a, "pair-a", weight=FIRST, strict=True),
                    deployment(b, "pair-b", weight=SECOND),
                ],
            },
            {"id": "chain", "deployments": [deployment(a, "chain-a")], "fallbacks": ["backup"]},
            {"id": "backup", "deployments": [deployment(big, "backup-up")]},
            {
                "id": "ctx-small",
                "deployments": [deployment(a, "small-up scenario:context_length")],
                "context_window_fallback": "ctx-large",
            },
            {"id": "ctx-large", "deployments": [deployment(big, "large-up")]},
            {
                "id": "refused",
                "deployments": [
                    {**deployment(a, "nobody-listens", weight=FIRST), "api_base": f"http://127.0.0.1:{free_port()}/v1"},
                    deployment(b, "refused-b", weight=SECOND),
                ],
            },
        ],
        "server": {"tail_grace": 0.5},
        "routing": {"retry": RETRY, "circuit": {"enabled": False}},
    }
    workdir: Path = tmp_path_factory.mktemp("resilience")
    with GatewayProcess(config, workdir) as process:
        yield process


@pytest.fixture(autouse=True)
def clean(ups: dict[str, FakeOpenAI]) -> Iterator[None]:
    for fake in ups.values():
        fake.scenario = None
        fake.reset()
    yield
    for fake in ups.values():
        fake.scenario = None
        assert fake.errors == []


def served_ok(raw: bytes, model: str) -> None:
    assert_complete_stream(raw, model, NORMAL_TEXT)


# -- the healthy path and the headers ------------------------------------------------------------------------


def test_healthy_answer_is_one_attempt_and_carries_the_request_id(gw: GatewayProcess, ups: dict[str, Any]) -> None:
    r, _ = post(gw, chat("pair"), request_id="res-healthy-1")
    assert r.status_code == 200
    served_ok(r.content, "pair")
    assert counters(r) == (1, 0)
    assert r.headers["x-request-id"] == "res-healthy-1"
    [seen] = chats(ups["a"])
    assert seen.headers["x-request-id"] == "res-healthy-1"
    assert chats(ups["b"]) == []


# -- 429 and Retry-After -------------------------------------------------------------------------------------


def test_short_retry_after_waits_then_retries_the_same_deployment(gw: GatewayProcess, ups: dict[str, Any]) -> None:
    a, b = ups["a"], ups["b"]
    a.scenario = "retry_after:0.3"

    def recover() -> None:  # the first 429 is the only one: the provider recovers before the hint expires
        a.wait_for(lambda reqs: len(reqs) >= 1)
        a.scenario = None

    flipper = threading.Thread(target=recover)
    flipper.start()
    r, elapsed = post(gw, chat("pair"), request_id="res-429-short")
    flipper.join()
    assert r.status_code == 200, r.text
    served_ok(r.content, "pair")
    assert counters(r) == (2, 0)
    first, second = chats(a)
    assert first.status == 429 and second.status == 200
    assert 0.28 <= second.received_at - first.received_at < 1.0  # waited for the hint, no longer
    assert {first.headers["x-request-id"], second.headers["x-request-id"]} == {"res-429-short"}
    assert chats(b) == []
    assert elapsed < 2


def test_short_retry_after_on_every_try_moves_on_after_the_retry(gw: GatewayProcess, ups: dict[str, Any]) -> None:
    ups["a"].scenario = "retry_after:0.3"
    r, elapsed = post(gw, chat("pair"))
    assert r.status_code == 200, r.text
    served_ok(r.content, "pair")
    assert counters(r) == (3, 0)
    first, second = chats(ups["a"])
    assert second.received_at - first.received_at >= 0.28
    assert len(chats(ups["b"])) == 1
    assert 0.3 <= elapsed < 2


def test_long_retry_after_moves_on_to_the_next_deployment_at_once(gw: GatewayProcess, ups: dict[str, Any]) -> None:
    ups["a"].scenario = "retry_after:30"
    r, elapsed = post(gw, chat("pair"))
    assert r.status_code == 200, r.text
    served_ok(r.content, "pair")
    assert counters(r) == (2, 0)
    assert len(chats(ups["a"])) == 1
    assert len(chats(ups["b"])) == 1
    assert elapsed < 0.8  # neither the 30 s hint nor the 1 s cap was waited


def test_long_retry_after_on_the_only_deployment_is_passed_on(gw: GatewayProcess, ups: dict[str, Any]) -> None:
    r, elapsed = post(gw, chat("solo", "scenario:retry_after:30"))
    assert_envelope(r, 429, "rate_limit_exceeded")
    assert r.headers["retry-after"] == "30"
    assert r.headers["retry-after-ms"] == "30000"
    assert counters(r) == (1, 0)
    assert len(chats(ups["a"])) == 1
    assert elapsed < 0.8


def test_429_without_hint_backs_off_then_moves_on(gw: GatewayProcess, ups: dict[str, Any]) -> None:
    ups["a"].scenario = "rate_limited"
    r, elapsed = post(gw, chat("pair"))
    assert r.status_code == 200, r.text
    served_ok(r.content, "pair")
    assert counters(r) == (3, 0)
    first, second = chats(ups["a"])
    assert first.status == second.status == 429
    assert second.received_at - first.received_at < 0.5  # full jitter under backoff_base (0.05 s), plus slack
    assert len(chats(ups["b"])) == 1
    assert elapsed < 1.5


# -- 5xx and resets ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False])
def test_500_once_is_retried_on_the_same_deployment(gw: GatewayProcess, ups: dict[str, Any], stream: bool) -> None:
    r, elapsed = post(gw, chat("solo", "scenario:fail_times:1", stream=stream))
    assert r.status_code == 200, r.text
    if stream:
        served_ok(r.content, "solo")
    else:
        body = r.json()
        assert body["model"] == "solo"
        assert body["choices"][0]["message"]["content"] == NORMAL_TEXT
    assert counters(r) == (2, 0)
    assert [x.status for x in chats(ups["a"])] == [500, 200]
    assert elapsed < 1.5


@pytest.mark.parametrize("stream", [True, False])
def test_503_forever_fails_over_to_the_healthy_deployment(
    gw: GatewayProcess, ups: dict[str, Any], stream: bool
) -> None:
    ups["a"].scenario = "status:503"
    r, elapsed = post(gw, chat("pair", stream=stream))
    assert r.status_code == 200, r.text
    if stream:
        served_ok(r.content, "pair")
    else:
        assert r.json()["choices"][0]["message"]["content"] == NORMAL_TEXT
    assert counters(r) == (3, 0)
    assert [x.status for x in chats(ups["a"])] == [503, 503]
    assert [x.status for x in chats(ups["b"])] == [200]
    assert elapsed < 1.5


@pytest.mark.parametrize("stream", [True, False])
def test_every_deployment_failing_is_a_bounded_502(gw: GatewayProcess, ups: dict[str, Any], stream: bool) -> None:
    ups["a"].scenario = ups["b"].scenario = "status:503"
    r, elapsed = post(gw, chat("pair", stream=stream), request_id="res-all-fail")
    assert_envelope(r, 502, "upstream_error")
    assert r.headers["x-request-id"] == "res-all-fail"
    assert counters(r) == (4, 0)  # max_attempts_per_deployment (2) on each of the two deployments
    assert len(chats(ups["a"])) == 2
    assert len(chats(ups["b"])) == 2
    assert elapsed < RETRY["max_retry_time"]
    assert elapsed < 2


@pytest.mark.parametrize(
    "scenario",
    [
        "reset_before_headers",
        "status:500",
        "status_noenvelope:502",
        "status:408",
        "inband_error_first",
        "malformed_first",
        "empty_body",
    ],
)
def test_failure_before_content_is_retried_then_fails_over(
    gw: GatewayProcess, ups: dict[str, Any], scenario: str
) -> None:
    ups["a"].scenario = scenario
    r, elapsed = post(gw, chat("pair"))
    assert r.status_code == 200, r.text
    served_ok(r.content, "pair")
    assert counters(r) == (3, 0)
    tried = chats(ups["a"])
    assert len(tried) == 2
    # The gateway may hang up as soon as it has seen enough (the fake then logs "client_closed").
    assert {x.outcome for x in tried} <= {
        "reset" if scenario == "reset_before_headers" else "complete",
        "client_closed",
    }
    assert len(chats(ups["b"])) == 1
    assert elapsed < 1.5


def test_connection_refused_is_retried_then_fails_over(gw: GatewayProcess, ups: dict[str, Any]) -> None:
    r, elapsed = post(gw, chat("refused"))
    assert r.status_code == 200, r.text
    served_ok(r.content, "refused")
    assert counters(r) == (3, 0)
    assert len(chats(ups["b"], "refused-b")) == 1
    assert elapsed < 1.5


# -- timeouts before the first token -------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", ["silent", "headers_then_silence", "slow_first:3000"])
def test_no_first_token_in_time_moves_on_without_retrying(
    gw: GatewayProcess, ups: dict[str, Any], scenario: str
) -> None:
    ups["a"].scenario = scenario
    r, elapsed = post(gw, chat("pair"))
    assert r.status_code == 200, r.text
    served_ok(r.content, "pair")
    assert counters(r) == (2, 0)
    [timed_out] = chats(ups["a"])  # exactly one: a silent route is never retried
    assert len(chats(ups["b"])) == 1
    assert 0.9 <= elapsed < 2.5  # first_token (1 s) on A, then B at once
    # The gateway hung up on A: nothing is left waiting on the silent upstream.
    ups["a"].wait_for(lambda _: timed_out.outcome == "client_closed", timeout=2)


def test_silent_only_deployment_is_a_504_within_the_first_token_timeout(
    gw: GatewayProcess, ups: dict[str, Any]
) -> None:
    r, elapsed = post(gw, chat("solo", "scenario:silent"))
    assert_envelope(r, 504, "upstream_timeout")
    assert counters(r) == (1, 0)
    assert len(chats(ups["a"])) == 1
    assert 0.9 <= elapsed < 2.5


def test_silent_upstream_non_streaming_is_bounded_by_the_total_deadline(
    gw: GatewayProcess, ups: dict[str, Any]
) -> None:
    # A non-streaming answer's headers come with the finished answer, so they may take up to `total`
    # (a long generation is indistinguishable from silence); the request never outlives that budget.
    ups["a"].scenario = "silent"
    r, elapsed = post(gw, chat("pair", stream=False))
    assert r.status_code == 504, r.text
    assert r.json()["error"]["code"] == "upstream_timeout"
    assert len(chats(ups["a"])) == 1
    assert len(chats(ups["b"])) == 0  # the retry budget (max_retry_time 8 s) is spent
    assert 7.5 <= elapsed < 8 + 2.5


# -- failures after the first byte ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scenario", "message", "text"),
    [
        ("reset_after:3", "upstream stream interrupted", None),
        ("stall_after:3", "upstream idle timeout", "Hello from"),
        ("malformed_after:3", "upstream sent a malformed event", "Hello from"),  # pair-a is strict
        ("inband_error_after:3", "upstream error: fake upstream failed while generating", "Hello from"),
        ("eof_no_finish", "upstream stream ended without a finish_reason", NORMAL_TEXT),
    ],
)
def test_failure_after_the_first_byte_is_never_retried(
    gw: GatewayProcess, ups: dict[str, Any], scenario: str, message: str, text: str | None
) -> None:
    ups["a"].scenario = scenario
    r, elapsed = post(gw, chat("pair"))
    assert r.status_code == 200
    raw = r.content
    assert raw.endswith(error_frame(message)), raw[-300:]
    before = frames(raw[: -len(error_frame(message))])
    assert before and all(f.startswith(b"data: {") and b'"finish_reason":null' in f for f in before)
    chunks = chunks_of(raw)
    assert {c["model"] for c in chunks} == {"pair"}
    got = text_of(chunks)
    if text is None:  # a reset may lose what was still in flight, never more than that
        assert NORMAL_TEXT.startswith(got) and got != NORMAL_TEXT
    else:
        assert got == text
    assert counters(r) == (1, 0)
    assert len(chats(ups["a"])) == 1
    assert chats(ups["b"]) == []
    assert elapsed < 2.5


@pytest.mark.parametrize("scenario", ["no_done", "no_done_close"])
def test_missing_done_after_a_complete_answer_is_a_complete_answer(
    gw: GatewayProcess, ups: dict[str, Any], scenario: str
) -> None:
    ups["a"].scenario = scenario
    r, elapsed = post(gw, chat("pair"))
    assert r.status_code == 200
    served_ok(r.content, "pair")
    assert len(chats(ups["a"])) == 1
    assert chats(ups["b"]) == []
    assert elapsed < 0.9  # not the 1 s idle timeout


# -- requests that would fail again --------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False])
def test_context_length_goes_to_the_context_window_fallback(
    gw: GatewayProcess, ups: dict[str, Any], stream: bool
) -> None:
    r, _ = post(gw, chat("ctx-small", stream=stream))
    assert r.status_code == 200, r.text
    if stream:
        served_ok(r.content, "ctx-large")
    else:
        assert r.json()["model"] == "ctx-large"
    assert counters(r) == (2, 1)
    assert [x.status for x in chats(ups["a"])] == [400]  # not retried on the small model
    assert [x.status for x in chats(ups["big"], "large-up")] == [200]


def test_context_length_without_a_fallback_is_passed_on(gw: GatewayProcess, ups: dict[str, Any]) -> None:
    r, _ = post(gw, chat("solo", "scenario:context_length"))
    error = assert_envelope(r, 400, "context_length_exceeded")
    assert "maximum context length" in error["message"]
    assert counters(r) == (1, 0)
    assert len(chats(ups["a"])) == 1


def test_context_length_is_not_sent_to_ordinary_fallback_models(gw: GatewayProcess, ups: dict[str, Any]) -> None:
    r, _ = post(gw, chat("chain", "scenario:context_length"))
    assert_envelope(r, 400, "context_length_exceeded")
    assert len(chats(ups["a"])) == 1
    assert chats(ups["big"]) == []


def test_content_filter_is_not_retried_and_passed_on(gw: GatewayProcess, ups: dict[str, Any]) -> None:
    ups["a"].scenario = "content_filter"
    r, _ = post(gw, chat("pair"))
    assert_envelope(r, 400, "content_filter")
    assert counters(r) == (1, 0)
    assert len(chats(ups["a"])) == 1
    assert chats(ups["b"]) == []  # another deployment of the same model would refuse it too


# -- fallback models -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False])
def test_fallback_model_answers_under_its_own_name(gw: GatewayProcess, ups: dict[str, Any], stream: bool) -> None:
    ups["a"].scenario = "status:503"
    extra: dict[str, Any] = {"stream_options": {"include_usage": True}} if stream else {}
    r, _ = post(gw, chat("chain", stream=stream, **extra))
    assert r.status_code == 200, r.text
    if stream:
        chunks = assert_complete_stream(r.content, "backup", NORMAL_TEXT)
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] == 16
    else:
        body = r.json()
        assert body["model"] == "backup"
        assert body["choices"][0]["message"]["content"] == NORMAL_TEXT
    assert counters(r) == (3, 1)
    assert len(chats(ups["a"], "chain-a")) == 2
    assert len(chats(ups["big"], "backup-up")) == 1


def test_primary_model_is_named_when_it_answers(gw: GatewayProcess, ups: dict[str, Any]) -> None:
    r, _ = post(gw, chat("chain"))
    served_ok(r.content, "chain")
    assert counters(r) == (1, 0)
    assert chats(ups["big"]) == []


def test_concurrent_failovers_are_independent(gw: GatewayProcess, ups: dict[str, Any]) -> None:
    """Eight requests fail over at once: each answered in full by B after exactly two tries on A."""
    ups["a"].scenario = "status:503"
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: post(gw, chat("pair"), request_id=f"res-conc-{i}"), range(8)))
    for i, (r, _) in enumerate(results):
        assert r.status_code == 200
        served_ok(r.content, "pair")
        assert r.headers["x-request-id"] == f"res-conc-{i}"
        assert counters(r) == (3, 0)
    per_request: dict[str, int] = {}
    for x in chats(ups["a"]):
        per_request[x.headers["x-request-id"]] = per_request.get(x.headers["x-request-id"], 0) + 1
    assert per_request == {f"res-conc-{i}": 2 for i in range(8)}
    assert len(chats(ups["b"])) == 8
