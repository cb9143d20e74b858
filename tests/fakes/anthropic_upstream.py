"""A faithful local Anthropic Messages API: ``POST /v1/messages``, JSON or SSE (``stream: true``).

Headers are checked like the real API: no ``x-api-key`` (nor ``Authorization: Bearer``, which the
official SDK 2.x sends) → 401 ``authentication_error``; the key ``bad-key`` → 401 ``invalid x-api-key``;
no ``anthropic-version`` → 400 ``invalid_request_error``.

Behaviour is chosen by the text of the LAST user message (string content or its last text block):

    scenario:doc_hello          the documented basic stream ("Hello!", with a ping), end_turn
    scenario:doc_tool           the documented tool-use stream (text block, then get_weather with
                                argument fragments starting with ""), tool_use
    scenario:tool_calls         text block, get_weather (fragmented args), get_time (no fragments at
                                all, input {}), tool_use
    scenario:tool_noargs        one tool_use whose only fragment is "", tool_use
    scenario:thinking           thinking block (thinking_delta, signature_delta), then text
    scenario:redacted           redacted_thinking block, then text
    scenario:cache_usage        text; usage with cache_read 100 / cache_creation 50; the message_delta
                                repeats the cumulative usage (replace, not add)
    scenario:unknown_event      text interleaved with pings and an event type the API may add later
    scenario:stop_reason X      text, then stop_reason X (end_turn, max_tokens, stop_sequence,
                                tool_use, pause_turn, refusal, model_context_window_exceeded)
    scenario:max_tokens | scenario:refusal | scenario:stop_sequence | scenario:pause_turn
                                shorthands for the line above
    scenario:error_mid_stream   text, then an ``error`` event (overloaded_error); no message_stop
    scenario:error_first        message_start, then an ``error`` event before any content
    scenario:truncated          text, then the body ends: no message_delta, no message_stop
    scenario:overloaded         HTTP 529 overloaded_error
    scenario:rate_limited       HTTP 429 rate_limit_error with ``retry-after: 7``
    scenario:prompt_too_long    HTTP 400 "prompt is too long: 210000 tokens > 200000 maximum"
    scenario:invalid_request    HTTP 400 invalid_request_error
    scenario:server_error       HTTP 500 api_error
    scenario:not_found          HTTP 404 not_found_error (unknown model)
    anything else               an echo: "You said: <text>" in three text_delta fragments, end_turn

Usage placeholders follow the docs: message_start reports input tokens and a small output count,
message_delta the final output count.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from tests.fakes._server import ThreadedServer, last_user_text

Event = tuple[str, dict[str, Any]]
MSG_ID = "msg_01XFDUDYJgAACzvnptvVoYEL"

HTTP_ERRORS: dict[str, tuple[int, str, str, dict[str, str]]] = {
    "overloaded": (529, "overloaded_error", "Overloaded", {}),
    "rate_limited": (
        429,
        "rate_limit_error",
        "This request would exceed the rate limit for your organization of 50 requests per minute.",
        {"retry-after": "7"},
    ),
    "prompt_too_long": (400, "invalid_request_error", "prompt is too long: 210000 tokens > 200000 maximum", {}),
    "invalid_request": (400, "invalid_request_error", "messages: roles must alternate", {}),
    "server_error": (500, "api_error", "Internal server error", {}),
    "not_found": (404, "not_found_error", "model: claude-nonexistent", {}),
}
STOP_SHORTHANDS = ("max_tokens", "refusal", "stop_sequence", "pause_turn")


def error_body(etype: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": etype, "message": message}, "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy"}


def _start(model: str, usage: dict[str, Any]) -> Event:
    message: dict[str, Any] = {
        "id": MSG_ID,
        "type": "message",
        "role": "assistant",
        "content": [],
        "model": model,
        "stop_reason": None,
        "stop_sequence": None,
        "usage": usage,
    }
    return ("message_start", {"type": "message_start", "message": message})


def _block_start(index: int, block: dict[str, Any]) -> Event:
    return ("content_block_start", {"type": "content_block_start", "index": index, "content_block": block})


def _delta(index: int, delta: dict[str, Any]) -> Event:
    return ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})


def _stop(index: int) -> Event:
    return ("content_block_stop", {"type": "content_block_stop", "index": index})


def _text_block(index: int, pieces: list[str]) -> list[Event]:
    events = [_block_start(index, {"type": "text", "text": ""})]
    events += [_delta(index, {"type": "text_delta", "text": p}) for p in pieces]
    return [*events, _stop(index)]


def _tool_block(index: int, tool_id: str, name: str, fragments: list[str] | None) -> list[Event]:
    events = [_block_start(index, {"type": "tool_use", "id": tool_id, "name": name, "input": {}})]
    events += [_delta(index, {"type": "input_json_delta", "partial_json": f}) for f in fragments or []]
    return [*events, _stop(index)]


def _end(stop_reason: str, usage: dict[str, Any], stop_sequence: str | None = None) -> list[Event]:
    delta = {"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence}}
    return [("message_delta", {**delta, "usage": usage}), ("message_stop", {"type": "message_stop"})]


def _usage(input_tokens: int, output_tokens: int, read: int = 0, write: int = 0) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "cache_creation_input_tokens": write,
        "cache_read_input_tokens": read,
        "output_tokens": output_tokens,
    }


def stream_events(text: str, model: str) -> list[Event]:
    """The SSE events the fake sends for a last-user-message ``text`` (HTTP error scenarios excluded)."""
    scenario, _, arg = text.removeprefix("scenario:").partition(" ") if text.startswith("scenario:") else ("", "", "")
    ping: Event = ("ping", {"type": "ping"})
    if scenario == "doc_hello":
        # The basic example of the streaming docs.
        return [
            _start(model, {"input_tokens": 25, "output_tokens": 1}),
            _block_start(0, {"type": "text", "text": ""}),
            ping,
            _delta(0, {"type": "text_delta", "text": "Hello"}),
            _delta(0, {"type": "text_delta", "text": "!"}),
            _stop(0),
            *_end("end_turn", {"output_tokens": 15}),
        ]
    if scenario == "doc_tool":
        # The tool-use example of the streaming docs: fragments start with "" and split mid-token.
        fragments = ["", '{"location":', ' "San', " Francisc", "o,", ' CA"', ", ", '"unit": "fah', 'renheit"}']
        return [
            _start(model, {"input_tokens": 472, "output_tokens": 2}),
            *_text_block(0, ["Okay", ",", " let", "'s check the weather for San Francisco, CA:"]),
            ping,
            *_tool_block(1, "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "get_weather", fragments),
            *_end("tool_use", {"output_tokens": 89}),
        ]
    if scenario == "tool_calls":
        return [
            _start(model, _usage(40, 1)),
            *_text_block(0, ["Checking ", "both."]),
            *_tool_block(1, "toolu_01A", "get_weather", ['{"city": "Pa', 'ris", "unit": ', '"celsius"}']),
            ping,
            *_tool_block(2, "toolu_01B", "get_time", None),
            *_end("tool_use", _usage(40, 30)),
        ]
    if scenario == "tool_noargs":
        return [
            _start(model, _usage(12, 1)),
            *_tool_block(0, "toolu_01C", "get_time", [""]),
            *_end("tool_use", {"output_tokens": 9}),
        ]
    if scenario == "thinking":
        return [
            _start(model, _usage(20, 1)),
            _block_start(0, {"type": "thinking", "thinking": ""}),
            _delta(0, {"type": "thinking_delta", "thinking": "Let me think"}),
            _delta(0, {"type": "thinking_delta", "thinking": " about it."}),
            _delta(0, {"type": "signature_delta", "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pk"}),
            _stop(0),
            *_text_block(1, ["The answer", " is 4."]),
            *_end("end_turn", {"output_tokens": 42, "output_tokens_details": {"thinking_tokens": 30}}),
        ]
    if scenario == "redacted":
        return [
            _start(model, _usage(20, 1)),
            _block_start(0, {"type": "redacted_thinking", "data": "EmwKAhgBEgy3va3pzix/LafPsn4a"}),
            _stop(0),
            *_text_block(1, ["Done."]),
            *_end("end_turn", {"output_tokens": 8}),
        ]
    if scenario == "cache_usage":
        return [
            _start(model, _usage(10, 1, read=100, write=50)),
            *_text_block(0, ["Cached ", "answer."]),
            *_end("end_turn", _usage(10, 5, read=100, write=50)),
        ]
    if scenario == "unknown_event":
        return [
            _start(model, _usage(5, 1)),
            ping,
            *_text_block(0, ["still ", "fine"]),
            ("content_block_magic", {"type": "content_block_magic", "index": 0}),
            ping,
            *_end("end_turn", {"output_tokens": 3}),
        ]
    if scenario in STOP_SHORTHANDS or scenario == "stop_reason":
        reason = scenario if scenario in STOP_SHORTHANDS else (arg.strip() or "end_turn")
        stop_sequence = "END" if reason == "stop_sequence" else None
        return [
            _start(model, _usage(7, 1)),
            *_text_block(0, ["Partial"]),
            *_end(reason, {"output_tokens": 4}, stop_sequence),
        ]
    if scenario == "error_mid_stream":
        return [
            _start(model, _usage(7, 1)),
            _block_start(0, {"type": "text", "text": ""}),
            _delta(0, {"type": "text_delta", "text": "Half an ans"}),
            ("error", error_body("overloaded_error", "Overloaded")),
        ]
    if scenario == "truncated":
        return [
            _start(model, _usage(7, 1)),
            _block_start(0, {"type": "text", "text": ""}),
            _delta(0, {"type": "text_delta", "text": "Cut "}),
        ]
    if scenario == "error_first":
        return [_start(model, _usage(7, 1)), ("error", error_body("overloaded_error", "Overloaded"))]
    words = f"You said: {text}".split(" ")
    pieces = (
        [" ".join(words[:2]), " " + " ".join(words[2:3]), " " + " ".join(words[3:])]
        if len(words) > 3
        else [" ".join(words)]
    )
    return [
        _start(model, _usage(9, 1)),
        *_text_block(0, [p for p in pieces if p.strip()]),
        *_end("end_turn", {"output_tokens": 6}),
    ]


def message_body(events: list[Event]) -> dict[str, Any]:
    """The non-streaming response equivalent to a stream: what the API returns with ``stream: false``."""
    message: dict[str, Any] = {}
    blocks: dict[int, dict[str, Any]] = {}
    json_parts: dict[int, list[str]] = {}
    for name, data in events:
        if name == "message_start":
            message = json.loads(json.dumps(data["message"]))
        elif name == "content_block_start":
            blocks[data["index"]] = dict(data["content_block"])
        elif name == "content_block_delta":
            block, delta = blocks[data["index"]], data["delta"]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            elif delta["type"] == "input_json_delta":
                json_parts.setdefault(data["index"], []).append(delta["partial_json"])
            elif delta["type"] == "thinking_delta":
                block["thinking"] += delta["thinking"]
            elif delta["type"] == "signature_delta":
                block["signature"] = delta["signature"]
        elif name == "message_delta":
            message.update(data["delta"])
            message["usage"].update(data["usage"])
    for index, parts in json_parts.items():
        joined = "".join(parts)
        blocks[index]["input"] = json.loads(joined) if joined else {}
    message["content"] = [blocks[i] for i in sorted(blocks)]
    return message


class FakeAnthropic(ThreadedServer):
    def routes(self) -> list[web.RouteDef]:
        return [web.post("/v1/messages", self.messages)]

    async def messages(self, request: web.Request) -> web.StreamResponse:
        body = await self.log(request)
        # The API takes x-api-key, or a bearer token (which the newest official SDKs send instead).
        bearer = request.headers.get("authorization", "")
        key = request.headers.get("x-api-key") or (bearer[7:] if bearer.lower().startswith("bearer ") else "")
        if not key:
            return _error(401, "authentication_error", "x-api-key header is required")
        if key == "bad-key":
            return _error(401, "authentication_error", "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return _error(400, "invalid_request_error", "anthropic-version: header is required")
        if not isinstance(body, dict) or not isinstance(body.get("max_tokens"), int):
            return _error(400, "invalid_request_error", "max_tokens: Field required")
        text = last_user_text(body.get("messages"))
        scenario = text.removeprefix("scenario:").split(" ", 1)[0] if text.startswith("scenario:") else ""
        if scenario in HTTP_ERRORS:
            status, etype, message, headers = HTTP_ERRORS[scenario]
            return _error(status, etype, message, headers)
        events = stream_events(text, str(body.get("model", "")))
        if not body.get("stream"):
            if any(name == "error" for name, _ in events):
                return _error(529, "overloaded_error", "Overloaded")
            return web.json_response(message_body(events), headers={"request-id": "req_fake"})
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "request-id": "req_fake",
            }
        )
        await response.prepare(request)
        for name, data in events:
            await response.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
        await response.write_eof()
        return response


def _error(status: int, etype: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(
        error_body(etype, message), status=status, headers={"request-id": "req_fake", **(headers or {})}
    )
