"""User-configured detectors: regexes and keyword lists."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .detectors import Detector, finder, prefixes


@dataclass(frozen=True, slots=True)
class CustomRegex:
    """A user regex. Its matches should not span whitespace: on streams only the trailing
    whitespace-free run is held back for it (a match over whitespace is still found in whole texts)."""

    name: str
    pattern: str
    case_sensitive: bool = True


@dataclass(frozen=True, slots=True)
class CustomKeywords:
    name: str
    keywords: tuple[str, ...]
    case_sensitive: bool = False


_WORD = "A-Za-z0-9_"


def _keyword_re(kw: str) -> str:
    # Whole words only: "bluebird" must not fire inside "bluebirds" or "xbluebird".
    pre = f"(?<![{_WORD}])" if re.match(f"[{_WORD}]", kw[0]) else ""
    post = f"(?![{_WORD}])" if re.match(f"[{_WORD}]", kw[-1]) else ""
    return pre + re.escape(kw) + post


def build_custom(spec: CustomRegex | CustomKeywords) -> Detector:
    flags = 0 if spec.case_sensitive else re.IGNORECASE
    if isinstance(spec, CustomRegex):
        pattern = re.compile(spec.pattern, flags)
        return Detector(spec.name, finder(pattern), 10, r"\S+", None, 256)
    kws = sorted({k for k in spec.keywords if k}, key=len, reverse=True)
    if not kws:
        raise ValueError(f"custom DLP detector {spec.name!r} has no keywords")
    pattern = re.compile("|".join(_keyword_re(k) for k in kws), flags)
    tail = "|".join(prefixes(k) for k in kws)
    tail = f"(?:{tail})" if spec.case_sensitive else f"(?i:{tail})"
    span = max(len(k) for k in kws) + 1
    if not any(ch.isspace() for k in kws for ch in k):
        return Detector(spec.name, finder(pattern), 10, tail, None, span)
    first = re.escape("".join(sorted({k[0] for k in kws})))
    gate = f"[{first}]" if spec.case_sensitive else f"(?i:[{first}])"
    return Detector(spec.name, finder(pattern), 10, "", None, span, ((gate, tail),))
