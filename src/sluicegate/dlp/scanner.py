"""The compiled DLP engine: whole-text scanning, overlap resolution and redaction."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from .custom import CustomKeywords, CustomRegex, build_custom
from .detectors import BUILTIN, Detector, shape

Action = Literal["block", "redact", "log"]
ACTIONS: tuple[Action, ...] = ("block", "redact", "log")

# Candidate of one detector: (raw_start, raw_end, start, end, priority, order, type); start == -1
# when the validator rejected it.
_Cand = tuple[int, int, int, int, int, int, str]


@dataclass(frozen=True, slots=True)
class Finding:
    """Where a detector fired. Deliberately holds no text: findings go to logs and audit records."""

    type: str
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class DlpRule:
    """What to do on one direction: ``detectors`` empty or None means every known detector."""

    action: Action = "redact"
    detectors: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"unknown DLP action {self.action!r}")


def label(detector: str) -> str:
    return f"[REDACTED:{detector.upper()}]"


class Engine:
    """A policy compiled against the built-in and custom detectors; immutable and thread-safe."""

    __slots__ = ("action", "detectors", "gated", "hint", "strong_cap", "strong_tail", "types", "weak_tail", "window")

    def __init__(self, policy: DlpRule, custom: Sequence[CustomRegex | CustomKeywords] = ()) -> None:
        available: dict[str, Detector] = {d.name: d for d in BUILTIN}
        for spec in custom:
            if spec.name in available:
                raise ValueError(f"custom DLP detector {spec.name!r} clashes with an existing detector")
            available[spec.name] = build_custom(spec)
        if policy.detectors:
            unknown = [n for n in policy.detectors if n not in available]
            if unknown:
                raise ValueError(f"unknown DLP detectors: {', '.join(sorted(unknown))}")
            chosen = [available[n] for n in dict.fromkeys(policy.detectors)]
        else:
            chosen = list(available.values())
        self.action: Action = policy.action
        self.detectors: tuple[Detector, ...] = tuple(chosen)
        self.types: tuple[str, ...] = tuple(d.name for d in chosen)
        weak = list(dict.fromkeys(d.tail for d in chosen if d.tail))
        strong = list(dict.fromkeys(d.strong_tail for d in chosen if d.strong_tail is not None))
        # Whitespace-free tails; ``(?!)`` keeps the pattern valid when every tail is gated.
        self.weak_tail: re.Pattern[str] = re.compile("|".join(f"(?:{t})\\Z" for t in weak) or "(?!)")
        gated = dict.fromkeys((g, t, d.max_span) for d in chosen for g, t in d.gated)
        self.gated: tuple[tuple[re.Pattern[str], re.Pattern[str], int], ...] = tuple(
            (re.compile(g), re.compile(f"(?:{t})\\Z"), span) for g, t, span in gated
        )
        hints = [d.hint for d in chosen]
        self.hint: re.Pattern[str] | None = (
            None if any(h is None for h in hints) else re.compile("|".join(f"(?:{h})" for h in hints if h))
        )
        self.strong_tail: re.Pattern[str] | None = (
            re.compile("|".join(f"(?:{t})\\Z" for t in strong)) if strong else None
        )
        # The stream never needs a wider window than the longest weak match the active detectors can
        # examine; strong (prefix-identified) secrets may be held up to ``strong_cap``.
        self.window: int = max((d.max_span for d in chosen if d.strong_tail is None), default=16)
        self.strong_cap: int = max((d.max_span for d in chosen if d.strong_tail is not None), default=0)

    # -- scanning -------------------------------------------------------------------------------

    def candidates(self, text: str, pos: int = 0) -> list[_Cand]:
        """Every candidate (raw and validated) of every active detector starting at or after ``pos``."""
        out: list[_Cand] = []
        shaped = shape(text)
        for order, det in enumerate(self.detectors):
            prio, name = det.priority, det.name
            for rs, re_, s, e in det.find(text, shaped, pos):
                out.append((rs, re_, s, e, prio, order, name))
        return out

    def scan(self, text: str) -> list[Finding]:
        return resolve(self.candidates(text))

    def redact(self, text: str) -> tuple[str, list[Finding]]:
        findings = self.scan(text)
        return apply(text, findings, 0, len(text)), findings


def resolve(cands: Iterable[_Cand]) -> list[Finding]:
    """Pick non-overlapping findings: within a group of overlapping candidates the most specific
    detector wins (priority), then the longest, then the earliest.

    Groups are chains of overlapping spans, so the choice never depends on anything outside the
    group; the stream redactor relies on that to cut the text between groups.
    """
    valid = sorted((c for c in cands if c[2] >= 0), key=lambda c: (c[2], c[3]))
    out: list[Finding] = []
    i, n = 0, len(valid)
    while i < n:
        group_end = valid[i][3]
        j = i + 1
        while j < n and valid[j][2] < group_end:
            group_end = max(group_end, valid[j][3])
            j += 1
        if j == i + 1:
            c = valid[i]
            out.append(Finding(c[6], c[2], c[3]))
        else:
            out.extend(_pick(valid[i:j]))
        i = j
    return out


def _pick(group: list[_Cand]) -> list[Finding]:
    ranked = sorted(group, key=lambda c: (-c[4], -(c[3] - c[2]), c[2], c[5]))
    chosen: list[_Cand] = []
    for c in ranked:
        if all(c[3] <= k[2] or c[2] >= k[3] for k in chosen):
            chosen.append(c)
    chosen.sort(key=lambda c: c[2])
    return [Finding(c[6], c[2], c[3]) for c in chosen]


def apply(text: str, findings: Sequence[Finding], start: int, end: int) -> str:
    """``text[start:end]`` with every finding (all inside that range) replaced by its label."""
    if not findings:
        return text[start:end]
    parts: list[str] = []
    at = start
    for f in findings:
        parts.append(text[at : f.start])
        parts.append(label(f.type))
        at = f.end
    parts.append(text[at:end])
    return "".join(parts)
