"""Hypothesis strategies for chat request bodies a hostile or buggy client may send.

Mostly near-valid bodies (a model, messages) with known fields replaced by odd values and unknown fields
added, so that the decoder's every branch and the code behind it are reached; some are junk bytes. Odd
values: any JSON type, NUL and other control characters, unicode from every plane, integers beyond 64 bits,
floats at the edges, and containers nested up to well past what the gateway (and orjson) can write.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

from hypothesis import example
from hypothesis import strategies as st

F = TypeVar("F", bound=Callable[..., Any])

MODEL = "metered"
ROLES = ["user", "system", "assistant", "developer", "tool", "function", "", "USER"]
FIELDS = [
    "model", "messages", "stream", "stream_options", "temperature", "top_p", "presence_penalty",
    "frequency_penalty", "max_tokens", "max_completion_tokens", "n", "seed", "top_logprobs", "logprobs",
    "parallel_tool_calls", "stop", "tools", "tool_choice", "response_format", "user", "metadata",
    "sluicegate_budget", "x_future",
]  # fmt: skip
_DEEP = "@deep@"  # replaced in the encoded body by nesting orjson itself would refuse to write

text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=24) | st.sampled_from(
    ["", "\x00", "a\x00b", "\u2028", "\ufeff", "😀" * 8, "\U0010ffff", "scenario", _DEEP]
)
numbers = st.one_of(
    st.integers(-(2**63), 2**64 - 1),
    st.sampled_from([0, 1, -1, 2**53 + 1, 2**63, 2**64 - 1, 10**30]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1e308, -1e308, 5e-324, 0.5, 2.0000001, -0.0]),
)
leaves = st.one_of(st.none(), st.booleans(), numbers, text)
values: st.SearchStrategy[Any] = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=12,
)


@st.composite
def messages(draw: st.DrawFn) -> Any:
    # Hypothesis favours small numbers: the rare branches hang off other values than 0.
    if draw(st.integers(0, 9)) == 7:
        return draw(values)
    out = []
    for _ in range(draw(st.integers(1, 3))):
        message: dict[str, Any] = {"role": draw(st.sampled_from(ROLES[:4]) | st.sampled_from(ROLES))}
        choice = draw(st.integers(0, 5))
        if choice == 4:
            message["content"] = draw(values)
        elif choice == 3:
            parts = [{"type": draw(st.sampled_from(["text", "image_url", "input_audio", ""])), "text": draw(text)}]
            message["content"] = parts
        else:
            message["content"] = draw(text)
        if draw(st.integers(0, 4)) == 3:
            call = {"id": draw(text), "type": "function", "function": {"name": draw(text), "arguments": draw(text)}}
            message["tool_calls"] = draw(st.sampled_from([[call], [], None, call]))
        if draw(st.integers(0, 4)) == 3:
            message["tool_call_id"] = draw(leaves)
        out.append(message)
    return out


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    """One raw request body."""
    kind = draw(st.integers(0, 19))
    if kind == 17:
        return draw(st.binary(max_size=64))
    if kind == 18:
        return _dumps(draw(values))
    body: dict[str, Any] = {"model": MODEL, "messages": draw(messages())}
    for field in draw(st.lists(st.sampled_from(FIELDS), max_size=4)):
        body[field] = draw(values)
    if draw(st.booleans()):
        body["max_tokens"] = draw(st.integers(1, 16))  # keep accepted requests cheap
    if draw(st.integers(0, 3)) == 2:  # nesting in a field the decoder lets through to the upstream
        body["x_future"] = _DEEP
    raw = _dumps(body)
    if _DEEP.encode() in raw:
        depth = draw(st.sampled_from([1, 61, 62, 63, 64, 253, 254, 255, 300, 1021, 1022, 1030]) | st.integers(1, 400))
        raw = raw.replace(b'"' + _DEEP.encode() + b'"', b"[" * depth + b"]" * depth, 1)
    if draw(st.integers(0, 19)) == 17:  # a lone surrogate escape, which no UTF-8 string can hold
        raw = raw.replace(b'"messages"', b'"\\ud800":1,"messages"', 1)
    return raw


def _dumps(value: Any) -> bytes:
    # The standard library writes integers of any size (orjson stops at 64 bits).
    return json.dumps(value, ensure_ascii=False).encode()


def _valid(**fields: Any) -> bytes:
    return _dumps({"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}], **fields})


# Bodies that broke, or could break, the gateway: tried first by every property test that uses ``bodies``.
KNOWN = [
    _valid(x_future=_DEEP).replace(b'"@deep@"', b"[" * 254 + b"]" * 254),  # 255 levels: orjson cannot write it
    _valid(x_future=_DEEP).replace(b'"@deep@"', b"[" * 63 + b"]" * 63),  # the limit, exactly
    _valid(user="a\x00b", metadata={"k": "\x00"}),
    _valid(max_tokens=2**64 - 1, n=128),
    _valid(seed=-(2**63), temperature=5e-324, x_future=10**30),
    _valid(stream=True, stream_options={"include_usage": True}, stop=["\u2028"], x_future="\U0010ffff"),
    _valid().replace(b'"hi"', b'"\\ud800"'),
]


def with_known_bodies(test: F) -> F:
    """Decorate a ``@given(raw=bodies())`` test so it always tries ``KNOWN`` as well."""
    for raw in KNOWN:
        test = example(raw=raw)(test)
    return test
