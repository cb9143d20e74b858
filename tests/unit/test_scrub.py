"""The scrubber: configured secrets, their masked forms and upstream addresses (issue 23, item 3)."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from sluicegate.config import Deployment, GatewayConfig
from sluicegate.errors import StreamInterrupted, UpstreamError, UpstreamStatus
from sluicegate.observability.logs import JsonFormatter, TextFormatter, install_log_scrubber
from sluicegate.providers import anthropic_translate, gemini_translate, openai_compat
from sluicegate.providers.base import StreamStats
from sluicegate.providers.scrubbed import Scrubbed
from sluicegate.scrub import Scrubber
from sluicegate.settings import Settings
from sluicegate.types import ChatChunk, ChatRequest, Completion

KEY = "sk-proj-Qm7vT2xLp9RfK4wZ8sNcY3bHdJ6gA1eUoV5iX0tWrMzE"
ANTHROPIC_KEY = "sk-ant-api03-Zx81Lq0PmW3nR7yT5vB2cK9dH4fJ6gS1aE0uI8oQ"
MASTER = "sk-master-local-4f9c2a77"
SCRUB = Scrubber(
    [KEY, ANTHROPIC_KEY, MASTER, "EMPTY"], ["https://llm-gw.internal.corp:8443/v1", "http://127.0.0.1:9999"]
)


@pytest.mark.parametrize(
    "leak",
    [
        KEY,
        f"Bearer {KEY}",
        KEY[:11] + "*" * 17 + KEY[-4:],  # OpenAI's mask
        KEY[:8] + "*" * 40 + KEY[-4:],  # only the public prefix and the last four
        f"{KEY[:3]}...{KEY[-4:]}",
        f"{KEY[:6]}…{KEY[-4:]}",
        "****" + KEY[-4:],
        "•••••" + KEY[-6:],
        KEY[:20],  # a truncated echo
        KEY[-14:],
        f"key={ANTHROPIC_KEY}&x=1",
        MASTER,
    ],
)
def test_secrets_and_their_masked_forms_are_redacted(leak: str) -> None:
    out = SCRUB.text(f"Incorrect API key provided: {leak}. See the docs.")
    assert "[redacted]" in out
    for secret in (KEY, ANTHROPIC_KEY, MASTER):
        assert secret[-4:] not in out and secret[8:16] not in out
    assert out.startswith("Incorrect API key provided: ") and out.endswith(" See the docs.")


@pytest.mark.parametrize(
    "text",
    [
        "Loading... done",
        "sk-...abcd is someone else's key",  # reveals nothing of a configured key
        "password ******** was wrong",
        "EMPTY is too short to be a secret",
        "the 127.0.0.1 loopback says nothing",
        "a.b.c",
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert SCRUB.text(text) == text


def test_upstream_addresses_are_replaced() -> None:
    out = SCRUB.text(
        "connect to https://llm-gw.internal.corp:8443/v1/chat failed; llm-gw.internal.corp refused; "
        "127.0.0.1:9999 reset; http://127.0.0.1:9999/v1 down"
    )
    assert "internal.corp" not in out and "9999" not in out
    assert out.count("[upstream]") == 4
    assert SCRUB.text("xllm-gw.internal.corpx") == "xllm-gw.internal.corpx"  # part of another name


def test_errors_are_cleaned_in_place_with_only_retry_headers() -> None:
    body = {"error": {"message": f"bad key {KEY}", "type": "invalid_request_error", "param": KEY, "code": KEY}}
    exc = UpstreamStatus(429, body, retryable=True, retry_after=2)
    exc.headers.update({"www-authenticate": f'Bearer key="{KEY}"', "server": "internal", "x-ratelimit-limit": "5"})
    assert SCRUB.error(exc) is exc
    text = orjson.dumps(exc.envelope()).decode() + exc.message + str(exc.param) + exc.code + str(exc.headers)
    assert KEY[-4:] not in text
    assert set(exc.headers) == {"retry-after", "retry-after-ms", "x-ratelimit-limit"}
    stopped = SCRUB.error(StreamInterrupted(f"upstream said {KEY[:3]}...{KEY[-4:]}"))
    assert stopped.message == "upstream said [redacted]"


def test_from_config_collects_keys_master_key_and_addresses() -> None:
    config = GatewayConfig.model_validate(
        {
            "models": [
                {
                    "id": "m",
                    "deployments": [
                        {"provider": "openai", "model": "x", "api_base": "http://u:pa55w0rd-xyz@vllm.lan:8000/v1"},
                        {"provider": "anthropic", "model": "claude", "api_key": ANTHROPIC_KEY},
                    ],
                }
            ]
        }
    )
    settings = Settings(config_path=None, database_url="sqlite://", redis_url=None, master_key=MASTER, data_dir=".")
    scrub = Scrubber.from_config(config, settings)
    out = scrub.text(f"{ANTHROPIC_KEY} {MASTER} pa55w0rd-xyz vllm.lan:8000 vllm.lan")
    assert out == "[redacted] [redacted] [redacted] [upstream] [upstream]"


# -- the seam: every adapter's failures pass through it -----------------------------------------------------


class _Failing:
    def __init__(self, exc: Exception, after: int = 0) -> None:
        self.exc = exc
        self.after = after
        self.closed = False

    async def complete(self, request: ChatRequest, deployment: Deployment, request_id: str) -> Completion:
        raise self.exc

    async def stream(
        self, request: ChatRequest, deployment: Deployment, request_id: str, stats: StreamStats
    ) -> AsyncIterator[list[ChatChunk]]:
        try:
            for _ in range(self.after):
                yield [ChatChunk([])]
            raise self.exc
        finally:
            self.closed = True

    async def aclose(self) -> None:
        return None


def _translated_failures() -> list[Exception]:
    echo = f"invalid x-api-key {ANTHROPIC_KEY} at https://llm-gw.internal.corp:8443/v1"
    anthropic_body = {"type": "error", "error": {"type": "invalid_request_error", "message": echo}}
    gemini_body = {"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": echo}}
    return [
        anthropic_translate.translate_error(400, orjson.dumps(anthropic_body), {}),
        anthropic_translate.translate_error(500, orjson.dumps(anthropic_body), {}),
        gemini_translate.translate_error(400, orjson.dumps(gemini_body), {}),
        gemini_translate.translate_error(503, orjson.dumps(gemini_body), {}),
        openai_compat.translate_error(400, echo.encode(), {}),
        UpstreamError(f"Gemini UNAVAILABLE: {echo}"),
        StreamInterrupted(echo),
    ]


@pytest.mark.parametrize("exc", _translated_failures(), ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("after", [0, 2])
def test_scrubbed_provider_cleans_every_adapters_failures(exc: Exception, after: int) -> None:
    inner = _Failing(exc, after)
    provider = Scrubbed(inner, SCRUB)
    deployment = Deployment(provider="openai", model="m", api_base="http://x")
    request = ChatRequest(model="m", messages=[], params={})

    async def run() -> BaseException:
        seen = 0
        try:
            async for _ in provider.stream(request, deployment, "r", StreamStats()):
                seen += 1
        except (UpstreamError, StreamInterrupted) as caught:
            assert seen == after
            return caught
        raise AssertionError("no failure")

    caught = asyncio.run(run())
    assert caught is exc and inner.closed
    text = str(caught) + getattr(caught, "message", "") + orjson.dumps(getattr(caught, "body", None)).decode()
    assert ANTHROPIC_KEY[-4:] not in text and "internal.corp" not in text


# -- logs ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("formatter", [JsonFormatter(), TextFormatter(), logging.Formatter("%(message)s")])
def test_log_lines_are_scrubbed_and_json_lines_stay_json(formatter: logging.Formatter) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    log = logging.getLogger("sluicegate.test_scrub")
    log.addHandler(handler)
    log.propagate = False
    uninstall = install_log_scrubber(SCRUB.text)
    try:
        log.warning("upstream said %s\n%s", f"key={KEY}", "host llm-gw.internal.corp")
        try:
            raise RuntimeError(f"\x1f{KEY[:5]}***{KEY[-4:]}")
        except RuntimeError:
            log.exception("failed")
    finally:
        uninstall()
        log.removeHandler(handler)
    out = stream.getvalue()
    assert KEY[-4:] not in out and "internal.corp" not in out
    if isinstance(formatter, JsonFormatter):
        lines: list[dict[str, Any]] = [orjson.loads(line) for line in out.splitlines()]
        assert lines[0]["msg"] == "upstream said key=[redacted]\nhost [upstream]"
        assert lines[1]["exc"].endswith("\x1f[redacted]")
    assert not handler.filters  # uninstalled
