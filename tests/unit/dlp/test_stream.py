"""The stream redactor: any split of a text must redact exactly like the whole text."""

from __future__ import annotations

import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluicegate.dlp import CustomKeywords, CustomRegex, DlpRule, Engine, StreamRedactor

ENGINE = Engine(
    DlpRule(),
    [CustomRegex("project_codename", "PRJ-[0-9]{4}"), CustomKeywords("internal", ("bluebird", "blue jay"))],
)

PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEAx4\nq0Z1=\n-----END RSA PRIVATE KEY-----"
JWT = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"
SECRETS = [
    "bob.smith@example.com",
    "4111 1111 1111 1111",
    "4111111111111111",
    "5500-0000-0000-0004",
    "DE89 3704 0044 0532 0130 00",
    "GB82WEST12345698765432",
    "123-45-6789",
    "+1 (555) 234-5678",
    "+442079460958",
    "(212) 555-0199",
    "192.168.1.10",
    "fe80::1ff:fe23:4567:890a",
    "2001:db8::1",
    "AKIAIOSFODNN7EXAMPLE",
    'aws_secret_access_key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"',
    "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
    "glpat-abcdefghij0123456789",
    "xoxb-1234567890-abcdefABC",
    "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
    "sk-proj-Abcdefghij0123456789XYZabc",
    "sk-ant-api03-Abcdefghij0123456789xyz",
    JWT,
    PEM,
    "PRJ-1234",
    "bluebird",
    "Blue Jay",
]
NEAR_MISSES = [
    "sk-",
    "sk-learn",
    "4111 1111",
    "4111 1111 1111 1112",
    "-----BEGIN",
    "-----BEGIN RSA PRIVATE KEY-----\nMIIE",
    "-----END RSA PRIVATE KEY-----",
    "eyJ",
    "@",
    "a@b",
    "999.1.1.1",
    "1.2.3.4.5",
    "std::vector",
    "10:30:15",
    "secret",
    "the secret is",
    "AKIA",
    "ghp_",
    "DE89",
    "666-12-1234",
    "+",
    "(",
    "PRJ-12",
    "blue",
]
WORDS = ["the", "quick", "brown", "fox", "2024", "v1.2", "a", "I", "Error:", "e.g.", "done."]
SEPARATORS = [" ", " ", " ", "\n", ", ", ".", "-", ":", "/", "=", '"', ""]

fragment = st.one_of(
    st.sampled_from(SECRETS),
    st.sampled_from(NEAR_MISSES),
    st.sampled_from(WORDS),
    st.text(alphabet="ab1 4.-:@_=\n+()AZ", max_size=6),
)
texts = st.lists(st.tuples(fragment, st.sampled_from(SEPARATORS)), max_size=14).map(
    lambda parts: "".join(f + s for f, s in parts)
)


def stream(engine: Engine, chunks: list[str], hold_back: int = 256) -> str:
    redactor = StreamRedactor(engine, hold_back)
    return "".join(redactor.feed(c) for c in chunks) + redactor.flush()


def split(text: str, cuts: list[int]) -> list[str]:
    points = sorted({c % (len(text) + 1) for c in cuts})
    bounds = [0, *points, len(text)]
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts, st.lists(st.integers(min_value=0, max_value=10_000), max_size=20))
def test_any_split_redacts_like_the_whole_text(text: str, cuts: list[int]) -> None:
    assert stream(ENGINE, split(text, cuts)) == ENGINE.redact(text)[0]


SUBSET = Engine(
    DlpRule("block", ("payment_card", "private_key", "aws_access_key", "internal")),
    [CustomKeywords("internal", ("blue jay",))],
)


@settings(max_examples=200, deadline=None)
@given(texts, st.lists(st.integers(min_value=0, max_value=10_000), max_size=20))
def test_any_split_with_a_detector_subset(text: str, cuts: list[int]) -> None:
    assert stream(SUBSET, split(text, cuts)) == SUBSET.redact(text)[0]


@settings(max_examples=150, deadline=None)
@given(texts)
def test_one_char_per_chunk_redacts_like_the_whole_text(text: str) -> None:
    assert stream(ENGINE, list(text)) == ENGINE.redact(text)[0]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(SECRETS), min_size=1, max_size=4), st.sampled_from(["\n", " and ", "; "]))
def test_secrets_split_one_char_per_chunk_are_redacted(secrets: list[str], sep: str) -> None:
    text = sep.join(secrets)
    out = stream(ENGINE, list(text))
    assert out == ENGINE.redact(text)[0]
    for secret in secrets:
        assert secret not in out


def test_clean_words_are_released_as_soon_as_a_separator_arrives() -> None:
    redactor = StreamRedactor(ENGINE)
    assert redactor.feed("Hello") == ""  # could still become hello@example.com
    assert redactor.feed(" world") == "Hello "
    assert redactor.feed(", how are you? ") == "world, how are you? "
    assert redactor.pending == 0
    assert redactor.flush() == ""


def test_card_split_over_chunks_then_released_with_following_text() -> None:
    redactor = StreamRedactor(ENGINE)
    chunks = ["Pay with 41", "11 11", "11 1111 ", "1111 today", " please"]
    out = [redactor.feed(c) for c in chunks]
    assert "".join(out) + redactor.flush() == "Pay with [REDACTED:PAYMENT_CARD] today please"
    assert out[0] == "Pay with "
    assert redactor.counts == {"payment_card": 1}


@settings(max_examples=200, deadline=None)
@given(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz XYZ,;!?'\n", max_size=600),
    st.lists(st.integers(min_value=0, max_value=10_000), max_size=40),
    st.sampled_from([16, 64, 256]),
)
def test_text_without_candidates_lags_at_most_the_window(text: str, cuts: list[int], hold_back: int) -> None:
    redactor = StreamRedactor(ENGINE, hold_back)
    received = released = 0
    out = []
    for chunk in split(text, cuts):
        piece = redactor.feed(chunk)
        out.append(piece)
        received += len(chunk)
        released += len(piece)
        assert received - released == redactor.pending <= redactor.window <= hold_back
    assert "".join(out) + redactor.flush() == text


def test_window_is_capped_by_active_detectors() -> None:
    cards_only = Engine(DlpRule(detectors=("payment_card",)))
    redactor = StreamRedactor(cards_only, 256)
    assert redactor.window == cards_only.window < 256
    assert redactor.feed("1 2 3 4 5 6 7 8 9 " * 10)  # a long digit run is released past the window
    assert redactor.pending <= redactor.window


def test_private_key_is_held_past_the_window_until_its_end() -> None:
    redactor = StreamRedactor(ENGINE, 64)
    body = "-----BEGIN PRIVATE KEY-----\n" + ("QUJD" * 16 + "\n") * 20
    assert redactor.feed("key: " + body) == "key: "
    assert redactor.pending == len(body) > redactor.window
    assert redactor.feed("-----END PRIVATE KEY-----\nbye ") == "[REDACTED:PRIVATE_KEY]\nbye "
    assert redactor.counts == {"private_key": 1}


def test_flush_resets_and_empty_chunks_are_free() -> None:
    redactor = StreamRedactor(ENGINE)
    assert redactor.feed("") == ""
    assert redactor.feed("mail bob@example.com") == "mail "
    assert redactor.flush() == "[REDACTED:EMAIL]"
    assert redactor.pending == 0 and redactor.flush() == ""
