"""The SSE stream byte for byte (SPEC §5, §7), through the real gateway process and a real upstream socket."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest

from tests.fakes.openai import FakeOpenAI
from tests.support.gateway import GatewayProcess

ERROR_TAIL = b"\n\ndata: [DONE]\n\n"


def post_stream(gw: GatewayProcess, content: str, *, model: str = "gpt-test", **extra: Any) -> httpx.Response:
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": content}], **extra}
    with httpx.Client(timeout=30) as client:
        response = client.post(
            gw.base_url + "/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {gw.key}", "Accept": "application/json"},
        )
    return response


def frames(raw: bytes) -> list[bytes]:
    assert raw.endswith(b"\n\n"), raw[-80:]
    return raw[:-2].split(b"\n\n")


def chunks_of(raw: bytes) -> list[dict[str, Any]]:
    out = []
    for frame in frames(raw):
        assert frame.startswith(b"data: "), frame
        if frame == b"data: [DONE]":
            continue
        out.append(json.loads(frame[6:]))
    return out


def assert_success_shape(raw: bytes, *, include_usage: bool, model: str = "gpt-test") -> list[dict[str, Any]]:
    fs = frames(raw)
    assert fs[-1] == b"data: [DONE]"
    assert all(f.startswith(b"data: ") and b"\n" not in f for f in fs)
    chunks = chunks_of(raw)
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert len({c["created"] for c in chunks}) == 1
    assert {c["model"] for c in chunks} == {model}
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    first = chunks[0]["choices"][0]
    assert first == {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
    roles = [c for c in chunks if c["choices"] and "role" in c["choices"][0]["delta"]]
    assert len(roles) == 1
    finishes = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"] is not None]
    assert len(finishes) == 1 and finishes[0]["choices"][0]["delta"] == {}
    if include_usage:
        assert all("usage" in c for c in chunks)
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["total_tokens"] > 0
        assert all(c["usage"] is None for c in chunks[:-1])
        assert chunks.index(finishes[0]) == len(chunks) - 2
    else:
        assert all("usage" not in c for c in chunks)
        assert chunks[-1] is finishes[0]
    return chunks


def text_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])


def test_headers_and_exact_frames(gateway: GatewayProcess, fake: FakeOpenAI) -> None:
    r = post_stream(gateway, "hello")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["cache-control"] == "no-cache"
    assert r.headers["x-accel-buffering"] == "no"
    assert r.headers["x-request-id"]
    chunks = assert_success_shape(r.content, include_usage=False)
    assert text_of(chunks) == "Hello from the fake upstream."
    cid, created = chunks[0]["id"], chunks[0]["created"]
    expected_first = (
        b'data: {"id":"%s","object":"chat.completion.chunk","created":%d,"model":"gpt-test","choices":'
        b'[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n'
    ) % (cid.encode(), created)
    assert r.content.startswith(expected_first)
    expected_end = (
        b'data: {"id":"%s","object":"chat.completion.chunk","created":%d,"model":"gpt-test","choices":'
        b'[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n'
    ) % (cid.encode(), created)
    assert r.content.endswith(expected_end)


def test_usage_chunk_only_when_asked_and_usage_always_requested_upstream(
    gateway: GatewayProcess, fake: FakeOpenAI
) -> None:
    with_usage = post_stream(gateway, "hi", stream_options={"include_usage": True})
    chunks = assert_success_shape(with_usage.content, include_usage=True)
    assert chunks[-1]["usage"]["prompt_tokens"] == 11 and chunks[-1]["usage"]["completion_tokens"] == 5
    without = post_stream(gateway, "hi")
    assert_success_shape(without.content, include_usage=False)
    sent = [r.body for r in fake.requests]
    assert all(b["stream_options"]["include_usage"] is True for b in sent)
    assert all(b["model"] == "upstream-gpt" for b in sent)


def test_unknown_fields_forwarded_governance_fields_stripped(gateway: GatewayProcess, fake: FakeOpenAI) -> None:
    r = post_stream(gateway, "x scenario:echo", metadata={"team": "a"}, sluicegate_budget=5, some_future_field={"a": 1})
    forwarded = json.loads(text_of(assert_success_shape(r.content, include_usage=False)))
    assert forwarded["some_future_field"] == {"a": 1}
    assert "metadata" not in forwarded and "sluicegate_budget" not in forwarded
    assert forwarded["model"] == "upstream-gpt"
    assert fake.requests[-1].headers["authorization"] == "Bearer sk-upstream-secret-77aa"


@pytest.mark.parametrize("scenario", ["split:1", "split:7", "crlf"])
def test_any_upstream_split_gives_the_same_text(gateway: GatewayProcess, fake: FakeOpenAI, scenario: str) -> None:
    r = post_stream(gateway, f"scenario:{scenario}")
    chunks = assert_success_shape(r.content, include_usage=False)
    expected = "Hello from the fake upstream." if scenario == "crlf" else "héllo wörld 🚀 日本"
    assert text_of(chunks) == expected


def test_role_repeated_upstream_appears_once(gateway: GatewayProcess, fake: FakeOpenAI) -> None:
    chunks = assert_success_shape(post_stream(gateway, "scenario:role_every_chunk").content, include_usage=False)
    assert text_of(chunks) == "Hello from the fake upstream."


def test_finish_riding_on_content_is_split_into_its_own_chunk(gateway: GatewayProcess, fake: FakeOpenAI) -> None:
    chunks = assert_success_shape(post_stream(gateway, "scenario:finish_with_content").content, include_usage=False)
    assert text_of(chunks) == "Hello from the fake upstream."


def test_tool_calls_stream_one_per_chunk_dense_indexes(gateway: GatewayProcess, fake: FakeOpenAI) -> None:
    chunks = assert_success_shape(post_stream(gateway, "scenario:tool_calls").content, include_usage=False)
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"] and "tool_calls" in c["choices"][0]["delta"]]
    assert all(len(d["tool_calls"]) == 1 for d in deltas)
    openings = [d["tool_calls"][0] for d in deltas if "id" in d["tool_calls"][0]]
    assert [o["index"] for o in openings] == [0, 1]
    assert all(o["type"] == "function" and o["function"]["name"] for o in openings)
    for d in deltas:
        call = d["tool_calls"][0]
        if "id" not in call:
            assert set(call) == {"index", "function"} and set(call["function"]) == {"arguments"}
    for index in (0, 1):
        args = "".join(
            d["tool_calls"][0]["function"]["arguments"] for d in deltas if d["tool_calls"][0]["index"] == index
        )
        json.loads(args)
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_malformed_event_mid_stream_is_dropped(gateway: GatewayProcess, fake: FakeOpenAI) -> None:
    chunks = assert_success_shape(post_stream(gateway, "scenario:malformed_after:3").content, include_usage=False)
    assert text_of(chunks) == "Hello from the fake upstream."


@pytest.mark.parametrize(
    ("scenario", "model"),
    [
        ("reset_after:3", "gpt-test"),
        ("inband_error_after:3", "gpt-test"),
        ("stall_after:3", "gpt-test"),
        ("no_finish", "gpt-test"),
        ("eof_no_finish", "gpt-test"),
        ("malformed_after:3", "gpt-strict"),
    ],
)
def test_failures_after_first_byte_end_with_the_error_frame(
    gateway: GatewayProcess, fake: FakeOpenAI, scenario: str, model: str
) -> None:
    started = time.monotonic()
    r = post_stream(gateway, f"scenario:{scenario}", model=model)
    elapsed = time.monotonic() - started
    assert r.status_code == 200
    raw = r.content
    assert raw.endswith(ERROR_TAIL)
    fs = frames(raw)
    assert fs[-1] == b"data: [DONE]"
    error_frame = fs[-2]
    assert error_frame.startswith(b"event: error\ndata: ")
    error = json.loads(error_frame.split(b"data: ", 1)[1])
    assert error["error"]["type"] == "server_error" and error["error"]["code"] == "stream_error"
    assert list(error["error"]) == ["message", "type", "param", "code"] and error["error"]["param"] is None
    # No finish chunk before the error: a truncated answer never looks complete.
    good = fs[:-2]
    assert all(b'"finish_reason":null' in f for f in good)
    assert good[0].startswith(b"data: ")
    assert elapsed < 10


def test_complete_stream_without_done_is_finished_promptly(gateway: GatewayProcess, fake: FakeOpenAI) -> None:
    started = time.monotonic()
    r = post_stream(gateway, "scenario:no_done")
    assert time.monotonic() - started < 0.9  # finished on the finish+usage chunks, not the 1 s idle timeout
    chunks = assert_success_shape(r.content, include_usage=False)
    assert text_of(chunks) == "Hello from the fake upstream."
    r2 = post_stream(gateway, "scenario:no_done_close", stream_options={"include_usage": True})
    assert_success_shape(r2.content, include_usage=True)


def test_upstream_without_usage_is_estimated(gateway: GatewayProcess, fake: FakeOpenAI) -> None:
    r = post_stream(gateway, "scenario:no_usage", stream_options={"include_usage": True})
    chunks = assert_success_shape(r.content, include_usage=True)
    usage = chunks[-1]["usage"]
    assert usage["completion_tokens"] > 0 and usage["prompt_tokens"] > 0


def test_demo_model_streams_without_a_provider(gateway: GatewayProcess) -> None:
    r = post_stream(gateway, "hello demo", model="demo", stream_options={"include_usage": True})
    chunks = assert_success_shape(r.content, include_usage=True, model="demo")
    assert "hello demo" in text_of(chunks)
    assert chunks[-1]["usage"]["completion_tokens"] == len(chunks) - 3


def test_client_disconnect_closes_the_upstream_socket(gateway: GatewayProcess, fake: FakeOpenAI) -> None:
    body = {"model": "gpt-test", "stream": True, "messages": [{"role": "user", "content": "scenario:slow_chunks:200"}]}
    headers = {"Authorization": f"Bearer {gateway.key}"}
    with (
        httpx.Client(timeout=10) as client,
        client.stream("POST", gateway.base_url + "/chat/completions", json=body, headers=headers) as r,
    ):
        got = b""
        for part in r.iter_raw():
            got += part
            if got.count(b"\n\n") >= 2:
                break
    record = fake.wait_for(lambda reqs: [r for r in reqs if r.client_closed_at is not None], timeout=2)[-1]
    assert record.outcome == "client_closed"
