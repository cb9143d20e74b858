"""Prompt counting: the per-message cache never changes a count and stays bounded; long texts never hold the loop."""

from __future__ import annotations

import asyncio
import random

from sluicegate import tokens as tokens_module
from sluicegate.tokens import TokenCounter, message_text


def _uncached(counter: TokenCounter, messages: list[dict[str, object]]) -> int:
    # OpenAI's framing: 3 tokens per message plus 3 for the reply primer, around real BPE counts.
    return 3 + sum(3 + counter.count(message_text(m)) for m in messages)


def test_cached_counts_equal_fresh_counts() -> None:
    counter = TokenCounter()
    conversation = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "héllo wörld " * 200},  # longer than the short-key limit: keyed by digest
        {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]},
        {"role": "user", "content": [{"type": "text", "text": "part one"}, {"type": "text", "text": "part two"}]},
        {"role": "user", "content": "lone surrogate \ud800 " * 30},
    ]
    expected = _uncached(TokenCounter(), conversation)
    assert counter.count_messages(conversation) == expected
    assert counter.count_messages(conversation) == expected  # now from the cache
    # A conversation that grows by one turn: the known messages come from the cache, the new one is counted.
    longer = [*conversation, {"role": "user", "content": "and one more question"}]
    assert counter.count_messages(longer) == _uncached(TokenCounter(), longer)
    # Long texts are not kept: every key is short.
    assert all(len(k) <= tokens_module._SHORT_KEY for k in counter._message_counts)


def test_cache_is_bounded_and_evicts_oldest() -> None:
    counter = TokenCounter()
    limit = tokens_module._CACHED_MESSAGES
    for i in range(limit + 100):
        message = {"role": "user", "content": f"message number {i}"}
        assert counter.count_messages([message]) == _uncached(counter, [message])
    assert len(counter._message_counts) == limit
    assert "message number 0" not in counter._message_counts
    assert f"message number {limit + 99}" in counter._message_counts


def _prose(n: int, seed: int) -> str:
    """Words, digits, punctuation and every kind of whitespace run, the shapes the pre-split treats differently."""
    rng = random.Random(seed)
    pieces = ["word", "héllo", "12345", "x", "'s", "...", "🚀", "日本語"]
    pieces += ["\n", "\n\n", "\t", "  ", "   ", "\r\n", " \n"]
    out: list[str] = []
    size = 0
    while size < n:
        piece = rng.choice(pieces) + (" " if rng.random() < 0.7 else "")
        out.append(piece)
        size += len(piece)
    return "".join(out)


def test_long_texts_count_in_pieces_exactly_what_the_whole_would() -> None:
    counter = TokenCounter()
    enc = counter._enc
    for seed in range(3):
        text = _prose(5 * tokens_module.PIECE_CHARS + 123, seed)
        assert counter.count(text) == len(enc.encode_ordinary(text))
    # No word boundary to cut at (CJK, base64): never fewer than the whole, a few more per cut at most.
    for text in ("日本語のテキスト" * 9000, "QUJDREVGR0g" * 9000):
        exact = len(enc.encode_ordinary(text))
        cuts = len(text) // tokens_module.PIECE_CHARS
        assert exact <= counter.count(text) <= exact + 4 * cuts


def test_async_counts_leave_the_loop_free_and_agree_with_sync_counts() -> None:
    counter = TokenCounter()
    counter.warm()
    big = [{"role": "user", "content": _prose(40 * tokens_module.PIECE_CHARS, 7)}]
    small = [{"role": "user", "content": "hello there"}]

    async def run() -> tuple[int, int, int, int]:
        ticks = 0
        done = asyncio.Event()

        async def ticker() -> None:
            nonlocal ticks
            while not done.is_set():
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        n = await counter.count_messages_async(big)
        done.set()
        await task
        return n, ticks, await counter.count_messages_async(small), await counter.count_async(big[0]["content"])

    n, ticks, n_small, n_text = asyncio.run(run())
    counter.close()
    assert n == TokenCounter().count_messages(big) and n_small == TokenCounter().count_messages(small)
    assert n_text == n - 6  # the framing: 3 for the message, 3 for the reply primer
    assert ticks > 1  # other tasks ran while the long prompt was counted in the worker thread
