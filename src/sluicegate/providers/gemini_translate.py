"""OpenAI chat requests ⇄ Gemini ``generateContent`` / ``streamGenerateContent``, without I/O (PROTOCOL §4.2).

Decisions a reader should know:

* Reasoning is opt-in through ``reasoning_effort`` (``low``/``medium``/``high`` → ``thinkingBudget``
  1024/8192/24576 with ``includeThoughts``; ``none``/``minimal`` → budget 0), or a Gemini-style
  ``thinking_config`` object passed as ``thinkingConfig``. Without it Gemini's default applies and
  thought parts are not requested.
* ``n > 1`` is refused (400): ``candidateCount`` exists, but one choice per stream is what the rest
  of the gateway assumes for non-OpenAI providers.
* Tool schemas go in ``parametersJsonSchema`` (full JSON Schema) rather than ``parameters`` (an
  OpenAPI subset that rejects common keys such as ``additionalProperties``).
* Tool results are matched to their function name through the ``tool_call_id`` of the assistant
  turn that made the call; Gemini's ``functionResponse`` needs the name, OpenAI's tool message lacks it.
* ``user`` and ``parallel_tool_calls`` have no Gemini equivalent and are ignored.
* Upstream 401/403/404 and invalid-key 400s are our configuration's fault: 502, provider text withheld.
"""

from __future__ import annotations

import mimetypes
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
from sluicegate.providers.gemini_stream import (
    SIGNATURE_MARK,
    StreamTranslator,
    finish_reason,
    new_id_seed,
    tool_call_id,
    usage_from_gemini,
)
from sluicegate.types import ChatRequest, Completion

__all__ = ["StreamTranslator", "build_request", "parse_response", "translate_error", "wants_reasoning"]

THINKING_BUDGETS: Mapping[str, int] = {"none": 0, "minimal": 0, "low": 1024, "medium": 8192, "high": 24576}
CONTEXT_OVERFLOW_HINTS = ("exceeds the maximum number of tokens", "input token count", "context window")


def wants_reasoning(req: ChatRequest) -> bool:
    """Whether the client opted into thought parts, hence into ``reasoning_content`` deltas."""
    config = _thinking_config(req)
    return bool(config and config.get("includeThoughts"))


def build_request(req: ChatRequest, default_max_tokens: int) -> dict[str, Any]:
    """The JSON body for ``models/{model}:generateContent`` and ``:streamGenerateContent?alt=sse``."""
    refuse_n(req, "Gemini")
    body = req.params
    system, contents = _contents(req.messages)
    out: dict[str, Any] = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": [{"text": t} for t in system]}
    config: dict[str, Any] = {"maxOutputTokens": max_tokens_of(req, default_max_tokens)}
    for key, name in (("temperature", "temperature"), ("top_p", "topP")):
        value = number(req, key)
        if value is not None:
            config[name] = value
    for key, name in (("presence_penalty", "presencePenalty"), ("frequency_penalty", "frequencyPenalty")):
        value = number(req, key)
        if value is not None and value != 0:
            config[name] = value
    if isinstance(body.get("top_k"), int) and not isinstance(body.get("top_k"), bool):
        config["topK"] = body["top_k"]
    if isinstance(body.get("seed"), int) and not isinstance(body.get("seed"), bool):
        config["seed"] = body["seed"]
    stops = stop_sequences(req)
    if stops:
        config["stopSequences"] = stops
    config.update(_response_format(body.get("response_format")))
    thinking = _thinking_config(req)
    if thinking is not None:
        config["thinkingConfig"] = thinking
    out["generationConfig"] = config
    declarations = _tools(body.get("tools"))
    if declarations:
        out["tools"] = [{"functionDeclarations": declarations}]
        tool_config = _tool_config(body.get("tool_choice"))
        if tool_config is not None:
            out["toolConfig"] = tool_config
    return out


def _thinking_config(req: ChatRequest) -> dict[str, Any] | None:
    raw = req.params.get("thinking_config")
    if isinstance(raw, dict):
        return dict(raw)
    effort = req.params.get("reasoning_effort")
    if effort is None:
        return None
    if effort not in THINKING_BUDGETS:
        raise InvalidRequest("reasoning_effort must be none, minimal, low, medium or high", param="reasoning_effort")
    budget = THINKING_BUDGETS[effort]
    return {"thinkingBudget": budget, "includeThoughts": True} if budget else {"thinkingBudget": 0}


def _response_format(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict) or raw.get("type") in (None, "text"):
        return {}
    if raw.get("type") == "json_object":
        return {"responseMimeType": "application/json"}
    if raw.get("type") == "json_schema":
        schema = raw.get("json_schema")
        out: dict[str, Any] = {"responseMimeType": "application/json"}
        if isinstance(schema, dict) and isinstance(schema.get("schema"), dict):
            out["responseJsonSchema"] = schema["schema"]
        return out
    raise InvalidRequest("response_format type must be text, json_object or json_schema", param="response_format")


def _contents(raw: list[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    system: list[str] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool_call_id → function name, from earlier assistant turns
    for i, msg in enumerate(raw):
        role = msg.get("role")
        param = f"messages[{i}]"
        if role in ("system", "developer"):
            text = text_of(msg.get("content"), f"{param}.content")
            if text:
                system.append(text)
            continue
        if role == "user":
            parts = _user_parts(msg.get("content"), f"{param}.content")
        elif role == "assistant":
            parts = _model_parts(msg, param, names)
        elif role == "tool":
            parts = [_function_response(msg, param, names)]
        else:
            raise InvalidRequest(f"unsupported role {role!r}", param=f"{param}.role")
        if not parts:
            continue
        gemini_role = "model" if role == "assistant" else "user"
        # All responses to one turn's calls belong in one user turn, as Gemini expects.
        if contents and contents[-1]["role"] == gemini_role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": gemini_role, "parts": parts})
    return system, contents


def _user_parts(content: Any, param: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    if not isinstance(content, list):
        raise InvalidRequest("user content must be a string or an array of content parts", param=param)
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        pparam = f"{param}[{j}]"
        ptype = part.get("type") if isinstance(part, dict) else None
        if ptype == "text" and isinstance(part, dict):
            if part.get("text"):
                parts.append({"text": str(part["text"])})
        elif ptype == "image_url" and isinstance(part, dict):
            parts.append(_image_part(part.get("image_url"), f"{pparam}.image_url"))
        else:
            raise InvalidRequest(f"content part type {ptype!r} is not supported for Gemini models", param=pparam)
    return parts


def _image_part(image: Any, param: str) -> dict[str, Any]:
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise InvalidRequest("image_url.url must be a string", param=f"{param}.url")
    if url.startswith("data:"):
        mime, data = parse_data_url(url, f"{param}.url")
        return {"inlineData": {"mimeType": mime, "data": data}}
    if url.startswith(("http://", "https://", "gs://")):
        mime = mimetypes.guess_type(url.split("?", 1)[0])[0] or "image/jpeg"
        return {"fileData": {"mimeType": mime, "fileUri": url}}
    raise InvalidRequest("image_url.url must be an http(s) URL or a base64 data URL", param=f"{param}.url")


def _model_parts(msg: Mapping[str, Any], param: str, names: dict[str, str]) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    content = msg.get("content")
    if isinstance(content, list):
        content = text_of([p for p in content if not (isinstance(p, dict) and p.get("type") == "refusal")], param)
    elif content is not None and not isinstance(content, str):
        raise InvalidRequest("assistant content must be a string, an array or null", param=f"{param}.content")
    if content:
        parts.append({"text": content})
    for j, call in enumerate(msg.get("tool_calls") or []):
        cparam = f"{param}.tool_calls[{j}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(call, dict) or not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise InvalidRequest("tool call needs function.name", param=f"{cparam}.function")
        args_raw = fn.get("arguments") or "{}"
        try:
            args = orjson.loads(args_raw) if isinstance(args_raw, str | bytes) else args_raw
        except orjson.JSONDecodeError:
            bad = "tool call arguments are not valid JSON"
            raise InvalidRequest(bad, param=f"{cparam}.function.arguments") from None
        if not isinstance(args, dict):
            raise InvalidRequest("tool call arguments must be a JSON object", param=f"{cparam}.function.arguments")
        check_arguments_depth(args, f"{cparam}.function.arguments")
        call_id = str(call.get("id") or "")
        names[call_id] = fn["name"]
        part: dict[str, Any] = {"functionCall": {"name": fn["name"], "args": args}}
        _, mark, signature = call_id.partition(SIGNATURE_MARK)
        if mark and signature:
            part["thoughtSignature"] = signature
        parts.append(part)
    return parts


def _function_response(msg: Mapping[str, Any], param: str, names: Mapping[str, str]) -> dict[str, Any]:
    call_id = msg.get("tool_call_id")
    if not isinstance(call_id, str) or call_id not in names:
        bad = "tool_call_id does not match a tool call of an earlier assistant message"
        raise InvalidRequest(bad, param=f"{param}.tool_call_id")
    text = text_of(msg.get("content"), f"{param}.content")
    try:
        value: Any = orjson.loads(text) if text else ""
    except orjson.JSONDecodeError:
        value = text
    check_arguments_depth({"output": value}, f"{param}.content")
    # functionResponse.response must be an object; Google documents "output" for a plain result.
    response = value if isinstance(value, dict) else {"output": value}
    return {"functionResponse": {"name": names[call_id], "response": response}}


def _tools(raw: Any) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise InvalidRequest("tools must be an array", param="tools")
    declarations: list[dict[str, Any]] = []
    for i, tool in enumerate(raw):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(tool, dict) or tool.get("type", "function") != "function" or not isinstance(fn, dict):
            raise InvalidRequest("only function tools are supported", param=f"tools[{i}]")
        if not isinstance(fn.get("name"), str):
            raise InvalidRequest("tool function needs a name", param=f"tools[{i}].function.name")
        decl: dict[str, Any] = {"name": fn["name"]}
        if isinstance(fn.get("description"), str):
            decl["description"] = fn["description"]
        schema = fn.get("parameters")
        if isinstance(schema, dict) and schema.get("properties"):
            decl["parametersJsonSchema"] = schema
        declarations.append(decl)
    return declarations


def _tool_config(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    modes = {"auto": "AUTO", "required": "ANY", "none": "NONE"}
    if isinstance(choice, str) and choice in modes:
        return {"functionCallingConfig": {"mode": modes[choice]}}
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict) and choice["function"].get("name"):
        name = str(choice["function"]["name"])
        return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [name]}}
    raise InvalidRequest("tool_choice must be auto, none, required or a named function", param="tool_choice")


def parse_response(body: dict[str, Any], *, include_reasoning: bool = False) -> Completion:
    """A non-streaming ``generateContent`` response as one OpenAI choice."""
    texts: list[str] = []
    thoughts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    candidates = body.get("candidates") or []
    candidate = candidates[0] if candidates and isinstance(candidates[0], dict) else {}
    content = candidate.get("content")
    seed = new_id_seed()
    for part in (content.get("parts") if isinstance(content, dict) else None) or ():
        if not isinstance(part, dict):
            continue
        if isinstance(part.get("text"), str):
            (thoughts if part.get("thought") else texts).append(part["text"])
        elif isinstance(part.get("functionCall"), dict):
            call = part["functionCall"]
            args = call.get("args")
            tool_calls.append(
                {
                    "id": tool_call_id(part, call, f"call_{seed}_{len(tool_calls)}"),
                    "type": "function",
                    "function": {
                        "name": str(call.get("name") or ""),
                        "arguments": orjson.dumps(args).decode() if isinstance(args, dict) and args else "{}",
                    },
                }
            )
    feedback = body.get("promptFeedback")
    if not candidates and isinstance(feedback, dict) and feedback.get("blockReason"):
        reason = "content_filter"
    else:
        reason = finish_reason(candidate.get("finishReason"), had_tool_calls=bool(tool_calls))
    message: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts or not tool_calls else None,
        "refusal": None,
    }
    if tool_calls:
        message["tool_calls"] = tool_calls
    if include_reasoning and thoughts:
        message["reasoning_content"] = "".join(thoughts)
    choice = {"index": 0, "message": message, "finish_reason": reason, "logprobs": None}
    return Completion(choices=[choice], usage=usage_from_gemini(body.get("usageMetadata")))


def _error_fields(body: bytes | dict[str, Any] | list[Any] | None) -> tuple[str, str, list[Any]]:
    if isinstance(body, bytes | bytearray):
        try:
            body = orjson.loads(body)
        except orjson.JSONDecodeError:
            body = None
    if isinstance(body, list) and body:  # the JSON-array framing of a stream without alt=sse
        body = body[0]
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        return "", "", []
    details = err.get("details")
    return str(err.get("status") or ""), str(err.get("message") or ""), details if isinstance(details, list) else []


def _retry_delay(details: list[Any]) -> float | None:
    # google.rpc.RetryInfo carries e.g. {"retryDelay": "37s"} when the quota error has a hint.
    for detail in details:
        delay = detail.get("retryDelay") if isinstance(detail, dict) else None
        if isinstance(delay, str) and delay.endswith("s"):
            try:
                return max(0.0, float(delay[:-1]))
            except ValueError:
                return None
    return None


def _envelope(message: str, etype: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": etype, "param": None, "code": code}}


def translate_error(
    status: int, body: bytes | dict[str, Any] | list[Any] | None, headers: Mapping[str, str]
) -> GatewayError:
    """A Gemini HTTP error (Google's ``{"error":{"code","message","status"}}``) as the gateway error to raise."""
    gstatus, message, details = _error_fields(body)
    retry_after = retry_after_seconds(headers)
    label = f"Gemini {gstatus or 'error'} (HTTP {status})"
    reasons = {d.get("reason") for d in details if isinstance(d, dict)}
    bad_key = "API_KEY_INVALID" in reasons or "API key not valid" in message
    if status in (401, 403, 404) or bad_key or gstatus in ("UNAUTHENTICATED", "PERMISSION_DENIED", "NOT_FOUND"):
        # Our key or upstream model name is wrong: not the client's fault; the text may name internals.
        return UpstreamError(f"{label}: the deployment is misconfigured", retryable=True)
    if status == 429 or gstatus == "RESOURCE_EXHAUSTED":
        envelope = _envelope(message or "rate limited by the upstream", "rate_limit_error", "rate_limit_exceeded")
        return UpstreamStatus(429, envelope, retryable=True, retry_after=retry_after or _retry_delay(details))
    if status == 503 or gstatus == "UNAVAILABLE":
        return UpstreamUnavailable(f"{label}: {message or 'unavailable'}", retryable=True, retry_after=retry_after)
    if status == 504 or gstatus == "DEADLINE_EXCEEDED":
        return UpstreamTimeout(f"{label}: {message or 'deadline exceeded'}", retryable=True)
    if status >= 500:
        return UpstreamError(f"{label}: {message or 'server error'}", retryable=True, retry_after=retry_after)
    if gstatus == "FAILED_PRECONDITION":
        # e.g. billing not enabled or the region unsupported: a deployment problem, not the request's.
        return UpstreamError(f"{label}: {message}", retryable=True)
    if 400 <= status < 500:
        lowered = message.lower()
        code = "context_length_exceeded" if any(h in lowered for h in CONTEXT_OVERFLOW_HINTS) else None
        return UpstreamStatus(status, _envelope(message or label, "invalid_request_error", code), retryable=False)
    return UpstreamError(f"{label}: unexpected status", retryable=True)
