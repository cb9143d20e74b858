"""Configured secrets and upstream addresses never leave the gateway.

Upstream error bodies echo the credential they received (OpenAI's 401 says "Incorrect API key provided:
sk-proj-abc*****wxyz"; others echo it whole) and name the hosts they run on. One ``Scrubber``, built from
the configuration when the gateway starts (``app.py``), cleans every upstream failure before anything
client-facing sees it (``providers/scrubbed.py``: messages, pass-through envelopes, headers) and every
line the gateway logs (``observability/logs.py``).

What it recognises, for each secret (every deployment ``api_key``, the master key, a password in an
``api_base``) of at least ``MIN_SECRET`` characters (shorter "keys" such as ``EMPTY`` for a local vLLM
are placeholders, and scrubbing them would mangle ordinary words):

- the secret itself;
- for secrets of ``MIN_PARTIAL`` characters or more, its first or last ``PIECE`` characters (a truncated
  echo), and masked forms: a token holding a run of mask characters (``***``, ``•••``, ``...``, ``…``)
  whose visible ends are a prefix and/or a suffix of the secret that together reveal at least
  ``REVEALED`` of its characters (``sk-proj-abc****wxyz``, ``sk-...wxyz``, ``****wxyz``).

The whole token around a match (letters, digits and ``-_.+/`` plus mask characters) is replaced with
``[redacted]``, so no fragment of the key survives next to it. Upstream addresses: each ``api_base`` URL,
its ``host:port`` and its host name (unless loopback, which reveals nothing) become ``[upstream]``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import orjson

from .errors import GatewayError, StreamInterrupted, UpstreamStatus

if TYPE_CHECKING:
    from .config import GatewayConfig
    from .settings import Settings

REDACTED = "[redacted]"
UPSTREAM = "[upstream]"
MIN_SECRET = 8
MIN_PARTIAL = 16
PIECE = 12
REVEALED = 4
# Characters a key (or its masked form) is made of: the extent of the token replaced around a match.
_TOKEN = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.+/*•…")
_MASK = frozenset("*•….")
_MASK_RUN = r"\*{3,}|•{3,}|\.{3,}|…"
_MASK_NEEDLES = ("***", "•••", "...", "…")
# The only upstream response headers a client may see: the retry hints its SDK acts on.
_PASSED_HEADERS = ("retry-after", "retry-after-ms")
_PASSED_PREFIXES = ("x-ratelimit-",)

E = TypeVar("E", bound=BaseException)


class Scrubber:
    """Replaces configured secrets (and their masked forms) and upstream addresses in text."""

    __slots__ = ("_needles", "_pattern", "_secrets")

    def __init__(self, secrets: Iterable[str] = (), upstreams: Iterable[str] = ()) -> None:
        self._secrets = sorted({s for s in secrets if len(s) >= MIN_SECRET}, key=len, reverse=True)
        pieces: set[str] = set()
        for s in self._secrets:
            pieces.update((s[:PIECE], s[-PIECE:]) if len(s) >= MIN_PARTIAL else (s,))
        hosts: set[str] = set()
        for url in upstreams:
            hosts.update(_address_forms(url))
        alternatives = []
        if pieces:
            alternatives.append("(?P<secret>" + "|".join(_literals(pieces)) + ")")
        if hosts:
            # Not inside a longer name or number: "10.0.0.1" must not hit "110.0.0.12".
            alternatives.append(r"(?P<host>(?<![\w.-])(?:" + "|".join(_literals(hosts)) + r")(?![\w-]))")
        masks = any(len(s) >= MIN_PARTIAL for s in self._secrets)
        if masks:
            alternatives.append(f"(?P<mask>{_MASK_RUN})")
        self._pattern = re.compile("|".join(alternatives)) if alternatives else None
        # Most text (every request log line) holds none of these: substring checks rule that out several times
        # faster than the pattern, whose look-arounds and mask runs are slow to try at every position.
        self._needles = (*pieces, *hosts, *(_MASK_NEEDLES if masks else ()))

    @classmethod
    def from_config(cls, config: GatewayConfig, settings: Settings) -> Scrubber:
        secrets: list[str] = [settings.master_key] if settings.master_key else []
        upstreams: list[str] = []
        for model in config.models:
            for d in model.deployments:
                if d.api_key:
                    secrets.append(d.api_key)
                if d.api_base:
                    upstreams.append(d.api_base)
                    password = urlsplit(d.api_base).password
                    if password:
                        secrets.append(password)
        return cls(secrets, upstreams)

    # -- text ---------------------------------------------------------------------------------------

    def text(self, text: str) -> str:
        pattern = self._pattern
        if pattern is None or not text:
            return text
        for needle in self._needles:
            if needle in text:
                break
        else:
            return text
        out: list[str] = []
        pos = 0
        for m in pattern.finditer(text):
            start, end = m.span()
            if start < pos:
                continue  # inside a token already replaced
            if m.lastgroup == "host":
                replacement = UPSTREAM
            else:
                start, end = _token(text, start, end)
                if m.lastgroup == "mask" and not self._identifies(text[start:end]):
                    continue
                start = max(start, pos)
                replacement = REDACTED
            out.append(text[pos:start])
            out.append(replacement)
            pos = end
        if not out:
            return text
        out.append(text[pos:])
        return "".join(out)

    def _identifies(self, token: str) -> bool:
        """Whether a token with mask characters shows enough of one secret's ends to identify it."""
        first = next(i for i, c in enumerate(token) if c in _MASK and _is_mask_at(token, i))
        last = max(i for i, c in enumerate(token) if c in _MASK and _is_mask_at(token, i))
        head, tail = token[:first], token[last + 1 :]
        for secret in self._secrets:
            if len(secret) < MIN_PARTIAL:
                continue
            shown = _overlap_end(head, secret) + _overlap_start(tail, secret)
            if shown >= REVEALED:
                return True
        return False

    def json(self, value: Any) -> Any:
        """A JSON value with every string scrubbed (keys included)."""
        if self._pattern is None:
            return value
        try:
            # One pass over the encoded text: the replacements hold no JSON syntax, and an error body can be
            # nested deeper than a recursive walk should go.
            return orjson.loads(self.text(orjson.dumps(value).decode()))
        except (TypeError, orjson.JSONDecodeError):
            return {"error": {"message": "the upstream reported an error", "type": "server_error"}}

    # -- what crosses from an upstream to the client ----------------------------------------------------

    def error(self, exc: E) -> E:
        """Clean an upstream failure in place (message, envelope, fields, headers) and return it."""
        if isinstance(exc, GatewayError):
            exc.message = self.text(exc.message)
            exc.args = (exc.message,)
            if exc.param is not None:
                exc.param = self.text(exc.param)
            code, type_ = self.text(exc.code), self.text(exc.type)
            if code != exc.code:
                exc.code = code
            if type_ != exc.type:
                exc.type = type_
            exc.headers = self.headers(exc.headers)
            if isinstance(exc, UpstreamStatus):
                exc.body = self.json(exc.body)
        elif isinstance(exc, StreamInterrupted):
            exc.message = self.text(exc.message)
            exc.args = (exc.message,)
        return exc

    def headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        """Only the retry hints of an upstream's headers, scrubbed; never ``www-authenticate`` or ``server``."""
        return {
            name: self.text(value)
            for name, value in headers.items()
            if name.lower() in _PASSED_HEADERS or name.lower().startswith(_PASSED_PREFIXES)
        }


def _literals(values: Iterable[str]) -> list[str]:
    return [re.escape(v) for v in sorted(values, key=len, reverse=True)]


def _address_forms(url: str) -> set[str]:
    parts = urlsplit(url)
    forms = {url.rstrip("/")} if parts.scheme else set()
    host = parts.hostname
    if not host:
        return forms
    if parts.netloc:
        forms.add(parts.netloc)
    if parts.port is not None:
        forms.add(f"{host}:{parts.port}")
    if not _is_loopback(host):
        forms.add(host)
    return forms


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_unspecified


def _token(text: str, start: int, end: int) -> tuple[int, int]:
    """The extent of the key-like token around ``text[start:end]``."""
    first = start
    while start > 0 and text[start - 1] in _TOKEN:
        if start >= 2 and text[start - 2] == "\\":
            # An escape in a JSON log line (\n, \u001f): the token starts after it, never inside it.
            if text[start - 1] == "u":
                start = min(start + 4, first)
            break
        start -= 1
    n = len(text)
    while end < n and text[end] in _TOKEN:
        end += 1
    return start, end


def _is_mask_at(token: str, i: int) -> bool:
    """Whether ``token[i]`` belongs to a mask run (a lone ``.`` inside a key is not one)."""
    c = token[i]
    if c in "…":
        return True
    run = 1
    j = i - 1
    while j >= 0 and token[j] == c:
        run, j = run + 1, j - 1
    j = i + 1
    while j < len(token) and token[j] == c:
        run, j = run + 1, j + 1
    return run >= 3


def _overlap_end(head: str, secret: str) -> int:
    """The longest k such that ``head`` ends with the secret's first k characters."""
    for k in range(min(len(head), len(secret)), 0, -1):
        if head.endswith(secret[:k]):
            return k
    return 0


def _overlap_start(tail: str, secret: str) -> int:
    """The longest k such that ``tail`` starts with the secret's last k characters."""
    for k in range(min(len(tail), len(secret)), 0, -1):
        if tail.startswith(secret[-k:]):
            return k
    return 0
