"""``SseDecoder``: read boundaries never change what is decoded (WHATWG SSE parsing, PROTOCOL §3)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluicegate.providers.sse import SseDecoder, SseEvent

BOM = b"\xef\xbb\xbf"
# Field values: anything without a line break; non-ASCII included so splits fall inside UTF-8 characters.
line_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"),
    max_size=12,
)
ascii_or_unicode = st.one_of(line_text, st.sampled_from(["héllo", "🚀", "日本", "{}", "[DONE]", " lead", ":x"]))


@dataclass(frozen=True)
class Encoded:
    body: bytes
    expected: list[tuple[str | None, bytes]]


def data_line(value: str, form: int) -> str:
    """One way of writing ``data`` with ``value``: with the optional space, without it, or bare ``data``."""
    if form == 0 or value.startswith(" "):
        return "data: " + value
    if form == 1:
        return "data:" + value
    return "data:" + value if value else "data"


@st.composite
def sse_streams(draw: st.DrawFn) -> Encoded:
    lines: list[str] = []
    expected: list[tuple[str | None, bytes]] = []
    for _ in range(draw(st.integers(0, 6))):
        # Noise before the event: comments, id/retry, unknown fields, or a whole block with no data.
        for _ in range(draw(st.integers(0, 2))):
            kind = draw(st.sampled_from(["comment", "id", "retry", "unknown", "empty_block"]))
            if kind == "comment":
                lines.append(":" + draw(line_text))
            elif kind == "id":
                lines.append("id: " + draw(line_text))
            elif kind == "retry":
                lines.append(f"retry: {draw(st.integers(0, 10_000))}")
            elif kind == "unknown":
                lines.append("foo: " + draw(line_text))
            else:
                lines += [": keep-alive", ""]
        event_name = draw(st.one_of(st.none(), st.sampled_from(["error", "message", "ping"]), line_text))
        values = draw(st.lists(ascii_or_unicode, min_size=1, max_size=3))
        body_lines = [data_line(v, draw(st.integers(0, 2))) for v in values]
        if event_name is not None:
            body_lines.insert(draw(st.integers(0, len(body_lines))), "event: " + event_name)
        for _ in range(draw(st.integers(0, 2))):
            noise = draw(st.sampled_from([": ping", "id: 7", "retry: 3000", "id"]))
            body_lines.insert(draw(st.integers(0, len(body_lines))), noise)
        lines += [*body_lines, ""]
        expected.append((event_name, b"\n".join(v.encode() for v in values)))
    # Line endings: any mix; a CR followed by an empty LF-terminated line would read as one CRLF, so avoid that pair.
    endings = draw(st.lists(st.sampled_from(["\n", "\r\n", "\r"]), min_size=len(lines), max_size=len(lines)))
    # The stream's very last ending is not a lone CR: a decoder cannot know it is not half of a CRLF until EOF.
    if endings and endings[-1] == "\r":
        endings[-1] = "\n"
    for i in range(1, len(lines)):
        if endings[i - 1] == "\r" and lines[i] == "" and endings[i] == "\n":
            endings[i] = "\r\n"
    body = "".join(line + end for line, end in zip(lines, endings, strict=True)).encode()
    if draw(st.booleans()):
        body = BOM + body
    return Encoded(body, expected)


@st.composite
def streams_and_splits(draw: st.DrawFn) -> tuple[Encoded, list[bytes]]:
    encoded = draw(sse_streams())
    body = encoded.body
    cuts = sorted(draw(st.lists(st.integers(0, len(body)), max_size=12)))
    pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
    return encoded, pieces


def decode(pieces: list[bytes]) -> list[tuple[str | None, bytes]]:
    decoder = SseDecoder()
    out: list[SseEvent] = []
    for piece in pieces:
        out += decoder.feed(piece)
    assert not decoder.pending
    return [(e.event, e.data) for e in out]


@settings(max_examples=200, deadline=None)
@given(streams_and_splits())
def test_any_split_decodes_like_the_whole_and_like_the_source(case: tuple[Encoded, list[bytes]]) -> None:
    encoded, pieces = case
    assert b"".join(pieces) == encoded.body
    whole = decode([encoded.body])
    assert whole == encoded.expected
    assert decode(pieces) == whole


@settings(max_examples=100, deadline=None)
@given(sse_streams())
def test_byte_at_a_time(encoded: Encoded) -> None:
    body = encoded.body
    assert decode([body[i : i + 1] for i in range(len(body))]) == encoded.expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"data: a\n\n", [(None, b"a")]),
        (b"data:a\r\n\r\n", [(None, b"a")]),
        (b"data:  two spaces\r\r\n", [(None, b" two spaces")]),
        (b"data: x\ndata: y\n\n", [(None, b"x\ny")]),
        (b"event: error\ndata: {}\n\ndata: [DONE]\n\n", [("error", b"{}"), (None, b"[DONE]")]),
        (b"event: error\n\ndata: after\n\n", [(None, b"after")]),  # the name does not outlive its block
        (b"id: 1\nretry: 10\n\n: comment\n\n", []),  # never an event with only id/retry
        (BOM + b"data: bom\n\n", [(None, b"bom")]),
        (b"data\n\n", [(None, b"")]),
        ("data: h\u00e9\n\n".encode(), [(None, "h\u00e9".encode())]),
    ],
)
def test_examples(body: bytes, expected: list[tuple[str | None, bytes]]) -> None:
    assert decode([body]) == expected
    assert decode([body[i : i + 1] for i in range(len(body))]) == expected


def test_partial_event_is_pending_until_its_blank_line() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b'data: {"a"') == []
    assert decoder.pending
    assert decoder.feed(b": 1}\r") == []
    assert decoder.feed(b"\n\r\n") == [SseEvent(None, b'{"a": 1}')]
    assert not decoder.pending


def test_bom_only_stripped_at_the_start() -> None:
    decoder = SseDecoder()
    assert decoder.feed(BOM[:1]) == []
    assert decoder.feed(BOM[1:] + b"data: a\n\n") == [SseEvent(None, b"a")]
    # A second BOM later is part of the line: its field name is not "data", so it is ignored.
    assert decoder.feed(BOM + b"data: b\n\n") == []
