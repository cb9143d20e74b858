"""The client-facing stream: canonical chunks in, SPEC §5 bytes out.

``StreamEncoder`` is where the contract's invariants are enforced whatever the upstream did: one
``id``/``created``/``model`` for the whole stream, ``role`` only in each choice's first chunk (which
is exactly ``{"role":"assistant","content":""}``), one tool call per chunk with dense indexes from 0
and ``id``/``type``/``name`` only in the opening delta, exactly one finish chunk per choice with an
empty delta, ``"usage": null`` on every chunk and one usage chunk iff the client asked, then
``[DONE]``. Everything one upstream read delivered is encoded into one bytes object, so the edge
writes it to the socket once.
"""

from __future__ import annotations

import secrets
from typing import Any

import orjson

from ..types import ChatChunk, ChoiceDelta, Usage

DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"
_ROLE_DELTA = b'{"role":"assistant","content":""}'


def stream_error_frame(message: str = "upstream stream interrupted") -> bytes:
    """The terminal error event of SPEC §7, followed by ``[DONE]``."""
    # Key order and "param": null as in every OpenAI error object (issue 17).
    error = {"message": message, "type": "server_error", "param": None, "code": "stream_error"}
    payload = orjson.dumps({"error": error})
    return b"event: error\ndata: " + payload + b"\n\n" + DONE


class _Choice:
    __slots__ = ("finished", "tool_ids", "tool_map")

    def __init__(self) -> None:
        self.finished = False
        self.tool_map: dict[int, int] = {}  # upstream tool-call index -> our dense index
        self.tool_ids: list[str] = []


class StreamEncoder:
    __slots__ = ("_choices", "_close", "_prefix", "completion_parts", "include_usage", "usage")

    def __init__(self, completion_id: str, created: int, model: str, include_usage: bool) -> None:
        head = orjson.dumps(
            {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model}
        )
        self._prefix = b"data: " + head[:-1] + b',"choices":['
        self._close = b'],"usage":null}\n\n' if include_usage else b"]}\n\n"
        self.include_usage = include_usage
        self._choices: dict[int, _Choice] = {}
        self.usage: Usage | None = None
        # Text delivered to the client, kept so a stream without upstream usage can be metered.
        self.completion_parts: list[str] = []

    @property
    def started(self) -> bool:
        return bool(self._choices)

    @property
    def has_tool_calls(self) -> bool:
        return any(c.tool_ids for c in self._choices.values())

    @property
    def complete(self) -> bool:
        """Every choice that started has its finish chunk."""
        return bool(self._choices) and all(c.finished for c in self._choices.values())

    def encode(self, batch: list[ChatChunk]) -> bytes:
        out: list[bytes] = []
        for chunk in batch:
            if chunk.usage is not None:
                self.usage = chunk.usage  # cumulative: the last report wins
            for choice in chunk.choices:
                self._encode_choice(choice, out)
        return b"".join(out)

    def _frame(self, index: int, delta: bytes, finish: str | None, logprobs: Any = None) -> bytes:
        tail = b'"finish_reason":null}' if finish is None else b'"finish_reason":"' + finish.encode() + b'"}'
        if logprobs is not None:
            tail = b'"logprobs":' + orjson.dumps(logprobs) + b"," + tail
        return b"".join((self._prefix, b'{"index":%d,"delta":' % index, delta, b",", tail, self._close))

    def _encode_choice(self, choice: ChoiceDelta, out: list[bytes]) -> None:
        index = choice.index
        state = self._choices.get(index)
        if state is None:
            state = self._choices[index] = _Choice()
            out.append(self._frame(index, _ROLE_DELTA, None))
        elif state.finished:
            return  # an upstream that goes on after its finish chunk: drop, the client has its answer
        delta = choice.delta
        if delta:
            if "role" in delta or ("content" in delta and not delta["content"]):
                # role belongs to the opening chunk only; empty or null content carries nothing
                delta = {k: v for k, v in delta.items() if k != "role" and not (k == "content" and not v)}
            calls = delta.get("tool_calls")
            if calls:
                rest = {k: v for k, v in delta.items() if k != "tool_calls"}
                if rest:
                    self._emit_delta(index, rest, choice.logprobs, out)
                for call in calls:
                    if isinstance(call, dict):
                        self._emit_tool_call(index, state, call, out)
            elif delta:
                self._emit_delta(index, delta, choice.logprobs, out)
        if choice.finish_reason is not None:
            finish = choice.finish_reason
            if state.tool_ids and finish == "stop":
                finish = "tool_calls"  # PROTOCOL §1.2 rule 15: some upstreams report stop for calls
            out.append(self._frame(index, b"{}", finish))
            state.finished = True

    def _emit_delta(self, index: int, delta: dict[str, Any], logprobs: Any, out: list[bytes]) -> None:
        content = delta.get("content")
        if isinstance(content, str):
            self.completion_parts.append(content)
        out.append(self._frame(index, orjson.dumps(delta), None, logprobs))

    def _emit_tool_call(self, index: int, state: _Choice, call: dict[str, Any], out: list[bytes]) -> None:
        upstream_index = call.get("index")
        if not isinstance(upstream_index, int):
            upstream_index = len(state.tool_map)
        raw_fn = call.get("function")
        fn: dict[str, Any] = raw_fn if isinstance(raw_fn, dict) else {}
        raw_args = fn.get("arguments")
        arguments: str = raw_args if isinstance(raw_args, str) else ""
        ours = state.tool_map.get(upstream_index)
        if ours is None:
            ours = state.tool_map[upstream_index] = len(state.tool_ids)
            raw_id = call.get("id")
            call_id: str = raw_id if isinstance(raw_id, str) and raw_id else _call_id()
            state.tool_ids.append(call_id)
            raw_name = fn.get("name")
            name: str = raw_name if isinstance(raw_name, str) else ""
            opening = {
                "index": ours,
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            }
            self.completion_parts.append(name)
            self.completion_parts.append(arguments)
            out.append(self._frame(index, orjson.dumps({"tool_calls": [opening]}), None))
        elif arguments:
            self.completion_parts.append(arguments)
            fragment = {"tool_calls": [{"index": ours, "function": {"arguments": arguments}}]}
            out.append(self._frame(index, orjson.dumps(fragment), None))

    def usage_frame(self, usage: Usage) -> bytes:
        """The usage chunk (``"choices": []``); the caller sends it only when the client asked."""
        return self._prefix + b'],"usage":' + orjson.dumps(usage.to_openai()) + b"}\n\n"


def _call_id() -> str:
    return "call_" + secrets.token_urlsafe(18)
