"""What the fake's normal answers are made of (tests compare the gateway's output against these)."""

from __future__ import annotations

from typing import Any

NORMAL_PIECES = ("Hello", " from", " the", " fake", " upstream.")
NORMAL_TEXT = "".join(NORMAL_PIECES)
UNICODE_PIECES = ("héllo", " wörld", " 🚀", " 日", "本")
UNICODE_TEXT = "".join(UNICODE_PIECES)
PROMPT_TOKENS = 11
# (id, function name, JSON arguments) of the two parallel calls the ``tool_calls`` scenario makes.
TOOL_CALLS = (
    ("call_fake_0", "get_weather", '{"city": "Paris", "unit": "celsius"}'),
    ("call_fake_1", "get_time", '{"timezone": "Europe/Paris"}'),
)
ARGUMENT_FRAGMENTS = 3
INBAND_ERROR: dict[str, Any] = {
    "error": {
        "message": "fake upstream failed while generating",
        "type": "server_error",
        "param": None,
        "code": "internal_server_error",
    }
}
# Truncated JSON: the kind of garbage a crashing upstream or a broken proxy leaves behind.
MALFORMED_DATA = b'{"id":"chatcmpl-broken","choices":[{"index":0,"delta":{"content":"trunc'
HOSTILE_CODE = "x" * 100 + "\u0000" + "y" * 99
