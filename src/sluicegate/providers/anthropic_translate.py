"""OpenAI chat requests ⇄ Anthropic Messages API, without I/O (PROTOCOL §4.1).

Decisions a reader should know:

* ``temperature``: OpenAI accepts 0 to 2, Anthropic 0 to 1. Values above 1 are clamped to 1 rather than
  refused: clients send e.g. 1.2 generically to every provider, and "as random as allowed" is the
  closest honest meaning. It is not rescaled, since 0.7 means about the same on both.
* Reasoning is opt-in through OpenAI's own ``reasoning_effort`` (``low``/``medium``/``high`` →
  ``thinking.budget_tokens`` 1024/4096/16384, ``minimal``/``none`` → off), or an Anthropic-style
  ``thinking`` object passed as is. Extended thinking does not allow ``temperature``/``top_p``/
  ``top_k``, so they are dropped when it is on; the budget is capped below ``max_tokens``.
* Upstream 401/402/403/404 are our configuration's fault (key, billing, model name), not the
  client's: they become a 502 ``UpstreamError`` naming the status, never the provider's text.
* ``system``/``developer`` messages anywhere in the conversation are hoisted into ``system``:
  Anthropic has no mid-conversation system turn.
* ``response_format`` ``json_object`` is ignored (OpenAI requires the prompt to ask for JSON anyway);
  ``json_schema`` is refused with 400, there is no faithful equivalent here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from sluicegate.errors import (
    GatewayError,
    InvalidRequest,
    UpstreamError,
    UpstreamStatus,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from sluicegate.providers._content import (
    check_arguments_depth,
    max_tokens_of,
    number,
    parse_data_url,
    refuse_n,
    stop_sequences,
    text_of,
)
from sluicegate.providers._headers import retry_after_seconds
from sluicegate.providers.anthropic_stream import StreamTranslator, finish_reason, usage_from_anthropic
from sluicegate.types import ChatRequest, Completion

__all__ = [
    "ANTHROPIC_VERSION",
    "StreamTranslator",
    "build_request",
    "parse_response",
    "translate_error",
    "wants_reasoning",
]

ANTHROPIC_VERSION = "2023-06-01"
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
THINKING_BUDGETS: Mapping[str, int] = {"low": 1024, "medium": 4096, "high": 16384}
MIN_THINKING_BUDGET = 1024  # Anthropic's documented minimum


def wants_reasoning(req: ChatRequest) -> bool:
    """Whether the client opted into thinking, hence into ``reasoning_content`` deltas."""
    return _thinking(req, max_tokens=1 << 30) is not None


def build_request(req: ChatRequest, upstream_model: str, default_max_tokens: int, stream: bool) -> dict[str, Any]:
    """The JSON body for ``POST /v1/messages``; raises ``InvalidRequest`` for what cannot be mapped."""
    refuse_n(req, "Anthropic")
    body = req.params
    system, messages = _messages(req.messages)
    max_tokens = max_tokens_of(req, default_max_tokens)
    out: dict[str, Any] = {"model": upstream_model, "max_tokens": max_tokens, "messages": messages}
    if system:
        out["system"] = system
    if stream:
        out["stream"] = True
    stops = stop_sequences(req)
    if stops:
        out["stop_sequences"] = stops
    thinking = _thinking(req, max_tokens)
    if thinking is not None:
        out["thinking"] = thinking
    else:
        temperature = number(req, "temperature")
        if temperature is not None:
            if not 0.0 <= temperature <= 2.0:
                raise InvalidRequest("temperature must be between 0 and 2", param="temperature")
            out["temperature"] = min(temperature, 1.0)
        top_p = number(req, "top_p")
        if top_p is not None:
            out["top_p"] = top_p
        top_k = body.get("top_k")  # not OpenAI, but common in clients that know Anthropic
        if isinstance(top_k, int) and not isinstance(top_k, bool) and top_k > 0:
            out["top_k"] = top_k
    user = body.get("user", req.user)
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user}
    tools = _tools(body.get("tools"))
    if tools:
        out["tools"] = tools
        choice = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
        if choice is not None:
            out["tool_choice"] = choice
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        msg = "response_format json_schema is not supported for Anthropic models"
        raise InvalidRequest(msg, param="response_format")
    return out


def _thinking(req: ChatRequest, max_tokens: int) -> dict[str, Any] | None:
    raw = req.params.get("thinking")
    if isinstance(raw, dict):
        if raw.get("type") != "enabled":
            return None
        budget = raw.get("budget_tokens")
        if not isinstance(budget, int) or isinstance(budget, bool):
            raise InvalidRequest("thinking.budget_tokens must be an integer", param="thinking.budget_tokens")
    else:
        effort = req.params.get("reasoning_effort")
        if effort is None or effort in ("none", "minimal"):
            return None
        if effort not in THINKING_BUDGETS:
            msg = "reasoning_effort must be none, minimal, low, medium or high"
            raise InvalidRequest(msg, param="reasoning_effort")
        budget = THINKING_BUDGETS[effort]
    # Anthropic requires budget_tokens < max_tokens; OpenAI's max tokens include reasoning too.
    budget = min(budget, max_tokens - 1)
    if budget < MIN_THINKING_BUDGET:
        raise InvalidRequest(
            f"reasoning needs max_completion_tokens above {MIN_THINKING_BUDGET} for Anthropic models",
            param="max_completion_tokens",
        )
    return {"type": "enabled", "budget_tokens": budget}


def _messages(raw: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    system: list[dict[str, Any]] = []
    turns: list[dict[str, Any]] = []
    for i, msg in enumerate(raw):
        role = msg.get("role")
        param = f"messages[{i}]"
        if role in ("system", "developer"):
            system.extend(_system_blocks(msg.get("content"), f"{param}.content"))
            continue
        if role == "user":
            blocks = _user_blocks(msg.get("content"), f"{param}.content")
        elif role == "assistant":
            blocks = _assistant_blocks(msg, param)
        elif role == "tool":
            blocks = [_tool_result(msg, param)]
        else:
            raise InvalidRequest(f"unsupported role {role!r}", param=f"{param}.role")
        if not blocks:
            continue
        anthropic_role = "assistant" if role == "assistant" else "user"
        # Consecutive tool results (and a user turn right after them) must be one user message,
        # tool_result blocks first; merging same-role turns gives exactly that.
        if turns and turns[-1]["role"] == anthropic_role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": anthropic_role, "content": blocks})
    return system, turns


def _system_blocks(content: Any, param: str) -> list[dict[str, Any]]:
    if isinstance(content, list):
        blocks: list[dict[str, Any]] = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") not in ("text", "input_text"):
                raise InvalidRequest("only text content parts are allowed here", param=f"{param}[{j}]")
            if part.get("text"):
                blocks.append(_text_block(str(part["text"]), part))
        return blocks
    text = text_of(content, param)
    return [{"type": "text", "text": text}] if text else []


def _text_block(text: str, part: Mapping[str, Any] | None = None) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "text", "text": text}
    # cache_control on a content part is the de-facto way OpenAI-speaking clients ask for caching.
    if part is not None and isinstance(part.get("cache_control"), dict):
        block["cache_control"] = part["cache_control"]
    return block


def _user_blocks(content: Any, param: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if not isinstance(content, list):
        raise InvalidRequest("user content must be a string or an array of content parts", param=param)
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        pparam = f"{param}[{j}]"
        ptype = part.get("type") if isinstance(part, dict) else None
        if ptype == "text" and isinstance(part, dict):
            if part.get("text"):
                blocks.append(_text_block(str(part["text"]), part))
        elif ptype == "image_url" and isinstance(part, dict):
            blocks.append(_image_block(part.get("image_url"), f"{pparam}.image_url"))
        else:
            raise InvalidRequest(f"content part type {ptype!r} is not supported for Anthropic models", param=pparam)
    return blocks


def _image_block(image: Any, param: str) -> dict[str, Any]:
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise InvalidRequest("image_url.url must be a string", param=f"{param}.url")
    if url.startswith("data:"):
        media_type, data = parse_data_url(url, f"{param}.url")
        if media_type not in IMAGE_TYPES:
            msg = f"image type {media_type} is not supported (jpeg, png, gif, webp)"
            raise InvalidRequest(msg, param=f"{param}.url")
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise InvalidRequest("image_url.url must be an http(s) URL or a base64 data URL", param=f"{param}.url")


def _assistant_blocks(msg: Mapping[str, Any], param: str) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    content = msg.get("content")
    if isinstance(content, str):
        if content:
            blocks.append({"type": "text", "text": content})
    elif isinstance(content, list):
        for j, part in enumerate(content):
            if isinstance(part, dict) and part.get("type") in ("text", "refusal"):
                text = part.get("text") if part.get("type") == "text" else part.get("refusal")
                if text:
                    blocks.append(_text_block(str(text), part))
            else:
                raise InvalidRequest("assistant content parts must be text", param=f"{param}.content[{j}]")
    elif content is not None:
        raise InvalidRequest("assistant content must be a string, an array or null", param=f"{param}.content")
    tool_calls = msg.get("tool_calls") or []
    if not isinstance(tool_calls, list):
        raise InvalidRequest("tool_calls must be an array", param=f"{param}.tool_calls")
    for j, call in enumerate(tool_calls):
        cparam = f"{param}.tool_calls[{j}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not isinstance(call, dict):
            raise InvalidRequest("tool call needs function.name", param=f"{cparam}.function")
        args = fn.get("arguments") or "{}"
        try:
            parsed = orjson.loads(args) if isinstance(args, str | bytes) else args
        except orjson.JSONDecodeError:
            bad = "tool call arguments are not valid JSON"
            raise InvalidRequest(bad, param=f"{cparam}.function.arguments") from None
        if not isinstance(parsed, dict):
            raise InvalidRequest("tool call arguments must be a JSON object", param=f"{cparam}.function.arguments")
        check_arguments_depth(parsed, f"{cparam}.function.arguments")
        blocks.append({"type": "tool_use", "id": str(call.get("id") or ""), "name": fn["name"], "input": parsed})
    return blocks


def _tool_result(msg: Mapping[str, Any], param: str) -> dict[str, Any]:
    call_id = msg.get("tool_call_id")
    if not isinstance(call_id, str) or not call_id:
        raise InvalidRequest("tool messages need tool_call_id", param=f"{param}.tool_call_id")
    content = msg.get("content")
    result: dict[str, Any] = {"type": "tool_result", "tool_use_id": call_id}
    if isinstance(content, list):
        result["content"] = _system_blocks(content, f"{param}.content")
    else:
        result["content"] = text_of(content, f"{param}.content")
    return result


def _tools(raw: Any) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InvalidRequest("tools must be an array", param="tools")
    tools: list[dict[str, Any]] = []
    for i, tool in enumerate(raw):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(fn, dict):
            raise InvalidRequest("only function tools are supported", param=f"tools[{i}]")
        if not isinstance(fn.get("name"), str):
            raise InvalidRequest("tool function needs a name", param=f"tools[{i}].function.name")
        schema = fn.get("parameters")
        if not isinstance(schema, dict) or not schema:
            schema = {"type": "object", "properties": {}}
        elif "type" not in schema:
            schema = {"type": "object", **schema}
        out: dict[str, Any] = {"name": fn["name"], "input_schema": schema}
        if isinstance(fn.get("description"), str):
            out["description"] = fn["description"]
        tools.append(out)
    return tools


def _tool_choice(choice: Any, parallel: Any) -> dict[str, Any] | None:
    if choice is None:
        out: dict[str, Any] | None = {"type": "auto"} if parallel is False else None
    elif choice == "auto":
        out = {"type": "auto"}
    elif choice == "required":
        out = {"type": "any"}
    elif choice == "none":
        return {"type": "none"}  # disable_parallel_tool_use is meaningless without tool use
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict) and choice["function"].get("name"):
        out = {"type": "tool", "name": str(choice["function"]["name"])}
    else:
        raise InvalidRequest("tool_choice must be auto, none, required or a named function", param="tool_choice")
    if out is not None and parallel is False:
        out["disable_parallel_tool_use"] = True
    return out


def parse_response(body: dict[str, Any], *, include_reasoning: bool = False) -> Completion:
    """A non-streaming Messages response as one OpenAI choice."""
    texts: list[str] = []
    thinking: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for block in body.get("content") or []:
        if not isinstance(block, dict):
            continue
        btype = block.get("type")
        if btype == "text":
            texts.append(str(block.get("text") or ""))
        elif btype == "tool_use":
            tool_calls.append(
                {
                    "id": str(block.get("id") or ""),
                    "type": "function",
                    "function": {
                        "name": str(block.get("name") or ""),
                        "arguments": orjson.dumps(block.get("input") or {}).decode(),
                    },
                }
            )
        elif btype == "thinking":
            thinking.append(str(block.get("thinking") or ""))
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts or not tool_calls else None,
        "refusal": None,
    }
    if tool_calls:
        message["tool_calls"] = tool_calls
    if include_reasoning and thinking:
        message["reasoning_content"] = "".join(thinking)
    choice = {
        "index": 0,
        "message": message,
        "finish_reason": finish_reason(body.get("stop_reason"), had_tool_calls=bool(tool_calls)),
        "logprobs": None,
    }
    return Completion(choices=[choice], usage=usage_from_anthropic(body.get("usage")))


def _error_fields(body: bytes | dict[str, Any] | None) -> tuple[str, str]:
    if isinstance(body, bytes | bytearray):
        try:
            body = orjson.loads(body)
        except orjson.JSONDecodeError:
            body = None
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return "", ""
    return str(err.get("type") or ""), str(err.get("message") or "")


def _envelope(message: str, etype: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": etype, "param": None, "code": code}}


def translate_error(status: int, body: bytes | dict[str, Any] | None, headers: Mapping[str, str]) -> GatewayError:
    """An Anthropic HTTP error as the gateway error to raise (SPEC §6 statuses)."""
    etype, message = _error_fields(body)
    retry_after = retry_after_seconds(headers)
    label = f"Anthropic {etype or 'error'} (HTTP {status})"
    if status == 529 or etype == "overloaded_error":
        return UpstreamUnavailable(f"{label}: {message or 'overloaded'}", retryable=True, retry_after=retry_after)
    if status in (401, 402, 403, 404):
        # Our key, billing or upstream model name is wrong: not the client's fault, and the
        # provider's text may name internals (the upstream model), so it is not passed on.
        return UpstreamError(f"{label}: the deployment is misconfigured", retryable=True)
    if status == 429:
        envelope = _envelope(message or "rate limited by the upstream", "rate_limit_error", "rate_limit_exceeded")
        return UpstreamStatus(429, envelope, retryable=True, retry_after=retry_after)
    if status == 504 or etype == "timeout_error":
        return UpstreamTimeout(f"{label}: {message or 'timeout'}", retryable=True, retry_after=retry_after)
    if status >= 500:
        return UpstreamError(f"{label}: {message or 'server error'}", retryable=True, retry_after=retry_after)
    if 400 <= status < 500:
        lowered = message.lower()
        code: str | None = None
        if "prompt is too long" in lowered or "exceed context limit" in lowered:
            code = "context_length_exceeded"
        elif status == 413:
            code = "request_too_large"
        return UpstreamStatus(status, _envelope(message or label, "invalid_request_error", code), retryable=False)
    return UpstreamError(f"{label}: unexpected status", retryable=True)
