"""Anthropic Messages stream events → canonical ``ChatChunk``s (PROTOCOL §4.1, the mapping table).

Also home of the pieces the non-streaming path shares with it: the stop-reason table and usage.
"""

from __future__ import annotations

from typing import Any

import orjson

from sluicegate.errors import GatewayError, UpstreamError, UpstreamUnavailable
from sluicegate.types import ChatChunk, ChoiceDelta, Usage

# pause_turn has no OpenAI equivalent; "length" tells the client the turn is unfinished so it may
# continue, which is what LiteLLM does too.
STOP_REASONS: dict[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    "model_context_window_exceeded": "length",
    "pause_turn": "length",
}


def finish_reason(stop_reason: Any, *, had_tool_calls: bool = False) -> str:
    mapped = STOP_REASONS.get(stop_reason) if isinstance(stop_reason, str) else None
    if mapped is None:
        # Unknown or missing: a client still needs a terminal reason; tool calls decide which.
        return "tool_calls" if had_tool_calls else "stop"
    return mapped


def _n(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


class UsageCounter:
    """Anthropic's usage fields as last reported; later reports replace, never add (they are cumulative)."""

    __slots__ = ("cache_creation", "cache_read", "input", "output", "thinking")

    def __init__(self) -> None:
        self.input = 0
        self.output = 0
        self.cache_read = 0
        self.cache_creation = 0
        self.thinking = 0

    def update(self, raw: Any) -> None:
        if not isinstance(raw, dict):
            return
        # A field that is absent or null keeps its earlier value: message_delta often omits input fields.
        if raw.get("input_tokens") is not None:
            self.input = _n(raw["input_tokens"])
        if raw.get("output_tokens") is not None:
            self.output = _n(raw["output_tokens"])
        if raw.get("cache_read_input_tokens") is not None:
            self.cache_read = _n(raw["cache_read_input_tokens"])
        if raw.get("cache_creation_input_tokens") is not None:
            self.cache_creation = _n(raw["cache_creation_input_tokens"])
        details = raw.get("output_tokens_details")
        if isinstance(details, dict) and details.get("thinking_tokens") is not None:
            self.thinking = _n(details["thinking_tokens"])  # already part of output_tokens

    def to_usage(self) -> Usage:
        # Anthropic's input_tokens excludes cached input; OpenAI's prompt_tokens includes it.
        return Usage(
            prompt_tokens=self.input + self.cache_read + self.cache_creation,
            completion_tokens=self.output,
            cached_tokens=self.cache_read,
            cache_write_tokens=self.cache_creation,
            reasoning_tokens=self.thinking,
        )


def usage_from_anthropic(raw: Any) -> Usage:
    counter = UsageCounter()
    counter.update(raw)
    return counter.to_usage()


def stream_error(data: Any) -> GatewayError:
    """The exception for an ``error`` event; the caller decides pre/post first byte."""
    err = data.get("error") if isinstance(data, dict) else None
    err = err if isinstance(err, dict) else {}
    etype = str(err.get("type") or "api_error")
    message = str(err.get("message") or "Anthropic stream reported an error")
    text = f"Anthropic {etype}: {message}"
    if etype == "overloaded_error":
        return UpstreamUnavailable(text, retryable=True)
    return UpstreamError(text, retryable=etype in ("api_error", "rate_limit_error", "timeout_error"))


class StreamTranslator:
    """Feeds on decoded SSE events (name, JSON data) of one Anthropic stream; returns chunks to send.

    ``done`` turns true at ``message_stop``; ``usage`` is the usage so far (final once done);
    ``content_sent`` says whether any content, reasoning or tool-call delta was produced, which is
    what decides whether an ``error`` event is a pre-stream failure or a mid-stream one.
    """

    def __init__(self, include_reasoning: bool) -> None:
        self.include_reasoning = include_reasoning
        self.done = False
        self.content_sent = False
        self.message_id: str | None = None
        self.model: str | None = None
        self.stop_reason: str | None = None
        self._usage = UsageCounter()
        self._tool_count = 0
        # content block index → [tool call index k, fragments seen, input given at block start]
        self._tools: dict[int, list[Any]] = {}

    @property
    def usage(self) -> Usage:
        return self._usage.to_usage()

    def feed(self, event_type: str, data: dict[str, Any]) -> list[ChatChunk]:
        if self.done:
            return []
        if not event_type or event_type == "message":
            event_type = str(data.get("type") or "")
        if event_type == "content_block_delta":
            return self._block_delta(data)
        if event_type == "content_block_start":
            return self._block_start(data)
        if event_type == "content_block_stop":
            return self._block_stop(data)
        if event_type == "message_start":
            return self._message_start(data)
        if event_type == "message_delta":
            delta = data.get("delta")
            if isinstance(delta, dict) and delta.get("stop_reason") is not None:
                self.stop_reason = str(delta["stop_reason"])
            self._usage.update(data.get("usage"))
            return []
        if event_type == "message_stop":
            self.done = True
            reason = finish_reason(self.stop_reason, had_tool_calls=self._tool_count > 0)
            return [
                ChatChunk(choices=[ChoiceDelta(index=0, delta={}, finish_reason=reason)]),
                ChatChunk(choices=[], usage=self._usage.to_usage()),
            ]
        if event_type == "error":
            raise stream_error(data)
        return []  # ping, and event types added after this was written

    def _message_start(self, data: dict[str, Any]) -> list[ChatChunk]:
        message = data.get("message")
        if isinstance(message, dict):
            self.message_id = message.get("id")
            self.model = message.get("model")
            self._usage.update(message.get("usage"))
        return [ChatChunk(choices=[ChoiceDelta(index=0, delta={"role": "assistant", "content": ""})])]

    def _block_start(self, data: dict[str, Any]) -> list[ChatChunk]:
        block = data.get("content_block")
        if not isinstance(block, dict):
            return []
        btype = block.get("type")
        if btype == "tool_use":
            k = self._tool_count
            self._tool_count += 1
            self._tools[_n(data.get("index"))] = [k, False, block.get("input")]
            self.content_sent = True
            call = {
                "index": k,
                "id": str(block.get("id") or f"toolu_{k}"),
                "type": "function",
                "function": {"name": str(block.get("name") or ""), "arguments": ""},
            }
            return [_delta({"tool_calls": [call]})]
        if btype == "text":
            return self._content(block.get("text"))
        if btype == "thinking" and self.include_reasoning:
            return self._reasoning(block.get("thinking"))
        # redacted_thinking and server-side tool blocks: nothing the client can act on.
        return []

    def _block_delta(self, data: dict[str, Any]) -> list[ChatChunk]:
        delta = data.get("delta")
        if not isinstance(delta, dict):
            return []
        dtype = delta.get("type")
        if dtype == "text_delta":
            return self._content(delta.get("text"))
        if dtype == "input_json_delta":
            tool = self._tools.get(_n(data.get("index")))
            fragment = delta.get("partial_json")
            if tool is None or not isinstance(fragment, str) or not fragment:
                return []
            tool[1] = True
            return [_delta({"tool_calls": [{"index": tool[0], "function": {"arguments": fragment}}]})]
        if dtype == "thinking_delta" and self.include_reasoning:
            return self._reasoning(delta.get("thinking"))
        return []  # signature_delta, citations_delta, unknown

    def _block_stop(self, data: dict[str, Any]) -> list[ChatChunk]:
        tool = self._tools.pop(_n(data.get("index")), None)
        if tool is None or tool[1]:
            return []
        # No fragments: the joined arguments must still be valid JSON for the client.
        given = tool[2]
        arguments = _json_dumps(given) if isinstance(given, dict) and given else "{}"
        return [_delta({"tool_calls": [{"index": tool[0], "function": {"arguments": arguments}}]})]

    def _content(self, text: Any) -> list[ChatChunk]:
        if not isinstance(text, str) or not text:
            return []
        self.content_sent = True
        return [_delta({"content": text})]

    def _reasoning(self, text: Any) -> list[ChatChunk]:
        if not isinstance(text, str) or not text:
            return []
        self.content_sent = True
        return [_delta({"reasoning_content": text})]


def _delta(delta: dict[str, Any]) -> ChatChunk:
    return ChatChunk(choices=[ChoiceDelta(index=0, delta=delta)])


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value).decode()
