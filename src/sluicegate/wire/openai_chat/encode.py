"""OpenAI chat completions out: the SPEC §5 stream byte for byte, the ``chat.completion`` object, errors.

``ChunkEncoder`` relies on the service's normalised deltas (``service.state``): an empty delta without a
finish opens a choice (the exact ``{"role":"assistant","content":""}`` frame), an empty delta with one is
the choice's finish frame, anything else is a content or tool-call frame as it stands. The same
``id``/``created``/``model`` is on every chunk; every chunk carries ``"usage": null`` and one usage chunk
follows iff the client asked (``stream_options.include_usage``); ``[DONE]`` ends the stream. Everything one
upstream read delivered is encoded into one bytes object, so the edge writes it to the socket once.
"""

from __future__ import annotations

import secrets
from typing import Any

import orjson

from ...errors import GatewayError
from ...types import ChoiceDelta, Completion, Usage
from ..sse import KEEPALIVE

__all__ = [
    "DONE",
    "KEEPALIVE",
    "ChunkEncoder",
    "completion_body",
    "error_body",
    "new_completion_id",
    "stream_error_frame",
]

DONE = b"data: [DONE]\n\n"
_ROLE_DELTA = b'{"role":"assistant","content":""}'


def new_completion_id() -> str:
    return "chatcmpl-" + secrets.token_urlsafe(18)


def stream_error_frame(message: str = "upstream stream interrupted") -> bytes:
    """The terminal error event of SPEC §7, followed by ``[DONE]``."""
    # Key order and "param": null as in every OpenAI error object (issue 17).
    error = {"message": message, "type": "server_error", "param": None, "code": "stream_error"}
    payload = orjson.dumps({"error": error})
    return b"event: error\ndata: " + payload + b"\n\n" + DONE


def error_body(exc: GatewayError, request_id: str | None = None) -> bytes:
    """The OpenAI envelope, with `` (request id: X)`` after the message so a caller can quote it to an operator.

    The four keys and their meaning are unchanged; only the human-readable ``message`` grows. (The SSE
    ``stream_error`` frame is byte-exact by contract and never goes through here.)
    """
    envelope = exc.envelope()
    if request_id:
        err = envelope.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            # A copy: an upstream's envelope is passed on from the exception and must stay intact.
            envelope = {**envelope, "error": {**err, "message": f"{err['message']} (request id: {request_id})"}}
    return orjson.dumps(envelope)


def completion_body(completion: Completion, usage: Usage, *, model: str, created: int) -> dict[str, Any]:
    """The ``chat.completion`` object of a non-streaming answer."""
    return {
        "id": new_completion_id(),
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": completion.choices,
        "usage": usage.to_openai(),
        **completion.extra,
    }


class ChunkEncoder:
    __slots__ = ("_close", "_prefix", "include_usage")

    content_type = b"text/event-stream; charset=utf-8"
    keepalive = KEEPALIVE

    def __init__(self, completion_id: str, created: int, model: str, include_usage: bool) -> None:
        head = orjson.dumps(
            {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model}
        )
        self._prefix = b"data: " + head[:-1] + b',"choices":['
        self._close = b'],"usage":null}\n\n' if include_usage else b"]}\n\n"
        self.include_usage = include_usage

    def encode(self, deltas: list[ChoiceDelta]) -> bytes:
        prefix, close = self._prefix, self._close
        out: list[bytes] = []
        for choice in deltas:
            delta = choice.delta
            if delta:
                body = orjson.dumps(delta)
                finish = None
            elif choice.finish_reason is None:
                body, finish = _ROLE_DELTA, None
            else:
                body, finish = b"{}", choice.finish_reason
            tail = b'"finish_reason":null}' if finish is None else b'"finish_reason":"' + finish.encode() + b'"}'
            if choice.logprobs is not None:
                tail = b'"logprobs":' + orjson.dumps(choice.logprobs) + b"," + tail
            out.append(b"".join((prefix, b'{"index":%d,"delta":' % choice.index, body, b",", tail, close)))
        return b"".join(out)

    def done(self, usage: Usage) -> bytes:
        """The end of a complete stream: the usage chunk (``"choices": []``) if the client asked, then ``[DONE]``."""
        if not self.include_usage:
            return DONE
        return self._prefix + b'],"usage":' + orjson.dumps(usage.to_openai()) + b"}\n\n" + DONE

    def fail(self, message: str) -> bytes:
        return stream_error_frame(message)
