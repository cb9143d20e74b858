"""A budget reservation enforced on the way back: an answer ends at the completion tokens it reserved.

The reservation covers ``max_tokens`` (per choice); an upstream that ignores it would spend past the budget.
So a request holding a reservation has each choice cut at that many tokens, finished with ``length``, and
its usage counted here (flagged ``estimated``) so that the client's usage and the ledger agree with what was
delivered. A stream cut this way also ends its upstream request: the filter emits the finish and the usage,
which is all the relay waits for, and the relay then closes the upstream.

Counting costs nothing far from the limit: every BPE token is at least one byte, so UTF-8 bytes bound the
tokens from above and text is only tokenized once its bytes could reach the limit; then only the text since
the last exact count is. The count is therefore a sum of separately tokenized pieces, which is what is
enforced and billed (a piece boundary can only add a token, never hide one, in practice).
"""

from __future__ import annotations

from typing import Any

from ..tokens import TokenCounter
from ..types import ChatChunk, ChoiceDelta, Completion, Usage

# Generated text, in the order it is counted and cut. ``reasoning_content`` is billed as completion tokens too.
_TEXT_FIELDS = ("content", "refusal", "reasoning_content")


def _bytes(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _text_of(obj: dict[str, Any]) -> str:
    """The generated text of a delta or a message, in counting order."""
    parts = [v for f in _TEXT_FIELDS if isinstance(v := obj.get(f), str) and v]
    calls = obj.get("tool_calls")
    if isinstance(calls, list):
        for call in calls:
            fn = call.get("function") if isinstance(call, dict) else None
            if isinstance(fn, dict):
                parts.extend(v for k in ("name", "arguments") if isinstance(v := fn.get(k), str) and v)
    return parts[0] if len(parts) == 1 else "".join(parts)


def _truncate(obj: dict[str, Any], keep: int) -> dict[str, Any]:
    """``obj`` with its generated text cut to the first ``keep`` characters (counting order)."""
    out = dict(obj)
    for f in _TEXT_FIELDS:
        value = out.get(f)
        if isinstance(value, str):
            out[f] = value[:keep]
            keep = max(0, keep - len(value))
    calls = out.get("tool_calls")
    if isinstance(calls, list):
        kept = []
        for call in calls:
            fn = call.get("function") if isinstance(call, dict) else None
            if not isinstance(fn, dict):
                continue
            if keep <= 0:
                break
            fn = dict(fn)
            for k in ("name", "arguments"):
                value = fn.get(k)
                if isinstance(value, str):
                    fn[k] = value[:keep]
                    keep = max(0, keep - len(value))
            kept.append({**call, "function": fn})
        if kept:
            out["tool_calls"] = kept
        else:
            del out["tool_calls"]
    return out


def _prefix_chars(tokens: TokenCounter, ids: list[int]) -> int:
    """How many characters the text of ``ids`` has (a character split by the cut is left out)."""
    return len(b"".join(tokens.token_bytes(t) for t in ids).decode("utf-8", "ignore"))


class _Tally:
    """What one choice has delivered: ``counted`` tokens exactly, plus ``pending`` text bounded by its bytes."""

    __slots__ = ("counted", "finished", "pending", "pending_bytes")

    def __init__(self) -> None:
        self.counted = 0
        self.pending: list[str] = []
        self.pending_bytes = 0
        self.finished = False

    def admit(self, text: str, limit: int, tokens: TokenCounter) -> int | None:
        """Take ``text`` if it fits under ``limit`` tokens and return None; else the characters of it that fit."""
        size = _bytes(text)
        if self.counted + self.pending_bytes + size <= limit:
            self.pending.append(text)
            self.pending_bytes += size
            return None
        held = "".join(self.pending)
        ids = tokens.encode(held + text)
        self.pending.clear()
        self.pending_bytes = 0
        if self.counted + len(ids) <= limit:
            self.counted += len(ids)
            return None
        room = limit - self.counted
        self.counted = limit
        return max(0, _prefix_chars(tokens, ids[:room]) - len(held))

    def total(self, tokens: TokenCounter) -> int:
        if self.pending:
            self.counted += tokens.count("".join(self.pending))
            self.pending.clear()
            self.pending_bytes = 0
        return self.counted


class OutputCap:
    """Stream filter: ends each choice at ``limit`` completion tokens (``finish_reason: length``).

    Once a choice was cut, the upstream's usage no longer describes what the client got: it is dropped, and
    when every choice has finished the filter emits the usage it counted (prompt: the gateway's own count).
    """

    def __init__(self, limit: int, choices: int, prompt_tokens: int, tokens: TokenCounter) -> None:
        self._limit = limit
        self._choices = max(1, choices)
        self._prompt = prompt_tokens
        self._tokens = tokens
        self._tallies: dict[int, _Tally] = {}
        self._cut = False
        self._usage_sent = False

    def feed(self, batch: list[ChatChunk]) -> list[ChatChunk]:
        if self._usage_sent:
            return []
        changed = False
        out: list[ChatChunk] = []
        for chunk in batch:
            choices = chunk.choices
            kept: list[ChoiceDelta] | None = None  # a copy only once something changes
            for i, choice in enumerate(choices):
                replaced = self._choice(choice)
                if replaced is not choice and kept is None:
                    kept = list(choices[:i])
                if kept is not None and replaced is not None:
                    kept.append(replaced)
            usage = chunk.usage
            if self._cut and usage is not None:
                usage = None  # counts tokens the client never got
            if kept is None and usage is chunk.usage:
                out.append(chunk)
                continue
            changed = True
            if kept or usage is not None:
                out.append(ChatChunk(kept if kept is not None else choices, usage))
        if self._cut and self._finished():
            self._usage_sent = True
            out.append(ChatChunk([], self._counted_usage()))
            changed = True
        return out if changed else batch

    def _choice(self, choice: ChoiceDelta) -> ChoiceDelta | None:
        """The choice as it may pass: itself, cut short (a new object), or None (it had already finished)."""
        tally = self._tallies.get(choice.index)
        if tally is None:
            tally = self._tallies[choice.index] = _Tally()
        elif tally.finished:
            return None
        text = _text_of(choice.delta) if choice.delta else ""
        if text:
            keep = tally.admit(text, self._limit, self._tokens)
            if keep is not None:
                tally.finished = self._cut = True
                return ChoiceDelta(choice.index, _truncate(choice.delta, keep), "length")
        if choice.finish_reason is not None:
            tally.finished = True
        return choice

    def _finished(self) -> bool:
        done = sum(1 for t in self._tallies.values() if t.finished)
        return done >= self._choices

    def _counted_usage(self) -> Usage:
        completion = sum(t.total(self._tokens) for t in self._tallies.values())
        return Usage(prompt_tokens=self._prompt, completion_tokens=completion, estimated=True)

    def flush(self) -> list[ChatChunk]:
        """At the end of a stream some choices never finished: the usage is still the counted one."""
        if self._cut and not self._usage_sent:
            self._usage_sent = True
            return [ChatChunk([], self._counted_usage())]
        return []


def cap_completion(completion: Completion, limit: int, prompt_tokens: int, tokens: TokenCounter) -> Completion:
    """The non-streaming answer with each choice cut at ``limit`` completion tokens (``finish_reason: length``);
    when one was cut, the usage counts what is left (the upstream's prompt count is kept when it gave one)."""
    choices = completion.choices
    counts: list[int | None] = []
    cut: list[dict[str, Any]] | None = None
    for i, choice in enumerate(choices):
        message = choice.get("message") if isinstance(choice, dict) else None
        text = _text_of(message) if isinstance(message, dict) else ""
        if _bytes(text) <= limit:
            counts.append(None)
            continue
        ids = tokens.encode(text)
        if len(ids) <= limit:
            counts.append(len(ids))
            continue
        assert isinstance(message, dict)
        if cut is None:
            cut = list(choices)
        kept = _truncate(message, _prefix_chars(tokens, ids[:limit]))
        cut[i] = {**choice, "message": kept, "finish_reason": "length"}
        counts.append(limit)
    if cut is None:
        return completion
    completion_tokens = 0
    for choice, count in zip(cut, counts, strict=True):
        if count is None:
            message = choice.get("message") if isinstance(choice, dict) else None
            count = tokens.count(_text_of(message)) if isinstance(message, dict) else 0
        completion_tokens += count
    given = completion.usage
    usage = Usage(
        prompt_tokens=given.prompt_tokens if given is not None else prompt_tokens,
        cached_tokens=given.cached_tokens if given is not None else 0,
        cache_write_tokens=given.cache_write_tokens if given is not None else 0,
        completion_tokens=completion_tokens,
        estimated=True,
    )
    return Completion(cut, usage, completion.extra)
