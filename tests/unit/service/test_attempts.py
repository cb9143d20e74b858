"""The attempt loop in process: retries, moving on, fallbacks, circuits, deadlines, and what the record keeps."""

from __future__ import annotations

import asyncio

import pytest

from sluicegate.errors import GatewayError, UpstreamError, UpstreamStatus, UpstreamUnavailable
from tests.unit.service.scripted import ADMIN, ScriptedProvider, chat, deployments, service

OK: list[object] = []  # a non-streaming attempt that succeeds


def status(code: int, err_code: str, *, retryable: bool, retry_after: float | None = None) -> UpstreamStatus:
    body = {"error": {"message": "no", "type": "invalid_request_error", "param": None, "code": err_code}}
    return UpstreamStatus(code, body, retryable=retryable, retry_after=retry_after)


async def complete(svc: object, model: str = "m") -> tuple[object, object]:
    ctx = svc.context("req_1", ADMIN, chat(model, stream=False), api="chat")  # type: ignore[attr-defined]
    return ctx, await svc.complete(ctx)  # type: ignore[attr-defined]


async def test_a_retryable_failure_is_retried_then_the_next_deployment_answers() -> None:
    provider = ScriptedProvider({"a": [[UpstreamError("boom")]], "b": [OK]})
    svc, records = service(
        [{"id": "m", "deployments": deployments("a", "b"), "price": {"input": 1, "output": 1}}],
        provider,
        routing={"retry": {"max_attempts_per_deployment": 2, "backoff_base": 0, "backoff_max": 0}},
    )
    ctx, (_completion, usage) = await _until_a_first(svc, provider)
    assert [m for m, _ in provider.calls] == ["a", "a", "b"]
    (record,) = records.all[-1:]
    assert [(a.deployment, a.ok, a.error_code) for a in record.attempts] == [
        ("scripted/a", False, "upstream_error"),
        ("scripted/a", False, "upstream_error"),
        ("scripted/b", True, None),
    ]
    assert record.deployment == "scripted/b" and record.outcome == "completed" and usage.completion_tokens == 1
    assert ctx.attempts == 3 and ctx.fallbacks == 0


async def _until_a_first(svc: object, provider: ScriptedProvider) -> tuple[object, tuple[object, object]]:
    """Deployments are tried in a weighted random order; repeat until "a" happened to go first."""
    for _ in range(50):
        provider.calls.clear()
        ctx, result = await complete(svc)
        if provider.calls[0][0] == "a":
            return ctx, result  # type: ignore[return-value]
    raise AssertionError("deployment a never went first")


async def test_a_request_specific_4xx_is_raised_at_once_and_not_counted_against_the_deployment() -> None:
    provider = ScriptedProvider({"a": [[status(400, "invalid_value", retryable=False)]], "b": [OK]})
    svc, records = service([{"id": "m", "deployments": deployments("a")}], provider)
    with pytest.raises(UpstreamStatus) as info:
        await complete(svc)
    assert info.value.status == 400 and [m for m, _ in provider.calls] == ["a"]
    assert records.all[-1].outcome == "failed" and records.all[-1].error_code == "invalid_value"
    assert svc.breaker.state("m#0:scripted/a") == "closed"


async def test_context_length_switches_once_to_the_context_window_fallback() -> None:
    too_long = status(400, "context_length_exceeded", retryable=False)
    provider = ScriptedProvider({"small": [[too_long]], "large": [OK]})
    svc, records = service(
        [
            {"id": "m", "deployments": deployments("small"), "context_window_fallback": "big"},
            {"id": "big", "deployments": deployments("large")},
        ],
        provider,
    )
    ctx, _ = await complete(svc)
    assert [m for m, _ in provider.calls] == ["small", "large"]
    assert records.all[-1].model == "big" and ctx.fallbacks == 1  # type: ignore[attr-defined]


async def test_fallback_models_are_tried_after_every_deployment_failed() -> None:
    provider = ScriptedProvider({"a": [[UpstreamError("down")]], "z": [OK]})
    svc, records = service(
        [
            {"id": "m", "deployments": deployments("a"), "fallbacks": ["other"]},
            {"id": "other", "deployments": deployments("z")},
        ],
        provider,
        routing={"retry": {"max_attempts_per_deployment": 1}},
    )
    await complete(svc)
    assert records.all[-1].model == "other" and records.all[-1].requested_model == "m"


async def test_an_open_circuit_is_skipped_and_recorded_and_nothing_left_is_503() -> None:
    provider = ScriptedProvider({"a": [[UpstreamError("down")]]})
    svc, records = service(
        [{"id": "m", "deployments": deployments("a")}],
        provider,
        routing={"retry": {"max_attempts_per_deployment": 1}, "circuit": {"failure_threshold": 2, "cooldown": 60}},
    )
    for _ in range(2):
        with pytest.raises(UpstreamError):
            await complete(svc)
    calls = len(provider.calls)
    with pytest.raises(UpstreamUnavailable):
        await complete(svc)
    assert len(provider.calls) == calls  # no attempt reached the open deployment
    assert [(a.ok, a.error_code) for a in records.all[-1].attempts] == [(False, "circuit_open")]


async def test_a_short_retry_after_is_waited_a_long_one_moves_on() -> None:
    short = status(429, "rate_limit_exceeded", retryable=True, retry_after=0.05)
    long = status(429, "rate_limit_exceeded", retryable=True, retry_after=30)
    provider = ScriptedProvider({"a": [[short], OK], "b": [[long]]})
    svc, _ = service(
        [{"id": "m", "deployments": deployments("a")}, {"id": "n", "deployments": deployments("b")}],
        provider,
        routing={"circuit": {"enabled": False}},
    )
    loop = asyncio.get_running_loop()
    start = loop.time()
    await complete(svc, "m")
    assert loop.time() - start >= 0.05 and [m for m, _ in provider.calls] == ["a", "a"]
    start = loop.time()
    with pytest.raises(UpstreamStatus):
        await complete(svc, "n")
    assert loop.time() - start < 5 and [m for m, _ in provider.calls][2:] == ["b"]  # not held for 30 s


async def test_the_retry_budget_stops_the_loop() -> None:
    provider = ScriptedProvider({"a": [[("sleep", 0.2), UpstreamError("slow failure")]]})
    svc, _ = service(
        [{"id": "m", "deployments": deployments("a", "a", "a", "a")}],
        provider,
        routing={"retry": {"max_attempts_per_deployment": 1, "max_retry_time": 0.3}, "circuit": {"enabled": False}},
    )
    with pytest.raises(GatewayError):
        await complete(svc)
    assert len(provider.calls) == 2  # the third attempt would start after the budget
