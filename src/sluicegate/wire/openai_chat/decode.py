"""Decode and validate a chat completion request body (SPEC §3) into a ``ChatRequest``.

Hand-written rather than a pydantic model: this runs on every request, unknown fields must pass
through untouched, and each error must name its field (``param``) the way OpenAI does.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from ...errors import InvalidRequest
from ...types import ChatRequest
from ..limits import MAX_DEPTH, nesting_over

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
_TOOL_CHOICES = frozenset({"none", "auto", "required"})
# Fields the gateway keeps for itself and never forwards, so a client cannot spoof them upstream (``metadata``),
# and the two the request carries typed (``model`` is the public id, ``messages`` the one copy).
_NOT_PARAMS = frozenset({"metadata", "model", "messages"})
_METADATA_PAIRS, _METADATA_KEY_CHARS, _METADATA_VALUE_CHARS = 16, 64, 512
_RESERVED_PREFIX = "sluicegate"
# Containers (objects and arrays) nested deeper than this are refused. OpenAI bodies need a fraction of it (a
# tool's JSON schema ten levels deep is about 30); the gateway's own encoder (orjson) cannot write a body
# nested 255 levels, and translating to another provider wraps a few more, so anything near that must be
# refused here, before a budget is reserved, rather than fail on the way out.

# ``user`` and ``metadata`` are stored (usage ledger, audit log): no control characters (NUL above all, which
# PostgreSQL cannot store), and ``user`` short, as an end-user id is. Metadata values may hold tabs and newlines.
_USER_CHARS = 256
_CONTROL = re.compile("[\x00-\x1f\x7f]")
_CONTROL_IN_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def parse_chat_request(raw: bytes) -> ChatRequest:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc.args[0]}") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    too_deep = nesting_over(body, MAX_DEPTH)
    if too_deep is not None:
        raise InvalidRequest(
            f"the request body is nested more than {MAX_DEPTH} levels deep (in '{too_deep}'); {MAX_DEPTH} is the limit",
            param=too_deep,
        )

    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' is required and must be a non-empty string", param="model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array", param="messages")
    for i, message in enumerate(messages):
        _check_message(i, message)

    stream = _opt_bool(body, "stream") or False
    include_usage = False
    options = body.get("stream_options")
    if options is not None:
        if not stream:
            raise InvalidRequest("'stream_options' is only allowed when 'stream' is true", param="stream_options")
        if not isinstance(options, dict):
            raise InvalidRequest("'stream_options' must be an object", param="stream_options")
        include_usage = _opt_bool(options, "include_usage", "stream_options.include_usage") or False
        _opt_bool(options, "include_obfuscation", "stream_options.include_obfuscation")

    _opt_number(body, "temperature", 0, 2)
    _opt_number(body, "top_p", 0, 1)
    _opt_number(body, "presence_penalty", -2, 2)
    _opt_number(body, "frequency_penalty", -2, 2)
    max_tokens = _opt_int(body, "max_completion_tokens", 1)
    legacy_max = _opt_int(body, "max_tokens", 1)
    n = _opt_int(body, "n", 1, 128) or 1
    _opt_int(body, "seed", None)
    _opt_int(body, "top_logprobs", 0, 20)
    _opt_bool(body, "logprobs")
    _opt_bool(body, "parallel_tool_calls")
    _check_stop(body.get("stop"))
    _check_tools(body.get("tools"), body.get("tool_choice"))
    response_format = body.get("response_format")
    if response_format is not None and not (
        isinstance(response_format, dict) and isinstance(response_format.get("type"), str)
    ):
        raise InvalidRequest("'response_format' must be an object with a 'type'", param="response_format")
    user = body.get("user")
    if user is not None and not (isinstance(user, str) and len(user) <= _USER_CHARS and not _CONTROL.search(user)):
        raise InvalidRequest(
            f"'user' must be a string of at most {_USER_CHARS} characters without control characters", param="user"
        )

    metadata = _check_metadata(body.get("metadata"))
    params = {k: v for k, v in body.items() if k not in _NOT_PARAMS and not k.lower().startswith(_RESERVED_PREFIX)}
    return ChatRequest(
        model=model,
        messages=messages,
        params=params,
        stream=stream,
        include_usage=include_usage,
        max_tokens=max_tokens if max_tokens is not None else legacy_max,
        n=n,
        user=user,
        metadata=metadata,
    )


def _check_metadata(metadata: Any) -> dict[str, str] | None:
    """OpenAI's rules for ``metadata``: at most 16 pairs, string keys up to 64 characters, string values up to
    512. It goes into the audit log, never upstream, so its size and characters are bounded here."""
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        raise InvalidRequest("'metadata' must be an object of string values", param="metadata")
    if len(metadata) > _METADATA_PAIRS:
        raise InvalidRequest(f"'metadata' may hold at most {_METADATA_PAIRS} pairs", param="metadata")
    for key, value in metadata.items():
        if len(key) > _METADATA_KEY_CHARS or _CONTROL.search(key):
            raise InvalidRequest(
                f"'metadata' keys may be at most {_METADATA_KEY_CHARS} characters, without control characters",
                param="metadata",
            )
        if not isinstance(value, str) or len(value) > _METADATA_VALUE_CHARS or _CONTROL_IN_TEXT.search(value):
            raise InvalidRequest(
                f"'metadata.{key}' must be a string of at most {_METADATA_VALUE_CHARS} characters, without control "
                "characters other than tab and newline",
                param="metadata",
            )
    return metadata or None


def _check_message(i: int, message: Any) -> None:
    where = f"messages[{i}]"
    if not isinstance(message, dict):
        raise InvalidRequest(f"{where} must be an object", param=where)
    role = message.get("role")
    if not isinstance(role, str) or role not in _ROLES:
        raise InvalidRequest(
            f"{where}.role must be one of system, developer, user, assistant, tool", param=f"{where}.role"
        )
    content = message.get("content")
    if content is None:
        if not (role == "assistant" and (message.get("tool_calls") or message.get("function_call"))):
            raise InvalidRequest(f"{where}.content is required", param=f"{where}.content")
    elif isinstance(content, list):
        for j, part in enumerate(content):
            if not (isinstance(part, dict) and isinstance(part.get("type"), str)):
                raise InvalidRequest(
                    f"{where}.content[{j}] must be a content part with a 'type'", param=f"{where}.content[{j}]"
                )
    elif not isinstance(content, str):
        raise InvalidRequest(f"{where}.content must be a string or an array of parts", param=f"{where}.content")
    if role == "tool" and not isinstance(message.get("tool_call_id"), str):
        raise InvalidRequest(f"{where}.tool_call_id is required for a tool message", param=f"{where}.tool_call_id")
    calls = message.get("tool_calls")
    if calls is not None:
        if role != "assistant" or not isinstance(calls, list):
            raise InvalidRequest(f"{where}.tool_calls must be an array on an assistant message", param=where)
        for j, call in enumerate(calls):
            fn = call.get("function") if isinstance(call, dict) else None
            if not (isinstance(fn, dict) and isinstance(fn.get("name"), str) and isinstance(call.get("id"), str)):
                raise InvalidRequest(
                    f"{where}.tool_calls[{j}] needs an 'id' and a 'function' with a 'name'",
                    param=f"{where}.tool_calls[{j}]",
                )


def _opt_bool(obj: dict[str, Any], key: str, param: str | None = None) -> bool | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, bool):
        raise InvalidRequest(f"'{param or key}' must be a boolean", param=param or key)
    return value


def _opt_number(obj: dict[str, Any], key: str, low: float, high: float) -> None:
    value = obj.get(key)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise InvalidRequest(f"'{key}' must be a number between {low} and {high}", param=key)


def _opt_int(obj: dict[str, Any], key: str, low: int | None, high: int | None = None) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"'{key}' must be an integer", param=key)
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"at least {low}" if high is None else f"between {low} and {high}"
        raise InvalidRequest(f"'{key}' must be {bounds}", param=key)
    return value


def _check_stop(stop: Any) -> None:
    if stop is None or isinstance(stop, str):
        return
    if not (isinstance(stop, list) and len(stop) <= 4 and all(isinstance(s, str) for s in stop)):
        raise InvalidRequest("'stop' must be a string or an array of up to 4 strings", param="stop")


def _check_tools(tools: Any, tool_choice: Any) -> None:
    if tools is not None:
        if not isinstance(tools, list):
            raise InvalidRequest("'tools' must be an array", param="tools")
        for i, tool in enumerate(tools):
            fn = tool.get("function") if isinstance(tool, dict) else None
            if not (isinstance(fn, dict) and isinstance(fn.get("name"), str) and fn["name"]):
                raise InvalidRequest(f"tools[{i}] needs a 'function' with a 'name'", param=f"tools[{i}].function")
    if tool_choice is None or (isinstance(tool_choice, str) and tool_choice in _TOOL_CHOICES):
        return
    if isinstance(tool_choice, dict) and isinstance(tool_choice.get("type"), str):
        return
    raise InvalidRequest("'tool_choice' must be none, auto, required or an object", param="tool_choice")
