"""Prompt counting: the per-message cache never changes a count and stays bounded."""

from __future__ import annotations

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
