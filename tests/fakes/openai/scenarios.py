"""The scenarios of the fake OpenAI upstream (selection rules: ``tests.fakes.openai``).

Normal output and usage (deterministic)
---------------------------------------
A stream is: role chunk ``{"role":"assistant","content":""}``, one chunk per content piece, a finish chunk
(``delta: {}``, ``finish_reason: "stop"``), a usage chunk (``choices: []``) only when the request had
``stream_options.include_usage: true`` (then every other chunk carries ``"usage": null``), and ``data: [DONE]``.
All chunks share ``id`` (``chatcmpl-fakeN``), ``created``, ``object: chat.completion.chunk`` and ``model`` = the
request's ``model``. Usage is ``prompt_tokens = PROMPT_TOKENS`` (11) and ``completion_tokens`` = the number of
content (or tool-call) chunks; non-stream responses carry the same numbers. ``normal`` streams ``NORMAL_PIECES``
(5 pieces, "Hello from the fake upstream.", usage 11 + 5 = 16).

"Chunk N" in the scenarios below counts stream events from 1 in this order: role, contents, finish, usage (if
asked), ``[DONE]``; so ``reset_after:2`` sends the role chunk and the first content chunk.

Scenarios (stream behaviour; non-stream behaviour in brackets when it differs from "the normal completion")
------------------------------------------------------------------------------------------------------------
- ``normal``: as above.
- ``text:N``: N content chunks ``"w0 "``, ``"w1 "``, ...; completion_tokens N.
- ``tool_calls``: role chunk with ``content: null`` (as OpenAI sends when a turn starts with tools), then for each
  of the two ``TOOL_CALLS`` an opening delta (index, id, type, name, ``arguments: ""``) and
  ``ARGUMENT_FRAGMENTS`` (3) argument fragments, one delta per chunk, call 0 before call 1; finish ``tool_calls``;
  completion_tokens 8. [message with ``tool_calls`` and ``content: null``]
- ``split:K``: the normal stream with the non-ASCII text ``UNICODE_PIECES`` ("héllo wörld 🚀 日本"), the whole body
  written K bytes at a time, each slice its own HTTP chunk and its own socket write, with a short pause between
  writes; K=1 splits inside multi-byte UTF-8 characters. [the JSON body written K bytes at a time]
- ``crlf``: SSE lines end with CRLF, events with ``\\r\\n\\r\\n``.
- ``finish:REASON``: the normal stream with that finish_reason (``length``, ``content_filter``, ...).
- ``echo``: one content chunk whose text is the JSON of the received request body; completion_tokens 1.
- ``finish_with_content``: finish_reason ``stop`` rides on the last content chunk (as vLLM does); no empty finish chunk.
- ``role_every_chunk``: every chunk's delta repeats ``role: "assistant"``.
- ``no_usage``: never a usage chunk, even when asked. [no ``usage`` field]
- ``no_finish``: content chunks, usage (if asked), ``[DONE]``; no finish_reason anywhere. [``finish_reason: null``]
- ``no_done``: the complete stream (finish, usage if asked) without ``[DONE]``; the chunked body is never terminated
  and the socket stays open until the client closes it.
- ``no_done_close``: as ``no_done``, then the chunked body is terminated and the connection closed (FIN).
- ``eof_no_finish``: role and content chunks, then the chunked body is terminated and the connection closed (FIN);
  no finish, no usage, no ``[DONE]``. [headers, half the JSON body, then FIN]
- ``empty_body``: 200 ``text/event-stream`` whose chunked body is terminated at once. [200 JSON, Content-Length 0]
- ``reset_before_headers``: the request is read, then the socket is reset (RST).
- ``reset_after:N``: headers and chunks 1..N, then RST. [headers, half the JSON body, then RST]
- ``inband_error_first``: 200, ``data: {"error": {...}}`` (``INBAND_ERROR``) as the first event, ``[DONE]``, end
  (vLLM's shape). [200 whose JSON body is ``INBAND_ERROR``]
- ``inband_error_after:N``: chunks 1..N, then the in-band error event and ``[DONE]``. [as ``inband_error_first``]
- ``malformed_first`` / ``malformed_after:N``: one ``data:`` event whose payload is not JSON (``MALFORMED_DATA``)
  after N good chunks (0 for ``_first``), then the rest of the normal stream. [200 whose body is ``MALFORMED_DATA``]
- ``silent``: the request is read and never answered; the socket stays open until the client closes it.
- ``headers_then_silence``: stream headers, then nothing until the client closes. [headers with the full
  Content-Length, no body]
- ``stall_after:N``: chunks 1..N, then nothing until the client closes. [headers, half the JSON body, silence]
- ``slow_first:MS``: headers at once, the first chunk after MS milliseconds, then normal. [answer after MS ms]
- ``slow_chunks:MS``: the normal stream with MS milliseconds between consecutive events. [answer after MS ms]
- ``status:CODE``: HTTP CODE with an OpenAI error envelope (429 adds ``retry-after: 1`` and
  ``retry-after-ms: 1000``). ``context_length``: 400 ``context_length_exceeded`` with OpenAI's message.
  ``content_filter``: 400 with code ``content_filter``. ``rate_limited``: 429 without any retry-after header.
  ``retry_after:S``: 429 with ``retry-after: ceil(S)`` and ``retry-after-ms: S*1000``.
- ``status_noenvelope:CODE``: HTTP CODE with an HTML body.
- ``hostile_error``: 400 with an OpenAI envelope whose ``code`` is ``HOSTILE_CODE`` (200 characters with a NUL in
  the middle: longer than the gateway's error-code column, and a character PostgreSQL cannot store) and whose
  message carries a NUL too.
- ``leak_status:CODE``: HTTP CODE with an envelope whose message echoes the ``Authorization`` it received (whole,
  masked as OpenAI masks keys, cut to its ends) and the host it was reached at (also in ``param``; ``code`` is
  ``invalid_api_key:<the key>``), plus
  ``www-authenticate`` (with the key), ``x-upstream-host`` and ``x-ratelimit-remaining-requests`` headers
  (429 adds ``retry-after: 1``). ``leak_text:CODE``: the same message as a ``text/plain`` body.
- ``leak_inband_first`` / ``leak_inband_after:N``: as ``inband_error_*``, the error frame carrying that message.
- ``fail_times:N``: the first N requests carrying this exact scenario string get 500 with an envelope, later ones
  the normal answer (counter per scenario string, cleared by ``reset()``).
- ``nested_delta:N``: the normal answer whose first chunk's delta (the message) carries an extra field ``x_nested``,
  N arrays nested in each other (valid JSON that orjson cannot write back when N > 254).
- ``reject_prefill``: 400 ``invalid_request_error`` when the last message is from the assistant (a provider that
  does not support prefill), otherwise normal.

Every response carries the header ``x-fake-scenario`` naming the scenario that produced it.
Times in ``RecordedRequest`` come from ``time.monotonic()`` so tests can compare them with their own readings.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import orjson

from .constants import (
    ARGUMENT_FRAGMENTS,
    HOSTILE_CODE,
    INBAND_ERROR,
    MALFORMED_DATA,
    NORMAL_PIECES,
    TOOL_CALLS,
    UNICODE_PIECES,
)
from .exchange import Exchange, envelope, reason_phrase

Handler = Callable[[Exchange], Awaitable[None]]
SCENARIOS: dict[str, Handler] = {}


def _scenario(*names: str) -> Callable[[Handler], Handler]:
    def register(handler: Handler) -> Handler:
        for name in names:
            SCENARIOS[name] = handler
        return handler

    return register


async def _reply(
    ex: Exchange,
    pieces: Iterable[str],
    finish_reason: str = "stop",
    edit: Callable[[list[dict[str, Any]]], None] | None = None,
) -> None:
    """A complete answer made of ``pieces``; ``edit`` may rewrite the stream's chunk list first."""
    pieces = list(pieces)
    if not ex.stream:
        await ex.send_json(200, ex.text_completion(pieces, finish_reason))
        return
    chunks = ex.text_chunks(pieces, finish_reason)
    if edit is not None:
        edit(chunks)
    await ex.start_stream()
    await ex.send_events(ex.payloads(chunks, len(pieces)))
    await ex.end_stream()


async def _stream_then(ex: Exchange, payloads: list[bytes], ending: str) -> None:
    """Stream headers and ``payloads``, then end the exchange in one of the ways a real upstream can."""
    await ex.start_stream()
    await ex.send_events(payloads)
    if ending == "end":
        await ex.end_stream()
    elif ending == "end_then_close":
        await ex.end_stream()
        ex.close()
    elif ending == "reset":
        await ex.reset()
    elif ending == "hang":
        await ex.hang()
    else:
        raise AssertionError(ending)


async def _partial_json(ex: Exchange, ending: str, fraction: float = 0.5) -> None:
    """Non-stream counterpart of a broken stream: the head promises the whole body, a fraction of it follows."""
    body = orjson.dumps(ex.text_completion(NORMAL_PIECES))
    await ex.send_head(200, [("content-type", "application/json"), ("content-length", str(len(body)))])
    if cut := int(len(body) * fraction):
        await ex.conn.send(body[:cut])
    if ending == "reset":
        await ex.reset()
    elif ending == "close":
        ex.close()
    else:
        await ex.hang()


@_scenario("normal")
async def _normal(ex: Exchange) -> None:
    await _reply(ex, NORMAL_PIECES)


@_scenario("text")
async def _text(ex: Exchange) -> None:
    await _reply(ex, [f"w{i} " for i in range(ex.int_arg())])


@_scenario("split")
async def _split(ex: Exchange) -> None:
    ex.split = ex.int_arg(minimum=1)
    await _reply(ex, UNICODE_PIECES)


@_scenario("crlf")
async def _crlf(ex: Exchange) -> None:
    ex.eol = b"\r\n"
    await _reply(ex, NORMAL_PIECES)


@_scenario("finish")
async def _finish(ex: Exchange) -> None:
    await _reply(ex, NORMAL_PIECES, finish_reason=ex.str_arg())


@_scenario("echo")
async def _echo(ex: Exchange) -> None:
    await _reply(ex, [orjson.dumps(ex.record.body).decode()])


@_scenario("finish_with_content")
async def _finish_with_content(ex: Exchange) -> None:
    def merge(chunks: list[dict[str, Any]]) -> None:
        finish = chunks.pop()
        chunks[-1]["choices"][0]["finish_reason"] = finish["choices"][0]["finish_reason"]

    await _reply(ex, NORMAL_PIECES, edit=merge)


@_scenario("role_every_chunk")
async def _role_every_chunk(ex: Exchange) -> None:
    def add_role(chunks: list[dict[str, Any]]) -> None:
        for chunk in chunks[1:]:
            choice = chunk["choices"][0]
            choice["delta"] = {"role": "assistant", **choice["delta"]}

    await _reply(ex, NORMAL_PIECES, edit=add_role)


@_scenario("no_usage")
async def _no_usage(ex: Exchange) -> None:
    ex.send_usage = False
    await _reply(ex, NORMAL_PIECES)


@_scenario("no_finish")
async def _no_finish(ex: Exchange) -> None:
    if not ex.stream:
        await ex.send_json(200, ex.text_completion(NORMAL_PIECES, finish_reason=None))
        return

    def drop_finish_chunk(chunks: list[dict[str, Any]]) -> None:
        chunks.pop()

    await _reply(ex, NORMAL_PIECES, edit=drop_finish_chunk)


@_scenario("tool_calls")
async def _tool_calls(ex: Exchange) -> None:
    tokens = len(TOOL_CALLS) * (1 + ARGUMENT_FRAGMENTS)
    if not ex.stream:
        calls = [
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
            for call_id, name, arguments in TOOL_CALLS
        ]
        message = {"role": "assistant", "content": None, "refusal": None, "tool_calls": calls}
        await ex.send_json(200, ex.completion(message, "tool_calls", tokens))
        return
    chunks = [ex.chunk({"role": "assistant", "content": None})]
    for index, (call_id, name, arguments) in enumerate(TOOL_CALLS):
        opening = {"index": index, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}
        chunks.append(ex.chunk({"tool_calls": [opening]}))
        step = math.ceil(len(arguments) / ARGUMENT_FRAGMENTS)
        for start in range(0, len(arguments), step):
            fragment = {"index": index, "function": {"arguments": arguments[start : start + step]}}
            chunks.append(ex.chunk({"tool_calls": [fragment]}))
    chunks.append(ex.chunk({}, "tool_calls"))
    await _stream_then(ex, ex.payloads(chunks, tokens), "end")


@_scenario("no_done")
async def _no_done(ex: Exchange) -> None:
    if not ex.stream:
        await _normal(ex)
        return
    await _stream_then(ex, ex.normal_payloads()[:-1], "hang")


@_scenario("no_done_close")
async def _no_done_close(ex: Exchange) -> None:
    if not ex.stream:
        await _normal(ex)
        return
    await _stream_then(ex, ex.normal_payloads()[:-1], "end_then_close")


@_scenario("eof_no_finish")
async def _eof_no_finish(ex: Exchange) -> None:
    if not ex.stream:
        await _partial_json(ex, "close")
        return
    chunks = ex.text_chunks(NORMAL_PIECES)[:-1]
    payloads = [orjson.dumps(chunk) for chunk in chunks]
    await _stream_then(ex, payloads, "end_then_close")


@_scenario("empty_body")
async def _empty_body(ex: Exchange) -> None:
    if not ex.stream:
        await ex.send_body(200, b"", "application/json")
        return
    await _stream_then(ex, [], "end")


@_scenario("reset_before_headers")
async def _reset_before_headers(ex: Exchange) -> None:
    await ex.reset()


@_scenario("reset_after")
async def _reset_after(ex: Exchange) -> None:
    count = ex.int_arg()
    if not ex.stream:
        await _partial_json(ex, "reset")
        return
    await _stream_then(ex, ex.normal_payloads()[:count], "reset")


@_scenario("stall_after")
async def _stall_after(ex: Exchange) -> None:
    count = ex.int_arg()
    if not ex.stream:
        await _partial_json(ex, "hang")
        return
    await _stream_then(ex, ex.normal_payloads()[:count], "hang")


@_scenario("headers_then_silence")
async def _headers_then_silence(ex: Exchange) -> None:
    if not ex.stream:
        await _partial_json(ex, "hang", fraction=0)
        return
    await _stream_then(ex, [], "hang")


@_scenario("silent")
async def _silent(ex: Exchange) -> None:
    await ex.hang()


@_scenario("inband_error_first", "inband_error_after")
async def _inband_error(ex: Exchange) -> None:
    count = 0 if ex.scenario.name == "inband_error_first" else ex.int_arg()
    if not ex.stream:
        await ex.send_json(200, INBAND_ERROR)
        return
    payloads = [*ex.normal_payloads()[:count], orjson.dumps(INBAND_ERROR), b"[DONE]"]
    await _stream_then(ex, payloads, "end")


@_scenario("malformed_first", "malformed_after")
async def _malformed(ex: Exchange) -> None:
    count = 0 if ex.scenario.name == "malformed_first" else ex.int_arg()
    if not ex.stream:
        await ex.send_body(200, MALFORMED_DATA, "application/json")
        return
    payloads = ex.normal_payloads()
    payloads.insert(count, MALFORMED_DATA)
    await _stream_then(ex, payloads, "end")


@_scenario("slow_first")
async def _slow_first(ex: Exchange) -> None:
    delay = ex.int_arg() / 1000
    if not ex.stream:
        await asyncio.sleep(delay)
        await _normal(ex)
        return
    await ex.start_stream()
    await asyncio.sleep(delay)
    await ex.send_events(ex.normal_payloads())
    await ex.end_stream()


@_scenario("slow_chunks")
async def _slow_chunks(ex: Exchange) -> None:
    gap = ex.int_arg() / 1000
    if not ex.stream:
        await asyncio.sleep(gap)
        await _normal(ex)
        return
    await ex.start_stream()
    await ex.send_events(ex.normal_payloads(), gap=gap)
    await ex.end_stream()


_ERROR_BODIES: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", None, "Invalid request (fake upstream)."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("permission_error", None, "You are not allowed to use this model."),
    404: ("invalid_request_error", "model_not_found", "The model does not exist or you do not have access to it."),
    408: ("timeout", None, "Request timed out."),
    429: ("requests", "rate_limit_exceeded", "Rate limit reached for requests. Please try again in 1s."),
    503: ("server_error", None, "The server is overloaded or not ready yet."),
}


async def send_status(ex: Exchange, status: int, headers: Iterable[tuple[str, str]] = ()) -> None:
    type_, code, message = _ERROR_BODIES.get(
        status, ("server_error", None, "The server had an error while processing your request. Sorry about that!")
    )
    await ex.send_json(status, envelope(message, type_, code), headers)


@_scenario("status")
async def _status(ex: Exchange) -> None:
    status = ex.int_arg(minimum=100)
    headers = [("retry-after", "1"), ("retry-after-ms", "1000")] if status == 429 else []
    await send_status(ex, status, headers)


@_scenario("rate_limited")
async def _rate_limited(ex: Exchange) -> None:
    await send_status(ex, 429)


@_scenario("retry_after")
async def _retry_after(ex: Exchange) -> None:
    seconds = ex.float_arg()
    headers = [("retry-after", str(math.ceil(seconds))), ("retry-after-ms", str(int(seconds * 1000)))]
    await send_status(ex, 429, headers)


@_scenario("context_length")
async def _context_length(ex: Exchange) -> None:
    message = (
        "This model's maximum context length is 128000 tokens. However, your messages resulted in 131072 tokens. "
        "Please reduce the length of the messages."
    )
    await ex.send_json(400, envelope(message, "invalid_request_error", "context_length_exceeded", "messages"))


@_scenario("content_filter")
async def _content_filter(ex: Exchange) -> None:
    message = (
        "The response was filtered due to the prompt triggering the content management policy. "
        "Please modify your prompt and retry."
    )
    await ex.send_json(400, envelope(message, "invalid_request_error", "content_filter", "prompt"))


@_scenario("hostile_error")
async def _hostile_error(ex: Exchange) -> None:
    await ex.send_json(400, envelope("bad\u0000request", "invalid_request_error", HOSTILE_CODE))


@_scenario("status_noenvelope")
async def _status_noenvelope(ex: Exchange) -> None:
    status = ex.int_arg(minimum=100)
    page = f"<html><head><title>{status} {reason_phrase(status)}</title></head><body><h1>{status}</h1></body></html>\n"
    await ex.send_body(status, page.encode(), "text/html")


@_scenario("fail_times")
async def _fail_times(ex: Exchange) -> None:
    limit = ex.int_arg()
    if ex.fake.count_attempt(str(ex.scenario)) <= limit:
        await send_status(ex, 500)
    else:
        await _normal(ex)


@_scenario("nested_delta")
async def _nested_delta(ex: Exchange) -> None:
    # Written by hand: orjson itself refuses to write JSON nested more than 254 levels, a client's parser does not.
    depth = ex.int_arg(1)
    nested = b"[" * depth + b"]" * depth
    if not ex.stream:
        body = ex.text_completion(NORMAL_PIECES)
        body["choices"][0]["message"]["x_nested"] = "@nested@"
        await ex.send_body(200, orjson.dumps(body).replace(b'"@nested@"', nested), "application/json")
        return
    chunks = ex.text_chunks(NORMAL_PIECES)
    chunks[0]["choices"][0]["delta"]["x_nested"] = "@nested@"
    payloads = [p.replace(b'"@nested@"', nested) for p in ex.payloads(chunks, len(NORMAL_PIECES))]
    await _stream_then(ex, payloads, "end")


@_scenario("reject_prefill")
async def _reject_prefill(ex: Exchange) -> None:
    messages = ex.body.get("messages") or [{}]
    if isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant":
        message = (
            "This model does not support assistant message prefill. The conversation must end with a user message."
        )
        await ex.send_json(400, envelope(message, "invalid_request_error", None, "messages"))
    else:
        await _normal(ex)


def _leak(ex: Exchange) -> tuple[str, list[tuple[str, str]]]:
    """What a careless upstream says back: the credential it received (whole, masked the way OpenAI masks it,
    and cut to its ends) and its own address, in a message and in headers."""
    auth = ex.request.headers.get("authorization", "")
    key = auth.removeprefix("Bearer ").strip()
    host = ex.request.headers.get("host", "")
    message = (
        f"Incorrect API key provided: {key[:11]}{'*' * 17}{key[-4:]}. You sent '{auth}' ({key[:3]}...{key[-4:]}) "
        f"to http://{host}/v1/chat/completions on {host}."
    )
    headers = [
        ("www-authenticate", f'Bearer realm="{host}", error="invalid_token", key="{key}"'),
        ("x-upstream-host", host),
        ("x-ratelimit-remaining-requests", "0"),
    ]
    return message, headers


@_scenario("leak_status")
async def _leak_status(ex: Exchange) -> None:
    status = ex.int_arg(minimum=400)
    message, headers = _leak(ex)
    if status == 429:
        headers.append(("retry-after", "1"))
    host = ex.request.headers.get("host", "")
    code = "invalid_api_key:" + ex.request.headers.get("authorization", "").removeprefix("Bearer ")
    await ex.send_json(status, envelope(message, "invalid_request_error", code, host), headers)


@_scenario("leak_text")
async def _leak_text(ex: Exchange) -> None:
    message, headers = _leak(ex)
    await ex.send_body(ex.int_arg(minimum=400), message.encode(), "text/plain", headers)


@_scenario("leak_inband_first", "leak_inband_after")
async def _leak_inband(ex: Exchange) -> None:
    count = 0 if ex.scenario.name == "leak_inband_first" else ex.int_arg()
    message, _ = _leak(ex)
    error = orjson.dumps(envelope(message, "server_error", None))
    if not ex.stream:
        await ex.send_body(200, error, "application/json")
        return
    await _stream_then(ex, [*ex.normal_payloads()[:count], error, b"[DONE]"], "end")
