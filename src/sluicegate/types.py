"""Typed contracts between the layers: the request, the canonical stream chunk, usage, the caller.

Adapters translate their provider's wire format into these and nothing else; the stream encoder,
policies and metering only ever see these. Deltas stay OpenAI-shaped dicts on purpose: the OpenAI
pass-through path (the hot path) then costs one decode and one encode per chunk, and fields we do
not model (``reasoning_content``, ``audio``, ...) pass through untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Usage:
    """Token usage of one response; ``prompt_tokens`` includes cached and cache-write tokens."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    estimated: bool = False

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_openai(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }
        prompt_details: dict[str, int] = {"cached_tokens": self.cached_tokens}
        if self.cache_write_tokens:
            prompt_details["cache_write_tokens"] = self.cache_write_tokens
        out["prompt_tokens_details"] = prompt_details
        out["completion_tokens_details"] = {"reasoning_tokens": self.reasoning_tokens}
        return out

    @classmethod
    def from_openai(cls, raw: dict[str, Any]) -> Usage:
        """Read an OpenAI ``usage`` object; tolerant of missing and null details."""
        prompt_details = raw.get("prompt_tokens_details") or {}
        completion_details = raw.get("completion_tokens_details") or {}
        return cls(
            prompt_tokens=_int(raw.get("prompt_tokens")),
            completion_tokens=_int(raw.get("completion_tokens")),
            cached_tokens=_int(prompt_details.get("cached_tokens")),
            cache_write_tokens=_int(prompt_details.get("cache_write_tokens")),
            reasoning_tokens=_int(completion_details.get("reasoning_tokens")),
        )


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


@dataclass(slots=True)
class ChoiceDelta:
    """One choice's part of a stream chunk, OpenAI-shaped (``delta`` as in ``chat.completion.chunk``)."""

    index: int
    delta: dict[str, Any]
    finish_reason: str | None = None
    logprobs: Any = None


@dataclass(slots=True)
class ChatChunk:
    """One canonical stream event from an adapter: choice deltas, and/or the usage so far."""

    choices: list[ChoiceDelta]
    usage: Usage | None = None


@dataclass(slots=True)
class Completion:
    """A non-streaming answer: OpenAI ``choices`` objects, usage, and extra top-level fields to keep."""

    choices: list[dict[str, Any]]
    usage: Usage | None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class ChatRequest:
    """A validated client request, in the canonical (OpenAI chat) shape whatever API it came in by.

    ``messages`` is the one copy of the conversation: DLP redaction and prefills rewrite it, and every
    adapter reads it from here. ``params`` holds every other field the client sent, validated or unknown
    (governance fields such as ``metadata`` removed), as an OpenAI-compatible upstream receives them
    beside its own ``model`` and these ``messages``; adapters for other providers read the typed fields.
    """

    model: str
    messages: list[dict[str, Any]]
    params: dict[str, Any]
    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = None
    n: int = 1
    user: str | None = None
    metadata: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Limits:
    """Rate limits and a credit budget for one key or one group; None = unlimited."""

    rpm: int | None = None
    tpm: int | None = None
    budget_micro: int | None = None
    budget_period: str = "total"  # total | day | month

    @property
    def any(self) -> bool:
        return self.rpm is not None or self.tpm is not None or self.budget_micro is not None


NO_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the master key, or an API key with its group and model allow-lists."""

    key_id: str
    key_prefix: str
    name: str
    group: str | None = None
    is_admin: bool = False
    models: tuple[str, ...] | None = None  # group grants (patterns); None = everything (admin)
    key_models: tuple[str, ...] | None = None  # per-key narrowing; None = no narrowing
    key_limits: Limits = NO_LIMITS
    group_limits: Limits = NO_LIMITS
    # The group's DLP override: {"request": {...} | None, "response": {...} | None}; absent keys use the default.
    group_dlp: dict[str, Any] | None = None
