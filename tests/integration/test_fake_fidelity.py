"""The upstream fakes are faithful: the providers' official SDKs parse everything they send."""

from __future__ import annotations

from collections.abc import Iterator

import anthropic
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as gtypes
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.gemini_upstream import FakeGemini

WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}


@pytest.fixture(scope="module")
def fake_anthropic() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as fake:
        assert isinstance(fake, FakeAnthropic)
        yield fake


@pytest.fixture(scope="module")
def fake_gemini() -> Iterator[FakeGemini]:
    with FakeGemini() as fake:
        assert isinstance(fake, FakeGemini)
        yield fake


@pytest.fixture
def claude(fake_anthropic: FakeAnthropic) -> Iterator[anthropic.Anthropic]:
    client = anthropic.Anthropic(base_url=fake_anthropic.url, api_key="x", max_retries=0)
    yield client
    client.close()


@pytest.fixture
def gemini(fake_gemini: FakeGemini) -> genai.Client:
    return genai.Client(api_key="x", http_options=gtypes.HttpOptions(base_url=fake_gemini.url))


def _ask(client: anthropic.Anthropic, text: str) -> anthropic.types.Message:
    return client.messages.create(
        model="claude-fake-1", max_tokens=256, messages=[{"role": "user", "content": text}], tools=[WEATHER_TOOL]
    )


# --- Anthropic ---------------------------------------------------------------------------------


def test_anthropic_text_non_stream(claude: anthropic.Anthropic, fake_anthropic: FakeAnthropic) -> None:
    msg = _ask(claude, "hello there friend")
    assert msg.content[0].type == "text" and msg.content[0].text == "You said: hello there friend"
    assert msg.stop_reason == "end_turn" and msg.usage.input_tokens == 9 and msg.usage.output_tokens == 6
    sent = fake_anthropic.requests[-1]
    # SDK 2.x authenticates with a bearer token and sends its own (newer) API version.
    assert sent["headers"].get("x-api-key", sent["headers"].get("Authorization")) in ("x", "Bearer x")
    assert sent["headers"]["anthropic-version"]
    assert sent["body"]["messages"] == [{"role": "user", "content": "hello there friend"}]


@pytest.mark.parametrize("scenario", ["scenario:doc_tool", "scenario:tool_calls"])
def test_anthropic_tool_use_non_stream(claude: anthropic.Anthropic, scenario: str) -> None:
    msg = _ask(claude, scenario)
    tools = [b for b in msg.content if b.type == "tool_use"]
    assert msg.stop_reason == "tool_use" and tools
    assert tools[0].name == "get_weather" and isinstance(tools[0].input, dict) and tools[0].input


def test_anthropic_stream_documented_transcript(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(
        model="claude-fake-1", max_tokens=64, messages=[{"role": "user", "content": "scenario:doc_hello"}]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Hello!" and final.stop_reason == "end_turn"
    assert final.usage.input_tokens == 25 and final.usage.output_tokens == 15


def test_anthropic_stream_tool_use(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(
        model="claude-fake-1",
        max_tokens=64,
        messages=[{"role": "user", "content": "scenario:tool_calls"}],
        tools=[WEATHER_TOOL],
    ) as stream:
        final = stream.get_final_message()
    tools = [b for b in final.content if b.type == "tool_use"]
    assert [(t.name, t.input) for t in tools] == [
        ("get_weather", {"city": "Paris", "unit": "celsius"}),
        ("get_time", {}),
    ]
    assert final.content[0].type == "text" and final.stop_reason == "tool_use"


def test_anthropic_stream_thinking_and_cache_usage(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(
        model="claude-fake-1", max_tokens=64, messages=[{"role": "user", "content": "scenario:thinking"}]
    ) as stream:
        final = stream.get_final_message()
    assert final.content[0].type == "thinking" and final.content[0].thinking == "Let me think about it."
    assert final.content[0].signature
    with claude.messages.stream(
        model="claude-fake-1", max_tokens=64, messages=[{"role": "user", "content": "scenario:cache_usage"}]
    ) as stream:
        final = stream.get_final_message()
    assert final.usage.cache_read_input_tokens == 100 and final.usage.cache_creation_input_tokens == 50


@pytest.mark.parametrize("reason", ["max_tokens", "refusal", "stop_sequence", "pause_turn"])
def test_anthropic_stop_reasons(claude: anthropic.Anthropic, reason: str) -> None:
    assert _ask(claude, f"scenario:{reason}").stop_reason == reason


def test_anthropic_error_event_mid_stream(claude: anthropic.Anthropic) -> None:
    with (
        pytest.raises(anthropic.APIStatusError, match="Overloaded"),
        claude.messages.stream(
            model="claude-fake-1", max_tokens=64, messages=[{"role": "user", "content": "scenario:error_mid_stream"}]
        ) as stream,
    ):
        for _ in stream:
            pass


@pytest.mark.parametrize(
    ("scenario", "exc", "status"),
    [
        ("overloaded", anthropic.InternalServerError, 529),
        ("rate_limited", anthropic.RateLimitError, 429),
        ("prompt_too_long", anthropic.BadRequestError, 400),
        ("server_error", anthropic.InternalServerError, 500),
        ("not_found", anthropic.NotFoundError, 404),
    ],
)
def test_anthropic_http_errors(
    claude: anthropic.Anthropic, scenario: str, exc: type[anthropic.APIStatusError], status: int
) -> None:
    with pytest.raises(exc) as info:
        _ask(claude, f"scenario:{scenario}")
    assert info.value.status_code == status
    assert isinstance(info.value.body, dict) and info.value.body["type"] == "error"


def test_anthropic_bad_key(fake_anthropic: FakeAnthropic) -> None:
    with (
        anthropic.Anthropic(base_url=fake_anthropic.url, api_key="bad-key", max_retries=0) as client,
        pytest.raises(anthropic.AuthenticationError),
    ):
        _ask(client, "hi")


# --- Gemini ------------------------------------------------------------------------------------


def test_gemini_text_non_stream(gemini: genai.Client, fake_gemini: FakeGemini) -> None:
    resp = gemini.models.generate_content(model="gemini-2.5-flash", contents="hello there")
    assert resp.text == "You said: hello there"
    assert resp.candidates and resp.candidates[0].finish_reason == gtypes.FinishReason.STOP
    assert resp.usage_metadata and resp.usage_metadata.prompt_token_count == 9
    assert resp.usage_metadata.candidates_token_count == 6
    sent = fake_gemini.requests[-1]
    assert sent["headers"]["x-goog-api-key"] == "x" and sent["path"].endswith("gemini-2.5-flash:generateContent")


def test_gemini_stream_documented_shape(gemini: genai.Client, fake_gemini: FakeGemini) -> None:
    chunks = list(gemini.models.generate_content_stream(model="gemini-2.5-flash", contents="scenario:doc_hello"))
    assert "".join(c.text or "" for c in chunks) == "AI works by learning patterns from data."
    last = chunks[-1]
    assert last.candidates and last.candidates[0].finish_reason == gtypes.FinishReason.STOP
    assert last.usage_metadata and last.usage_metadata.candidates_token_count == 12
    assert fake_gemini.requests[-1]["query"] == {"alt": "sse"}


@pytest.mark.parametrize("stream", [False, True])
def test_gemini_function_calls(gemini: genai.Client, stream: bool) -> None:
    config = gtypes.GenerateContentConfig(
        tools=[gtypes.Tool(function_declarations=[gtypes.FunctionDeclaration(name="get_weather")])]
    )
    if stream:
        chunks = list(
            gemini.models.generate_content_stream(
                model="gemini-2.5-flash", contents="scenario:tool_calls", config=config
            )
        )
        calls = [fc for c in chunks for fc in (c.function_calls or [])]
    else:
        resp = gemini.models.generate_content(model="gemini-2.5-flash", contents="scenario:tool_calls", config=config)
        calls = resp.function_calls or []
    assert [(c.name, c.args) for c in calls] == [
        ("get_weather", {"city": "Paris", "unit": "celsius"}),
        ("get_time", None),
    ]


def test_gemini_thinking_and_cache_usage(gemini: genai.Client) -> None:
    resp = gemini.models.generate_content(model="gemini-2.5-flash", contents="scenario:thinking")
    assert resp.candidates and resp.candidates[0].content and resp.candidates[0].content.parts
    assert resp.candidates[0].content.parts[0].thought is True
    assert resp.usage_metadata and resp.usage_metadata.thoughts_token_count == 30
    resp = gemini.models.generate_content(model="gemini-2.5-flash", contents="scenario:cache_usage")
    assert resp.usage_metadata and resp.usage_metadata.cached_content_token_count == 60


@pytest.mark.parametrize(
    ("scenario", "reason"),
    [("max_tokens", "MAX_TOKENS"), ("safety", "SAFETY"), ("recitation", "RECITATION")],
)
def test_gemini_finish_reasons(gemini: genai.Client, scenario: str, reason: str) -> None:
    resp = gemini.models.generate_content(model="gemini-2.5-flash", contents=f"scenario:{scenario}")
    assert resp.candidates and resp.candidates[0].finish_reason == gtypes.FinishReason(reason)


def test_gemini_blocked_prompt(gemini: genai.Client) -> None:
    resp = gemini.models.generate_content(model="gemini-2.5-flash", contents="scenario:blocked")
    assert not resp.candidates
    assert resp.prompt_feedback and resp.prompt_feedback.block_reason == gtypes.BlockedReason.SAFETY


@pytest.mark.parametrize(
    ("scenario", "exc", "status"),
    [
        ("rate_limited", genai_errors.ClientError, "RESOURCE_EXHAUSTED"),
        ("prompt_too_long", genai_errors.ClientError, "INVALID_ARGUMENT"),
        ("unavailable", genai_errors.ServerError, "UNAVAILABLE"),
        ("internal", genai_errors.ServerError, "INTERNAL"),
    ],
)
def test_gemini_http_errors(gemini: genai.Client, scenario: str, exc: type[genai_errors.APIError], status: str) -> None:
    with pytest.raises(exc) as info:
        gemini.models.generate_content(model="gemini-2.5-flash", contents=f"scenario:{scenario}")
    assert info.value.status == status


def test_gemini_bad_key(fake_gemini: FakeGemini) -> None:
    client = genai.Client(api_key="bad-key", http_options=gtypes.HttpOptions(base_url=fake_gemini.url))
    with pytest.raises(genai_errors.ClientError) as info:
        client.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert info.value.code == 400 and "API key not valid" in str(info.value.message)
