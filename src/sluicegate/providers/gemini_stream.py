"""Gemini ``streamGenerateContent?alt=sse`` events → canonical ``ChatChunk``s (PROTOCOL §4.2).

Also the pieces the non-streaming path shares: finish reasons, usage, and tool-call ids.
"""

from __future__ import annotations

import secrets
from typing import Any

import orjson

from sluicegate.errors import GatewayError, UpstreamError
from sluicegate.types import ChatChunk, ChoiceDelta, Usage

SAFETY_REASONS = frozenset(
    {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY", "LANGUAGE", "OTHER"}
)
# Gemini 3 rejects a replayed function call without the thought signature it came with. OpenAI
# clients round-trip only the tool call id, so the signature rides inside the id after this marker.
SIGNATURE_MARK = "__thought__"


def finish_reason(reason: Any, *, had_tool_calls: bool) -> str:
    if reason == "MAX_TOKENS":
        return "length"
    if reason in SAFETY_REASONS:
        return "content_filter"
    # STOP, MALFORMED_FUNCTION_CALL, FINISH_REASON_UNSPECIFIED and future values: Gemini says STOP
    # even when it called functions, and a client only runs the calls when told "tool_calls".
    return "tool_calls" if had_tool_calls else "stop"


def _n(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def usage_from_gemini(raw: Any) -> Usage:
    if not isinstance(raw, dict):
        return Usage()
    prompt = _n(raw.get("promptTokenCount")) + _n(raw.get("toolUsePromptTokenCount"))
    candidates = _n(raw.get("candidatesTokenCount"))
    thoughts = _n(raw.get("thoughtsTokenCount"))
    total = raw.get("totalTokenCount")
    # candidatesTokenCount excludes thoughts on the Gemini API, but some versions fold them in;
    # the total tells which (then prompt + candidates already equals it).
    inclusive = isinstance(total, int) and thoughts > 0 and total == prompt + candidates
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=candidates if inclusive else candidates + thoughts,
        cached_tokens=_n(raw.get("cachedContentTokenCount")),
        reasoning_tokens=thoughts,
    )


def tool_call_id(part: dict[str, Any], call: dict[str, Any], fallback: str) -> str:
    base = call.get("id") if isinstance(call.get("id"), str) and call.get("id") else fallback
    signature = part.get("thoughtSignature")
    if isinstance(signature, str) and signature:
        return f"{base}{SIGNATURE_MARK}{signature}"
    return str(base)


def new_id_seed() -> str:
    return secrets.token_hex(6)


def stream_error(data: dict[str, Any]) -> GatewayError:
    err = data.get("error")
    err = err if isinstance(err, dict) else {}
    status = str(err.get("status") or "UNKNOWN")
    message = str(err.get("message") or "Gemini stream reported an error")
    return UpstreamError(f"Gemini {status}: {message}", retryable=status in ("UNAVAILABLE", "INTERNAL"))


class StreamTranslator:
    """Feeds on the JSON of each ``data:`` event of one Gemini stream; ``finish()`` at end of body.

    Tool-call ids are ``call_<seed>_<k>`` unless Gemini gives its own; pass ``id_seed`` for
    deterministic ids in tests. ``content_sent`` says whether any content or tool call went out.
    """

    def __init__(self, include_reasoning: bool, id_seed: str | None = None) -> None:
        self.include_reasoning = include_reasoning
        self.done = False  # a finish chunk was emitted
        self.content_sent = False
        self.model_version: str | None = None
        self.response_id: str | None = None
        self._seed = id_seed if id_seed is not None else new_id_seed()
        self._started = False
        self._finished = False  # finish() ran
        self._tool_count = 0
        self._usage_raw: Any = None

    @property
    def usage(self) -> Usage:
        return usage_from_gemini(self._usage_raw)

    def feed(self, data: dict[str, Any]) -> list[ChatChunk]:
        if "error" in data and "candidates" not in data:
            raise stream_error(data)
        if data.get("usageMetadata") is not None:
            self._usage_raw = data["usageMetadata"]  # cumulative: the latest report wins
        if self.done:
            return []
        out: list[ChatChunk] = []
        if not self._started:
            self._started = True
            self.model_version = data.get("modelVersion")
            self.response_id = data.get("responseId")
            out.append(ChatChunk(choices=[ChoiceDelta(index=0, delta={"role": "assistant", "content": ""})]))
        candidates = data.get("candidates")
        if not candidates:
            feedback = data.get("promptFeedback")
            if isinstance(feedback, dict) and feedback.get("blockReason"):
                out.append(self._finish_chunk("content_filter"))
            return out
        candidate = candidates[0] if isinstance(candidates[0], dict) else {}
        content = candidate.get("content")
        parts = content.get("parts") if isinstance(content, dict) else None
        for part in parts or ():
            if isinstance(part, dict):
                self._part(part, out)
        reason = candidate.get("finishReason")
        if reason:
            out.append(self._finish_chunk(finish_reason(reason, had_tool_calls=self._tool_count > 0)))
        return out

    def _part(self, part: dict[str, Any], out: list[ChatChunk]) -> None:
        text = part.get("text")
        if isinstance(text, str):
            if not text:
                return
            if part.get("thought"):
                if self.include_reasoning:
                    self.content_sent = True
                    out.append(_delta({"reasoning_content": text}))
                return
            self.content_sent = True
            out.append(_delta({"content": text}))
            return
        call = part.get("functionCall")
        if isinstance(call, dict):
            k = self._tool_count
            self._tool_count += 1
            self.content_sent = True
            opening = {
                "index": k,
                "id": tool_call_id(part, call, f"call_{self._seed}_{k}"),
                "type": "function",
                "function": {"name": str(call.get("name") or ""), "arguments": _args(call.get("args"))},
            }
            out.append(_delta({"tool_calls": [opening]}))

    def _finish_chunk(self, reason: str) -> ChatChunk:
        self.done = True
        return ChatChunk(choices=[ChoiceDelta(index=0, delta={}, finish_reason=reason)])

    def finish(self) -> list[ChatChunk]:
        """Call at the end of the body (Gemini sends no ``[DONE]``): the usage chunk, or an error."""
        if self._finished:
            return []
        self._finished = True
        if not self.done:
            raise UpstreamError("Gemini stream ended without a finish reason", retryable=not self.content_sent)
        return [ChatChunk(choices=[], usage=self.usage)]


def _args(args: Any) -> str:
    # Gemini sends whole calls with an args object; "{}" keeps the joined arguments valid JSON.
    return orjson.dumps(args).decode() if isinstance(args, dict) and args else "{}"


def _delta(delta: dict[str, Any]) -> ChatChunk:
    return ChatChunk(choices=[ChoiceDelta(index=0, delta=delta)])
