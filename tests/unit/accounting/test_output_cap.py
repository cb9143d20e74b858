"""The output cap: an answer ends at the completion tokens its budget reservation covers."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from sluicegate.policies.output_cap import OutputCap, cap_completion
from sluicegate.tokens import TokenCounter
from sluicegate.types import ChatChunk, ChoiceDelta, Completion, Usage

PIECES = ("Hello", " from", " the", " fake", " upstream.")  # 6 cl100k tokens: the "." is its own


class CountingTokens(TokenCounter):
    """Counts the characters it tokenized: the cap must not tokenize far from its limit."""

    def __init__(self) -> None:
        super().__init__()
        self.tokenized = 0

    def encode(self, text: str) -> list[int]:
        self.tokenized += len(text)
        return super().encode(text)

    def count(self, text: str) -> int:
        self.tokenized += len(text)
        return super().count(text)


TOKENS = CountingTokens()


def content(index: int, text: str, finish: str | None = None) -> ChatChunk:
    return ChatChunk([ChoiceDelta(index, {"content": text}, finish)])


def relay(cap: OutputCap, batches: list[list[ChatChunk]]) -> list[ChatChunk]:
    out: list[ChatChunk] = []
    for batch in batches:
        out += cap.feed(batch)
    return out + cap.flush()


def text_of(chunks: list[ChatChunk], index: int = 0) -> str:
    return "".join(c.delta.get("content", "") for ch in chunks for c in ch.choices if c.index == index)


def finishes(chunks: list[ChatChunk]) -> list[tuple[int, str]]:
    return [(c.index, c.finish_reason) for ch in chunks for c in ch.choices if c.finish_reason]


def usages(chunks: list[ChatChunk]) -> list[Usage]:
    return [ch.usage for ch in chunks if ch.usage is not None]


def upstream_stream(pieces: tuple[str, ...] = PIECES, usage: int = 5) -> list[list[ChatChunk]]:
    """What an upstream that ignores max_tokens sends: every piece, its finish, its usage."""
    role = ChatChunk([ChoiceDelta(0, {"role": "assistant", "content": ""})])
    return [[role], *[[content(0, p)] for p in pieces], [content(0, "", "stop")],
            [ChatChunk([], Usage(11, usage))]]  # fmt: skip


def test_a_stream_is_cut_at_the_limit_and_counted_here() -> None:
    cap = OutputCap(2, 1, 9, TOKENS)
    out = relay(cap, upstream_stream())
    assert text_of(out) == "Hello from" and finishes(out) == [(0, "length")]
    # The upstream's usage (5 tokens) describes an answer the client never got: replaced by the count.
    assert usages(out) == [Usage(prompt_tokens=9, completion_tokens=2, estimated=True)]
    assert cap.feed([content(0, " more")]) == []  # nothing after the usage: the relay stops reading


def test_far_from_the_limit_nothing_is_tokenized_or_copied() -> None:
    tokens = CountingTokens()
    cap = OutputCap(4096, 1, 9, tokens)
    for batch in upstream_stream():
        assert cap.feed(batch) is batch  # passed through as it came
    assert tokens.tokenized == 0


def test_near_the_limit_only_new_text_is_tokenized() -> None:
    tokens = CountingTokens()
    cap = OutputCap(40, 1, 0, tokens)
    words = [" word"] * 60  # 1 token and 5 bytes each
    out = relay(cap, [[content(0, w)] for w in words])
    assert text_of(out) == " word" * 40 and finishes(out) == [(0, "length")]
    assert tokens.tokenized <= 2 * len(" word" * 40)  # each piece at most twice (once pending, once at the end)


def test_an_answer_under_the_limit_keeps_the_upstreams_usage() -> None:
    cap = OutputCap(6, 1, 9, TOKENS)
    out = relay(cap, upstream_stream())
    assert text_of(out) == "Hello from the fake upstream." and finishes(out) == [(0, "stop")]
    assert usages(out) == [Usage(11, 5)]


def test_each_choice_has_its_own_limit_and_the_usage_waits_for_all() -> None:
    cap = OutputCap(1, 2, 9, TOKENS)
    out = cap.feed([content(0, "Hello"), content(1, "Hi")])
    out += cap.feed([content(0, " there"), content(1, "", "stop")])
    assert finishes(out) == [(0, "length"), (1, "stop")] and text_of(out, 0) == "Hello" and text_of(out, 1) == "Hi"
    assert usages(out) == [Usage(prompt_tokens=9, completion_tokens=2, estimated=True)]


def test_a_cut_never_splits_a_character() -> None:
    cap = OutputCap(3, 1, 0, TOKENS)
    out = relay(cap, [[content(0, p)] for p in ("héllo", " wörld", " 🚀", " 日", "本")])
    ids = TOKENS.encode("héllo wörld 🚀 日本")[:3]
    expected = b"".join(TOKENS.token_bytes(t) for t in ids).decode("utf-8", "ignore")
    assert text_of(out) == expected and TOKENS.count(expected) <= 3


def test_tool_call_arguments_are_cut_too() -> None:
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": ""}}
    args = {"index": 0, "function": {"arguments": '{"query": "a very long query indeed"}'}}  # 9 tokens
    cap = OutputCap(5, 1, 0, TOKENS)
    out = relay(cap, [[ChatChunk([ChoiceDelta(0, {"tool_calls": [call]})])],
                      [ChatChunk([ChoiceDelta(0, {"tool_calls": [args]})])]])  # fmt: skip
    sent = "".join(
        c.delta["tool_calls"][0]["function"].get("arguments", "")
        for ch in out
        for c in ch.choices
        if c.delta.get("tool_calls")
    )
    assert finishes(out) == [(0, "length")] and TOKENS.count("lookup" + sent) <= 5
    full = '{"query": "a very long query indeed"}'
    assert sent and full.startswith(sent) and len(sent) < len(full)


def test_a_stream_ending_before_every_choice_finished_still_gets_the_counted_usage() -> None:
    cap = OutputCap(1, 2, 4, TOKENS)
    out = relay(cap, [[content(0, "Hello there")]])  # choice 1 never came
    assert usages(out) == [Usage(prompt_tokens=4, completion_tokens=1, estimated=True)]


UPSTREAM_USAGE = Usage(11, 5)


def completion(*messages: dict[str, Any], usage: Usage | None = UPSTREAM_USAGE) -> Completion:
    choices = [{"index": i, "message": m, "finish_reason": "stop"} for i, m in enumerate(messages)]
    return Completion(choices, usage, {"system_fingerprint": "fp"})


def test_a_completion_is_cut_and_its_usage_counts_what_is_left() -> None:
    given_ = completion({"role": "assistant", "content": "Hello from the fake upstream."})
    cut = cap_completion(given_, 1, 9, TOKENS)
    assert cut.choices[0]["message"]["content"] == "Hello" and cut.choices[0]["finish_reason"] == "length"
    # The upstream's prompt count is the real one; the completion is what is left, counted here.
    assert cut.usage == Usage(prompt_tokens=11, completion_tokens=1, estimated=True)
    assert cut.extra == {"system_fingerprint": "fp"}


def test_a_completion_within_the_limit_is_the_same_object() -> None:
    given_ = completion({"role": "assistant", "content": "Hello from the fake upstream."})
    assert cap_completion(given_, 6, 9, TOKENS) is given_
    assert cap_completion(given_, 4096, 9, TOKENS) is given_


def test_a_completion_cut_counts_every_choice() -> None:
    given_ = completion(
        {"role": "assistant", "content": "Hello from the fake upstream."},
        {"role": "assistant", "content": "Hi"},
        usage=None,
    )
    cut = cap_completion(given_, 2, 9, TOKENS)
    assert [c["finish_reason"] for c in cut.choices] == ["length", "stop"]
    assert cut.usage == Usage(prompt_tokens=9, completion_tokens=3, estimated=True)


def test_a_completion_with_tool_calls_is_cut_within_them() -> None:
    arguments = '{"q": "' + "x" * 200 + '"}'
    calls = [{"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": arguments}}]
    cut = cap_completion(completion({"role": "assistant", "content": None, "tool_calls": calls}), 4, 0, TOKENS)
    message = cut.choices[0]["message"]
    fn = message["tool_calls"][0]["function"]
    assert fn["name"] == "lookup" and TOKENS.count("lookup" + fn["arguments"]) <= 4 and message["content"] is None


@settings(max_examples=60, deadline=None)
@given(
    pieces=st.lists(st.text(min_size=0, max_size=12), max_size=30),
    limit=st.integers(1, 40),
)
def test_whatever_the_pieces_the_delivered_text_is_a_prefix_within_the_limit(pieces: list[str], limit: int) -> None:
    cap = OutputCap(limit, 1, 0, TOKENS)
    out = relay(cap, [[content(0, p)] for p in pieces] + [[content(0, "", "stop")]])
    sent = text_of(out)
    assert "".join(pieces).startswith(sent)
    counted = usages(out)
    if counted:  # cut: the billed count is what was enforced
        assert counted[0].completion_tokens <= limit and finishes(out) == [(0, "length")]
    else:
        assert sent == "".join(pieces) and finishes(out) == [(0, "stop")]
