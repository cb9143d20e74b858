"""A faithful local Gemini API: ``POST /v1beta/models/{model}:generateContent`` (or ``/v1/``) and
``:streamGenerateContent?alt=sse`` (bare ``data:`` events, no event names, no ``[DONE]``: the end of the
body is the end of the stream). Without ``alt=sse`` the stream is a JSON array, as the real API does.

The key goes in ``x-goog-api-key`` (or ``?key=``): none → 403 PERMISSION_DENIED; ``bad-key`` → the
real API's 400 INVALID_ARGUMENT with reason API_KEY_INVALID.

Behaviour is chosen by the text of the LAST user turn (its last text part):

    scenario:doc_hello        the documented streaming shape: three text chunks, STOP, usage
    scenario:doc_function     the documented function-calling answer: set_light_values(brightness=25,
                              color_temp="warm"), finishReason STOP
    scenario:tool_calls       a text chunk, then two whole functionCalls (get_weather, get_time without
                              args) in one chunk, STOP
    scenario:thinking         thought parts (thought: true), then text; thoughtsTokenCount in usage
    scenario:cache_usage      text; cachedContentTokenCount 60 of promptTokenCount 100
    scenario:max_tokens       text, finishReason MAX_TOKENS
    scenario:safety           text, finishReason SAFETY with safetyRatings
    scenario:recitation       finishReason RECITATION
    scenario:blocked          no candidates, promptFeedback.blockReason SAFETY
    scenario:no_finish        text chunks, then the body ends without any finishReason
    scenario:error_mid_stream text, then a data event holding Google's error envelope (503 UNAVAILABLE)
    scenario:rate_limited     HTTP 429 RESOURCE_EXHAUSTED with a RetryInfo retryDelay of 37s
    scenario:prompt_too_long  HTTP 400 INVALID_ARGUMENT "The input token count (...) exceeds the maximum ..."
    scenario:invalid_argument HTTP 400 INVALID_ARGUMENT
    scenario:unavailable      HTTP 503 UNAVAILABLE "The model is overloaded. ..."
    scenario:internal         HTTP 500 INTERNAL
    scenario:not_found        HTTP 404 NOT_FOUND (unknown model)
    anything else             an echo: "You said: <text>" in two chunks, STOP
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from tests.fakes._server import ThreadedServer, last_user_text

RESPONSE_ID = "Yx5DaeGWKJ2hz7IPhqjT4Qc"
HTTP_ERRORS: dict[str, tuple[int, str, str, list[dict[str, Any]]]] = {
    "rate_limited": (
        429,
        "RESOURCE_EXHAUSTED",
        "You exceeded your current quota, please check your plan and billing details.",
        [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "37s"}],
    ),
    "prompt_too_long": (
        400,
        "INVALID_ARGUMENT",
        "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).",
        [],
    ),
    "invalid_argument": (400, "INVALID_ARGUMENT", "Request contains an invalid argument.", []),
    "unavailable": (503, "UNAVAILABLE", "The model is overloaded. Please try again later.", []),
    "internal": (500, "INTERNAL", "An internal error has occurred.", []),
    "not_found": (404, "NOT_FOUND", "models/gemini-nonexistent is not found for API version v1beta.", []),
}


def error_body(code: int, status: str, message: str, details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        err["details"] = details
    return {"error": err}


def _chunk(
    model: str,
    parts: list[dict[str, Any]] | None,
    finish: str | None = None,
    usage: dict[str, Any] | None = None,
    **candidate_extra: Any,
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if parts is not None or finish is not None:
        candidate: dict[str, Any] = {"content": {"parts": parts or [], "role": "model"}, "index": 0}
        if finish is not None:
            candidate["finishReason"] = finish
        candidate.update(candidate_extra)
        out["candidates"] = [candidate]
    if usage is not None:
        out["usageMetadata"] = usage
    out["modelVersion"] = model
    out["responseId"] = RESPONSE_ID
    return out


def _usage(prompt: int, candidates: int | None = None, thoughts: int = 0, cached: int = 0) -> dict[str, Any]:
    usage: dict[str, Any] = {"promptTokenCount": prompt}
    total = prompt + thoughts
    if candidates is not None:
        usage["candidatesTokenCount"] = candidates
        total += candidates
    usage["totalTokenCount"] = total
    if cached:
        usage["cachedContentTokenCount"] = cached
    if thoughts:
        usage["thoughtsTokenCount"] = thoughts
    usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": prompt}]
    return usage


def stream_events(text: str, model: str) -> list[dict[str, Any]]:
    """The ``data:`` payloads the fake streams for a last-user-turn ``text`` (HTTP errors excluded)."""
    scenario = text.removeprefix("scenario:").split(" ", 1)[0] if text.startswith("scenario:") else ""
    if scenario == "doc_hello":
        # Shape of the streaming example in the Gemini docs: usage on every chunk, final counts last.
        return [
            _chunk(model, [{"text": "AI"}], usage=_usage(8)),
            _chunk(model, [{"text": " works by learning patterns"}], usage=_usage(8)),
            _chunk(model, [{"text": " from data."}], "STOP", usage=_usage(8, 12)),
        ]
    if scenario == "doc_function":
        call = {"functionCall": {"name": "set_light_values", "args": {"brightness": 25, "color_temp": "warm"}}}
        return [_chunk(model, [call], "STOP", usage=_usage(96, 23))]
    if scenario == "tool_calls":
        calls: list[dict[str, Any]] = [
            {"functionCall": {"name": "get_weather", "args": {"city": "Paris", "unit": "celsius"}}},
            {"functionCall": {"name": "get_time"}},
        ]
        return [
            _chunk(model, [{"text": "Checking both."}], usage=_usage(40)),
            _chunk(model, calls, "STOP", usage=_usage(40, 21)),
        ]
    if scenario == "thinking":
        return [
            _chunk(model, [{"text": "Let me think about it.", "thought": True}], usage=_usage(20)),
            _chunk(model, [{"text": "The answer is 4."}], "STOP", usage=_usage(20, 6, thoughts=30)),
        ]
    if scenario == "cache_usage":
        return [_chunk(model, [{"text": "Cached answer."}], "STOP", usage=_usage(100, 4, cached=60))]
    if scenario in ("max_tokens", "safety", "recitation"):
        finish = {"max_tokens": "MAX_TOKENS", "safety": "SAFETY", "recitation": "RECITATION"}[scenario]
        extra: dict[str, Any] = {}
        if finish == "SAFETY":
            extra["safetyRatings"] = [
                {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True}
            ]
        return [
            _chunk(model, [{"text": "Partial"}], usage=_usage(7)),
            _chunk(model, [], finish, usage=_usage(7, 3), **extra),
        ]
    if scenario == "blocked":
        blocked = {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": _usage(9)}
        return [{**blocked, "modelVersion": model, "responseId": RESPONSE_ID}]
    if scenario == "no_finish":
        return [_chunk(model, [{"text": "Cut "}], usage=_usage(5)), _chunk(model, [{"text": "off"}], usage=_usage(5))]
    if scenario == "error_mid_stream":
        return [
            _chunk(model, [{"text": "Half an ans"}], usage=_usage(5)),
            error_body(503, "UNAVAILABLE", "The model is overloaded. Please try again later."),
        ]
    return [
        _chunk(model, [{"text": "You said:"}], usage=_usage(9)),
        _chunk(model, [{"text": f" {text}"}], "STOP", usage=_usage(9, 6)),
    ]


def response_body(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``generateContent`` answer equivalent to a stream: parts concatenated, last finish and usage."""
    parts: list[dict[str, Any]] = []
    out: dict[str, Any] = {}
    candidate: dict[str, Any] | None = None
    for event in events:
        for cand in event.get("candidates") or []:
            for part in cand["content"]["parts"]:
                if parts and "text" in part and "text" in parts[-1] and part.get("thought") == parts[-1].get("thought"):
                    parts[-1] = {**parts[-1], "text": parts[-1]["text"] + part["text"]}
                else:
                    parts.append(dict(part))
            candidate = {**cand, "content": {"parts": parts, "role": "model"}}
        for key in ("usageMetadata", "modelVersion", "responseId", "promptFeedback"):
            if key in event:
                out[key] = event[key]
    if candidate is not None:
        out["candidates"] = [candidate]
    return out


class FakeGemini(ThreadedServer):
    def routes(self) -> list[web.RouteDef]:
        # The API serves both versions; google-genai 3.x defaults to v1, the REST docs show v1beta.
        return [web.post("/{version:v1|v1beta}/models/{target}", self.models)]

    async def models(self, request: web.Request) -> web.StreamResponse:
        body = await self.log(request)
        model, _, method = request.match_info["target"].partition(":")
        key = request.headers.get("x-goog-api-key") or request.query.get("key")
        if not key:
            return _error(403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers.")
        if key == "bad-key":
            details = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}]
            return _error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.", details)
        if method not in ("generateContent", "streamGenerateContent"):
            return _error(404, "NOT_FOUND", f"Method {method} not found.")
        if not isinstance(body, dict) or not isinstance(body.get("contents"), list):
            return _error(400, "INVALID_ARGUMENT", 'Invalid JSON payload received. Unknown name "contents".')
        text = last_user_text([c for c in body["contents"] if c.get("role", "user") == "user"])
        scenario = text.removeprefix("scenario:").split(" ", 1)[0] if text.startswith("scenario:") else ""
        if scenario in HTTP_ERRORS:
            status, gstatus, message, details = HTTP_ERRORS[scenario]
            return _error(status, gstatus, message, details)
        events = stream_events(text, model)
        if method == "generateContent":
            if any("error" in e for e in events):
                return _error(503, "UNAVAILABLE", "The model is overloaded. Please try again later.")
            return web.json_response(response_body(events))
        if request.query.get("alt") != "sse":
            return web.json_response(events)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        for event in events:
            await response.write(f"data: {json.dumps(event)}\r\n\r\n".encode())
        await response.write_eof()
        return response


def _error(status: int, gstatus: str, message: str, details: list[dict[str, Any]] | None = None) -> web.Response:
    return web.json_response(error_body(status, gstatus, message, details), status=status)
