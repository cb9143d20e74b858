"""Helpers shared by the non-OpenAI translators: reading OpenAI message content and request fields."""

from __future__ import annotations

import re
from typing import Any

from sluicegate.errors import InvalidRequest
from sluicegate.types import ChatRequest
from sluicegate.wire.limits import MAX_DEPTH, nesting_over

_DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(?:;[^;,]*)*),(?P<data>.*)$", re.DOTALL)


def parse_data_url(url: str, param: str) -> tuple[str, str]:
    """Split a base64 ``data:`` URL into (media type, base64 payload); anything else is a client error."""
    m = _DATA_URL.match(url)
    if m is None or ";base64" not in (m.group("params") or ""):
        raise InvalidRequest("image data URLs must be base64-encoded (data:<mime>;base64,...)", param=param)
    return (m.group("mime") or "application/octet-stream").lower(), m.group("data")


def text_of(content: Any, param: str) -> str:
    """The text of a system/developer/tool message: a string, or the joined text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts: list[str] = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") not in ("text", "input_text"):
                raise InvalidRequest("only text content parts are allowed here", param=f"{param}[{j}]")
            texts.append(str(part.get("text", "")))
        return "\n".join(texts)
    raise InvalidRequest("content must be a string or an array of content parts", param=param)


def check_arguments_depth(value: dict[str, Any], param: str) -> None:
    """JSON decoded from a string field (tool arguments, tool results) is nested under the body's limit too: the
    translated body must still be writable."""
    if nesting_over(value, MAX_DEPTH) is not None:
        raise InvalidRequest(f"the JSON in this field is nested more than {MAX_DEPTH} levels deep", param=param)


def max_tokens_of(req: ChatRequest, default: int) -> int:
    """``max_completion_tokens`` wins over the deprecated ``max_tokens``, as in OpenAI's API."""
    for key in ("max_completion_tokens", "max_tokens"):
        value = req.params.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    if req.max_tokens:
        return req.max_tokens
    return default


def stop_sequences(req: ChatRequest) -> list[str] | None:
    stop = req.params.get("stop")
    if stop is None:
        return None
    if isinstance(stop, str):
        return [stop]
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop):
        return list(stop)
    raise InvalidRequest("stop must be a string or an array of strings", param="stop")


def refuse_n(req: ChatRequest, provider: str) -> None:
    n = req.params.get("n", req.n)
    if isinstance(n, int) and n > 1:
        raise InvalidRequest(f"n > 1 is not supported for {provider} models; send n=1 or omit it", param="n")


def number(req: ChatRequest, key: str) -> float | None:
    value = req.params.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest(f"{key} must be a number", param=key)
    return float(value)
