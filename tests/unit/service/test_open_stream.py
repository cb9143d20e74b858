"""The open stream in process: first token, completion, every way it ends, and the record each way leaves."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sluicegate.errors import StreamInterrupted, UpstreamEmptyBody, UpstreamError, UpstreamTimeout
from sluicegate.service import ChatService, OpenStream
from sluicegate.types import ChoiceDelta
from tests.unit.service.scripted import (
    ADMIN,
    Records,
    ScriptedProvider,
    chat,
    deployments,
    finish,
    role,
    service,
    text,
    usage,
)


async def open_stream(svc: ChatService, model: str = "m") -> OpenStream:
    ctx = svc.context("req_1", ADMIN, chat(model), api="chat")
    return await svc.open_stream(ctx)


async def drain(stream: OpenStream) -> list[ChoiceDelta]:
    out = list(stream.first)
    async for deltas in stream.rest():
        out.extend(deltas)
    return out


def texts(deltas: list[ChoiceDelta]) -> str:
    return "".join(d.delta.get("content", "") for d in deltas)


def one_model(provider: ScriptedProvider, *names: str, **extra: Any) -> tuple[ChatService, Records]:
    model = {"id": "m", "deployments": deployments(*names), **extra.pop("model", {})}
    return service([model], provider, **extra)


async def test_a_complete_stream_ends_with_its_usage_and_a_completed_record() -> None:
    provider = ScriptedProvider({"a": [[[role()], [text("Hel")], [text("lo"), finish()], [usage(5, 2)], "end"]]})
    svc, records = one_model(provider, "a")
    stream = await open_stream(svc)
    assert [d.delta for d in stream.first] == [{}]  # the opening (a role-only chunk still counts as started)
    deltas = await drain(stream)
    assert texts(deltas) == "Hello" and deltas[-1].finish_reason == "stop" and deltas[0].delta == {}
    assert stream.end is not None and stream.end.failure is None and stream.end.usage.completion_tokens == 2
    (record,) = records.all
    assert (record.outcome, record.partial, record.usage.estimated) == ("completed", False, False)  # type: ignore[union-attr]
    assert record.ttft_ms is not None and provider.closed == ["a"]


async def test_nothing_before_the_body_ends_is_an_empty_body_and_the_next_deployment_answers() -> None:
    provider = ScriptedProvider({"a": [["end"]], "b": [[[text("ok", "stop")], [usage(1, 1)], "end"]]})
    svc, records = one_model(provider, "a", "b", routing={"retry": {"max_attempts_per_deployment": 1}})
    for _ in range(30):  # the order of the two deployments is random; find a run where "a" went first
        provider.calls.clear()
        stream = await open_stream(svc)
        await drain(stream)
        if provider.calls[0][0] == "a":
            break
    attempts = records.all[-1].attempts
    assert [(a.deployment, a.error_code) for a in attempts] == [
        ("scripted/a", "upstream_empty_body"),
        ("scripted/b", None),
    ]


async def test_a_silent_first_token_times_out_and_every_deployment_timing_out_is_504() -> None:
    provider = ScriptedProvider({"a": [[("sleep", 5)]]})  # silence: no first chunk
    svc, records = one_model(provider, "a", routing={"retry": {"max_attempts_per_deployment": 1}})
    with pytest.raises(UpstreamTimeout):
        await open_stream(svc)
    assert records.all[-1].outcome == "failed" and records.all[-1].error_code == "upstream_timeout"
    assert provider.closed == ["a"]  # the silent upstream's stream was closed


async def test_a_cut_after_the_first_byte_ends_with_a_failure_never_a_complete_answer() -> None:
    cut = StreamInterrupted("upstream stream interrupted")
    provider = ScriptedProvider({"a": [[[text("partial ")], [text("answer")], cut]]})
    svc, records = one_model(provider, "a")
    stream = await open_stream(svc)
    deltas = await drain(stream)
    assert texts(deltas) == "partial answer" and all(d.finish_reason is None for d in deltas)
    assert stream.end is not None and stream.end.failure == "upstream stream interrupted"
    (record,) = records.all
    assert (record.outcome, record.partial, record.error_code) == ("interrupted", True, "stream_error")
    assert record.usage is not None and record.usage.estimated and record.usage.completion_tokens > 0


async def test_an_upstream_that_stops_without_a_finish_is_a_failure() -> None:
    provider = ScriptedProvider({"a": [[[text("no finish")], "end"]]})
    svc, _ = one_model(provider, "a")
    stream = await open_stream(svc)
    await drain(stream)
    assert stream.end is not None and stream.end.failure == "upstream stream ended without a finish_reason"


async def test_idle_silence_after_the_first_token_ends_the_stream() -> None:
    provider = ScriptedProvider({"a": [[[text("hi")]]]})  # then silence longer than idle (0.3 s)
    svc, records = one_model(provider, "a")
    stream = await open_stream(svc)
    await drain(stream)
    assert stream.end is not None and stream.end.failure == "upstream idle timeout"
    assert records.all[-1].outcome == "interrupted"


async def test_a_finish_without_usage_completes_after_the_tail_grace_with_an_estimate() -> None:
    provider = ScriptedProvider({"a": [[[text("short answer", "stop")]]]})  # no usage, no end: silence
    svc, records = one_model(provider, "a", server={"tail_grace": 0.1})
    stream = await open_stream(svc)
    await drain(stream)
    assert stream.end is not None and stream.end.failure is None
    usage_seen = records.all[-1].usage
    assert usage_seen is not None and usage_seen.estimated and usage_seen.completion_tokens == 2


async def test_an_abort_ends_an_open_stream_with_its_reason() -> None:
    provider = ScriptedProvider({"a": [[[text("a long answer")], ("sleep", 0.2), [text(" more")]]]})
    svc, records = one_model(provider, "a", model={"deployments": deployments("a", idle=10)})
    stream = await open_stream(svc)
    rest = stream.rest()
    asyncio.get_running_loop().call_later(0.05, stream.abort, "gateway shutting down")
    async for _ in rest:
        pass
    assert stream.end is not None and stream.end.failure == "gateway shutting down"
    assert records.all[-1].outcome == "interrupted"


async def test_a_client_that_leaves_mid_stream_is_recorded_as_cancelled_and_closes_the_upstream() -> None:
    provider = ScriptedProvider({"a": [[[text("one")], [text("two")], ("sleep", 5)]]})
    svc, records = one_model(provider, "a", model={"deployments": deployments("a", idle=10)})
    stream = await open_stream(svc)
    rest = stream.rest()
    await anext(rest)
    await rest.aclose()  # what the edge does when the client disconnects
    assert records.all[-1].outcome == "cancelled" and records.all[-1].error_code == "client_disconnected"
    assert provider.closed == ["a"]


async def test_a_failed_stream_is_continued_on_a_prefill_capable_deployment() -> None:
    cut = StreamInterrupted("upstream stream interrupted")
    provider = ScriptedProvider(
        {
            "a": [[[text("The answer ")], cut]],
            "b": [[[text("is 42.", "stop")], [usage(9, 3)], "end"]],
        }
    )
    svc, records = one_model(provider, "a", "b", model={"continue_on_failure": True})
    for _ in range(30):
        provider.calls.clear()
        stream = await open_stream(svc)
        deltas = await drain(stream)
        if provider.calls[0][0] == "a":
            break
    assert texts(deltas) == "The answer is 42." and stream.end is not None and stream.end.failure is None
    assert stream.resumed == 1
    prefill = provider.calls[1][1]
    assert prefill[-1] == {"role": "assistant", "content": "The answer "}  # the continuation saw what was sent
    assert records.all[-1].outcome == "completed"


async def test_errors_before_the_first_token_are_pre_stream_errors() -> None:
    provider = ScriptedProvider({"a": [[UpstreamError("refused")]]})
    svc, _ = one_model(provider, "a", routing={"retry": {"max_attempts_per_deployment": 1}})
    with pytest.raises(UpstreamError) as info:
        await open_stream(svc)
    assert not isinstance(info.value, UpstreamEmptyBody)
