"""Built-in and custom DLP detectors.

A detector finds candidate spans with one compiled regex (or, for e-mail, a regex anchored on ``@``),
then a validator (checksum, structure) rejects lookalikes. Every detector also describes its *tail*: a
regex matching any suffix of a text from which one of its match attempts could still run into the
end of the text. The stream redactor holds back exactly those suffixes (see ``stream.py``), so the
tails must over-approximate: a too-broad tail costs latency, a too-narrow one breaks redaction.

Everything is ASCII on purpose: secret formats are ASCII, and ASCII classes keep the tails exact
(``\\w`` would make every non-Latin letter part of a candidate run).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from .validators import (
    _valid_aws_secret,
    mixed_token,
    valid_card,
    valid_iban,
    valid_ipv4,
    valid_ipv6,
    valid_jwt,
    valid_phone,
    valid_ssn,
)

# (raw_start, raw_end, start, end): the raw span is everything the regex consumed (context
# included), the value span is what gets redacted; start == -1 marks a candidate the validator
# rejected, which still matters to the stream redactor because it moved the detector forward.
Candidate = tuple[int, int, int, int]
# A finder gets the text, its *shape* (see ``shape``) and the position to start at.
Finder = Callable[[str, bytes, int], Iterator[Candidate]]
Hits = Callable[[str, bytes, int], Iterable[int]]

# The PEM body may be long, but we need a bound for the lazy search for the END line and for how
# long a stream may hold a key block that never ends.
PEM_MAX_BODY = 16_384

# Digits -> "0", capitals -> "A", one byte per character. CPython's ``re`` only skips quickly to a
# literal prefix; a pattern starting with ``[0-9]`` costs ~10 ns per character of a 100 KB prompt,
# per detector. Searching the shape for literals like b"0000" finds the few places worth a regex.
_SHAPE_TABLE = bytes.maketrans(b"123456789BCDEFGHIJKLMNOPQRSTUVWXYZ", b"0" * 9 + b"A" * 25)


def shape(text: str) -> bytes:
    # "replace" turns each non-ASCII character into one "?", so offsets stay aligned with ``text``.
    return text.encode("ascii", "replace").translate(_SHAPE_TABLE)


@dataclass(frozen=True, slots=True)
class Detector:
    name: str
    find: Finder
    priority: int
    # Suffixes that may be an unfinished match. ``strong`` tails start with a distinctive secret
    # prefix (``sk-``, ``-----BEGIN ... PRIVATE KEY-----``): the stream may hold those past its
    # window, because leaking half a key is worse than a delay that only happens when one is sent.
    tail: str
    strong_tail: str | None
    # Longest span one match attempt can examine; bounds the useful stream window.
    max_span: int
    # Tails that may contain whitespace, as (gate, tail): the tail starts where the gate matches.
    # Kept apart because a whitespace-free ``tail`` only needs a look at the last word.
    gated: tuple[tuple[str, str], ...] = ()
    # A regex found in every candidate; lets the stream skip scanning plain words. None: no hint.
    hint: str | None = None


def _text_hits(*literals: str) -> Hits:
    def hits(text: str, _shape: bytes, pos: int) -> list[int]:
        found: list[int] = []
        for lit in literals:
            i = text.find(lit, pos)
            while i >= 0:
                found.append(i)
                i = text.find(lit, i + 1)
        found.sort()
        return found

    return hits


def _shape_hits(*literals: bytes) -> Hits:
    def hits(_text: str, shaped: bytes, pos: int) -> list[int]:
        found: list[int] = []
        for lit in literals:
            i = shaped.find(lit, pos)
            while i >= 0:
                found.append(i)
                i = shaped.find(lit, i + 1)
        found.sort()
        return found

    return hits


def _regex_hits(trigger: re.Pattern[str]) -> Hits:
    """Start of every (possibly overlapping) occurrence; only fast when ``trigger`` has a literal prefix."""

    def hits(text: str, _shape: bytes, pos: int) -> Iterator[int]:
        search = trigger.search
        m = search(text, pos)
        while m is not None:
            yield m.start()
            m = search(text, m.start() + 1)

    return hits


def finder(
    pattern: re.Pattern[str],
    hits: Hits | None = None,
    back: int = 0,
    validate: Callable[[str], bool] | None = None,
    group: int | str = 0,
) -> Finder:
    """Candidates of ``pattern``, as ``finditer`` would report them.

    With ``hits``, match attempts are made only at the ``back`` positions before each hit: the hits
    must be such that every valid match starts there. Positions are still tried in order and once,
    skipping consumed text, so the result is local: the stream redactor depends on that.
    """

    def check(text: str, m: re.Match[str]) -> Candidate:
        start, end = m.span(group)
        if validate is not None and not validate(text[start:end]):
            start = end = -1
        return m.start(), m.end(), start, end

    if hits is None:

        def find_all(text: str, _shape: bytes, pos: int) -> Iterator[Candidate]:
            for m in pattern.finditer(text, pos):
                yield check(text, m)

        return find_all

    def find(text: str, shaped: bytes, pos: int) -> Iterator[Candidate]:
        nxt = pos
        match = pattern.match
        for h in hits(text, shaped, pos):
            q = max(nxt, h - back)
            while q <= h:
                m = match(text, q)
                if m is None:
                    q += 1
                    continue
                yield check(text, m)
                q = max(m.end(), q + 1)
            nxt = max(nxt, q)

    return find


def prefixes(literal: str) -> str:
    """Regex matching every non-empty prefix of ``literal`` (for tails of literal-prefixed tokens)."""
    out = ""
    for ch in reversed(literal[1:]):
        out = f"(?:{re.escape(ch)}{out})?"
    return re.escape(literal[0]) + out


# --- e-mail -----------------------------------------------------------------------------------

_LOCAL = "A-Za-z0-9._%+-"
# Anchored on "@" so a 100 KB prompt does not start a match attempt at every letter.
_EMAIL_DOMAIN = re.compile(r"@(?:[A-Za-z0-9-]{1,63}\.){1,6}[A-Za-z]{2,24}(?![A-Za-z0-9-])")
_EMAIL_LOCAL = re.compile(f"[{_LOCAL}]{{1,65}}\\Z")


def _find_email(text: str, _shape: bytes, pos: int) -> Iterator[Candidate]:
    for m in _EMAIL_DOMAIN.finditer(text, pos):
        at = m.start()
        local = _EMAIL_LOCAL.search(text, max(0, at - 65), at)
        if local is None:
            continue
        start = local.start()
        # Local parts are at most 64 chars; a longer run is not an address (and may be base64).
        if at - start > 64 or start < pos:
            yield start, m.end(), -1, -1
        else:
            yield start, m.end(), start, m.end()


# --- IPv6 -------------------------------------------------------------------------------------

_IPV6 = re.compile(
    r"(?<![0-9A-Za-z_:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9]{1,3}(?:\.[0-9]{1,3}){3}|[0-9A-Fa-f]{0,4})"
    r"(?![0-9A-Za-z_:.])"
)
# Every address has ":h:" or "::" right after its first group (at most four hex digits).
_IPV6_HIT = re.compile(r":[0-9A-Fa-f]{0,4}:")
_HEX_BEFORE = re.compile(r"[0-9A-Fa-f]{1,4}\Z")


def _find_ipv6(text: str, _shape: bytes, pos: int) -> Iterator[Candidate]:
    nxt = pos
    m = _IPV6_HIT.search(text, pos)
    while m is not None:
        h = m.start()
        if h >= nxt:
            # Only the start of the hex group before the colon can begin an address (look-behind).
            g = _HEX_BEFORE.search(text, max(nxt, h - 4), h)
            q = h if g is None else g.start()
            a = _IPV6.match(text, q)
            if a is not None:
                ok = valid_ipv6(a.group())
                yield (q, a.end(), q, a.end()) if ok else (q, a.end(), -1, -1)
                nxt = a.end()
        m = _IPV6_HIT.search(text, max(h + 1, nxt))


# --- built-in table ---------------------------------------------------------------------------

_TOK = "A-Za-z0-9_-"


def _token(
    name: str,
    literals: Sequence[str],
    body: str,
    strong_body: str,
    priority: int,
    max_span: int,
    validate: Callable[[str], bool] | None = None,
) -> Detector:
    """A token identified by literal prefixes (``ghp_``, ``sk-ant-``) followed by a body."""
    alts = "|".join(re.escape(lit) for lit in literals)
    pattern = re.compile(f"(?<![{_TOK}])(?:{alts}){body}(?![{_TOK}])")
    # One regex search with a literal prefix beats one str.find per literal.
    prefix = literals[0][: min(len(p) for p in literals)]
    while not all(p.startswith(prefix) for p in literals):
        prefix = prefix[:-1]
    hits = _text_hits(*literals) if len(literals) == 1 or not prefix else _regex_hits(re.compile(alts))
    find = finder(pattern, hits, validate=validate)
    weak = "|".join(prefixes(lit) for lit in literals)
    return Detector(name, find, priority, weak, f"(?:{alts}){strong_body}", max_span, hint=alts)


_PEM_HEADER = r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY-----"
_PEM_FOOTER = r"-----END[A-Z0-9 ]*PRIVATE KEY-----"


def _builtin() -> list[Detector]:
    out: list[Detector] = []
    add = out.append

    add(Detector("email", _find_email, 40, f"[{_LOCAL}]+(?:@[A-Za-z0-9.-]*)?", None, 64 + 1 + 6 * 64 + 25, hint="@"))

    # Valid cards start with a run of at least four digits (groups are 4-6 long).
    card = re.compile(r"(?<![0-9])[2-6](?:[ -]?[0-9]){12,18}(?![0-9])")
    find = finder(card, _shape_hits(b"0000"), validate=valid_card)
    add(Detector("payment_card", find, 50, "", None, 40, ((r"[0-9]", r"[0-9](?:[ -]?[0-9])*[ -]?"),), "[0-9]"))

    iban = re.compile(
        r"(?<![A-Za-z0-9])[A-Z]{2}[0-9]{2}(?:[A-Z0-9]{11,30}|(?: [A-Z0-9]{4}){2,7}(?: [A-Z0-9]{1,3})?)(?![A-Za-z0-9])"
    )
    find = finder(iban, _shape_hits(b"AA00"), validate=valid_iban)
    short, full = r"[A-Z](?:[A-Z](?:[0-9](?:[0-9][A-Z0-9]*)?)?)?", r"[A-Z]{2}[0-9]{2}[ A-Z0-9]*"
    add(Detector("iban", find, 50, short, None, 45, ((r"[A-Z]{2}[0-9]{2}", full),), "[0-9]"))

    ssn = re.compile(r"(?<![0-9-])[0-9]{3}-[0-9]{2}-[0-9]{4}(?![0-9-])")
    find = finder(ssn, _shape_hits(b"000-00-0000"), validate=valid_ssn)
    add(Detector("us_ssn", find, 50, r"[0-9][0-9-]*", None, 13, hint="[0-9]"))

    phone = re.compile(
        r"(?<![0-9A-Za-z+])(?:\+[1-9][0-9]{6,14}"
        r"|\+[1-9][0-9]{0,2}(?:[ .-](?:\([0-9]{1,4}\)|[0-9]{1,5})){2,5}"
        r"|(?:\([2-9][0-9]{2}\) ?|[2-9][0-9]{2}[.-])[2-9][0-9]{2}[.-][0-9]{4})(?![0-9A-Za-z])"
    )
    find = finder(phone, _shape_hits(b"+", b"(000)", b"000-000-0000", b"000.000.0000"), validate=valid_phone)
    add(Detector("phone", find, 20, "", None, 40, ((r"[+(0-9]", r"[+(0-9][ .()0-9-]*"),), "[+(0-9]"))

    # The first "d.d" of an address is at most two characters after its start.
    ipv4 = re.compile(r"(?<![0-9.])(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?![0-9]|\.[0-9])")
    find = finder(ipv4, _shape_hits(b"0.0"), back=2, validate=valid_ipv4)
    add(Detector("ipv4", find, 30, r"[0-9][0-9.]*", None, 17, hint="[0-9]"))

    add(Detector("ipv6", _find_ipv6, 30, r"[0-9A-Fa-f:][0-9A-Fa-f:.]*", None, 48, hint=":"))

    add(_token("aws_access_key", ("AKIA", "ASIA"), "[A-Z0-9]{16}", "[A-Z0-9]*", 80, 22))

    # A bare 40-character base64 run is too common (hashes, ids): demand a "secret ... =" context.
    secret = ("secret", "Secret", "SECRET")
    aws_secret = re.compile(
        r"(?:secret|Secret|SECRET)(?:[ _.-]?[A-Za-z]{1,20}(?![A-Za-z])){0,3}?"
        r"[\"']?[ \t]{0,3}(?:=>|[:=])[ \t]{0,3}[\"']?"
        r"(?P<v>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])"
    )
    aws_secret_tail = (
        r"(?:secret|Secret|SECRET)(?:[ _.-]?[A-Za-z]{1,20}){0,3}[ _.-]?[\"']?"
        r"[ \t]{0,3}(?:=>?|:)?[ \t]{0,3}[\"']?[A-Za-z0-9/+]{0,40}"
    )
    find = finder(aws_secret, _text_hits(*secret), validate=_valid_aws_secret, group="v")
    short = "|".join(prefixes(s) for s in secret)
    gated = (("secret|Secret|SECRET", aws_secret_tail),)
    add(Detector("aws_secret_key", find, 75, short, None, 6 + 3 * 21 + 12 + 41, gated, "ecret|ECRET"))

    gh = ("ghp_", "gho_", "ghu_", "ghs_", "ghr_")
    add(_token("github_token", gh, "[A-Za-z0-9]{36,100}", "[A-Za-z0-9_]*", 80, 106))
    out[-1] = _merge(
        out[-1], _token("github_token", ("github_pat_",), "[A-Za-z0-9_]{50,100}", "[A-Za-z0-9_]*", 80, 113)
    )
    add(_token("gitlab_token", ("glpat-",), "[A-Za-z0-9_-]{20,64}", "[A-Za-z0-9_-]*", 80, 72))
    slack = ("xoxb-", "xoxa-", "xoxp-", "xoxr-", "xoxs-")
    add(_token("slack_token", slack, "[A-Za-z0-9-]{10,150}", "[A-Za-z0-9-]*", 80, 157))
    stripe = ("sk_live_", "sk_test_", "rk_live_", "rk_test_")
    add(_token("stripe_key", stripe, "[A-Za-z0-9]{16,128}", "[A-Za-z0-9]*", 80, 138))
    add(_token("openai_key", ("sk-",), "[A-Za-z0-9_-]{20,200}", "[A-Za-z0-9_-]*", 60, 205, validate=mixed_token))
    add(_token("anthropic_key", ("sk-ant-",), "[A-Za-z0-9_-]{20,200}", "[A-Za-z0-9_-]*", 90, 209))

    jwt = re.compile(
        r"(?<![A-Za-z0-9_.-])eyJ[A-Za-z0-9_-]{5,1000}\.[A-Za-z0-9_-]{2,4000}\.[A-Za-z0-9_-]{0,1000}(?![A-Za-z0-9_.-])"
    )
    find = finder(jwt, _text_hits("eyJ"), validate=valid_jwt)
    strong = r"eyJ[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]*){0,2}"
    add(Detector("jwt", find, 70, prefixes("eyJ"), strong, 6010, hint="eyJ"))

    # A block whose END never comes (truncated paste) is still a key: redact its base64 lines.
    pem = re.compile(f"{_PEM_HEADER}(?:[\\s\\S]{{0,{PEM_MAX_BODY}}}?{_PEM_FOOTER}|(?:\\r?\\n[A-Za-z0-9+/=]+)*)")
    add(
        Detector(
            "private_key",
            finder(pem, _text_hits("-----BEGIN")),
            100,
            "",
            f"{_PEM_HEADER}(?:(?!{_PEM_FOOTER})[\\s\\S])*",
            PEM_MAX_BODY + 200,
            (("-", prefixes("-----BEGIN") + r"[A-Z0-9 ]*-{0,5}"),),
            "-----BEGIN",
        )
    )
    return out


def _merge(a: Detector, b: Detector) -> Detector:
    """One detector type made of two finders (GitHub's classic and fine-grained tokens)."""

    def find(text: str, shaped: bytes, pos: int) -> Iterator[Candidate]:
        yield from a.find(text, shaped, pos)
        yield from b.find(text, shaped, pos)

    return Detector(
        a.name,
        find,
        a.priority,
        f"{a.tail}|{b.tail}",
        f"{a.strong_tail}|{b.strong_tail}",
        max(a.max_span, b.max_span),
        hint=f"{a.hint}|{b.hint}",
    )


BUILTIN: tuple[Detector, ...] = tuple(_builtin())
BUILTIN_NAMES: tuple[str, ...] = tuple(d.name for d in BUILTIN)
