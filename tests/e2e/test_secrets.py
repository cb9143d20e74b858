"""Provider keys and upstream addresses never reach a client or the logs (issue 23, item 3).

The fake upstream echoes the ``Authorization`` it received (whole, masked the way OpenAI masks keys, cut to
its ends) and its own ``host:port`` in error envelopes, plain-text error bodies, in-band error frames before
and after the first byte, and headers; the gateway passes none of it on.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import TEST_TIMEOUTS
from tests.fakes.openai import FakeOpenAI
from tests.support.gateway import GatewayProcess

KEY = "sk-proj-Qm7vT2xLp9RfK4wZ8sNcY3bHdJ6gA1eUoV5iX0tWrMzE"


def leaked_forms(upstream: FakeOpenAI) -> list[str]:
    """Everything the fake echoes that identifies the key or the upstream."""
    return [KEY, KEY[:11] + "*" * 17 + KEY[-4:], f"{KEY[:3]}...{KEY[-4:]}", KEY[8:30], f"127.0.0.1:{upstream.port}"]


def assert_clean(text: str, upstream: FakeOpenAI) -> None:
    for form in leaked_forms(upstream):
        assert form not in text, f"{form!r} leaked in: {text[:2000]}"


@pytest.fixture(scope="module")
def leaky_gateway(upstream: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    config = {
        "models": [
            {
                "id": "gpt-leaky",
                "deployments": [
                    {
                        "provider": "openai",
                        "model": "upstream-gpt",
                        "api_base": upstream.url,
                        "api_key": KEY,
                        "timeouts": TEST_TIMEOUTS,
                    }
                ],
            }
        ],
        "routing": {"retry": {"max_attempts_per_deployment": 1}, "circuit": {"enabled": False}},
    }
    with GatewayProcess(config, tmp_path_factory.mktemp("leaky")) as gw:
        yield gw


@pytest.fixture
def client(leaky_gateway: GatewayProcess, fake: FakeOpenAI) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=leaky_gateway.base_url, api_key=leaky_gateway.key, max_retries=0, timeout=20) as c:
        yield c


def chat(scenario: str, stream: bool) -> dict[str, object]:
    return {"model": "gpt-leaky", "stream": stream, "messages": [{"role": "user", "content": f"scenario:{scenario}"}]}


def test_the_fake_really_leaks(upstream: FakeOpenAI, fake: FakeOpenAI) -> None:
    """Guard for the tests below: asked directly, the fake echoes every form they look for."""
    r = httpx.post(
        upstream.url + "/chat/completions",
        json={"model": "m", "messages": [{"role": "user", "content": "scenario:leak_status:400"}]},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    for form in leaked_forms(upstream):
        assert form in r.text + str(r.headers)
    assert "www-authenticate" in r.headers


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    ("scenario", "status"),
    [
        ("leak_status:400", 400),
        ("leak_status:404", 404),
        ("leak_status:429", 429),
        ("leak_status:401", 502),
        ("leak_text:400", 400),
        ("leak_text:500", 502),
        ("leak_inband_first", 502),
    ],
)
def test_upstream_errors_reach_the_client_without_the_key_or_host(
    client: openai.OpenAI, leaky_gateway: GatewayProcess, upstream: FakeOpenAI, scenario: str, status: int, stream: bool
) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(**chat(scenario, stream))  # type: ignore[call-overload]
    err = info.value
    assert err.status_code == status
    assert_clean(f"{err} {err.message} {err.body} {err.response.text}", upstream)

    raw = httpx.post(
        leaky_gateway.base_url + "/chat/completions",
        json=chat(scenario, stream),
        headers={"Authorization": f"Bearer {leaky_gateway.key}"},
        timeout=20,
    )
    assert raw.status_code == status
    assert_clean(raw.text + str(raw.headers), upstream)
    assert "www-authenticate" not in raw.headers
    assert "x-upstream-host" not in raw.headers
    assert raw.headers.get("server") != "fake-openai"
    if status == 429:
        assert raw.headers["retry-after"] == "1"  # the retry hint the SDK acts on still passes
    if status < 500:
        assert "[redacted]" in raw.json()["error"]["message"]  # the rest of the upstream's reason is kept


def test_a_mid_stream_error_frame_is_scrubbed(
    client: openai.OpenAI, leaky_gateway: GatewayProcess, upstream: FakeOpenAI
) -> None:
    with pytest.raises(openai.APIError) as info:
        for _ in client.chat.completions.create(**chat("leak_inband_after:2", True)):  # type: ignore[call-overload]
            pass
    assert info.value.code == "stream_error"
    assert_clean(f"{info.value} {info.value.message} {info.value.body}", upstream)

    with httpx.stream(
        "POST",
        leaky_gateway.base_url + "/chat/completions",
        json=chat("leak_inband_after:2", True),
        headers={"Authorization": f"Bearer {leaky_gateway.key}"},
        timeout=20,
    ) as r:
        body = r.read().decode()
    assert r.status_code == 200
    assert "event: error" in body and "[redacted]" in body
    assert_clean(body, upstream)


def test_logs_and_metrics_hold_neither_key_nor_host(
    client: openai.OpenAI, leaky_gateway: GatewayProcess, upstream: FakeOpenAI
) -> None:
    for scenario, stream in (("leak_status:400", False), ("leak_status:429", True), ("leak_inband_after:2", True)):
        try:
            for _ in client.chat.completions.create(**chat(scenario, stream)) if stream else ():  # type: ignore[call-overload]
                pass
            if not stream:
                client.chat.completions.create(**chat(scenario, stream))  # type: ignore[call-overload]
        except openai.APIError:
            pass
    metrics = httpx.get(leaky_gateway.url + "/metrics", timeout=10).text
    assert "invalid_api_key:[redacted]" in metrics  # the upstream's code is counted, without the key
    assert_clean(metrics, upstream)
    log = Path(leaky_gateway.log_path).read_text()
    assert "invalid_api_key:[redacted]" in log  # the request lines were written, with the code scrubbed
    assert_clean(log, upstream)
