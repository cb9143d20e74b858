"""Incremental redaction of a streamed answer with a bounded hold-back.

How the release point is chosen, on every ``feed``:

1. *Tails.* Each active detector describes the suffixes from which one of its match attempts could
   still run into the end of the text (an unfinished e-mail, a digit run that may grow into a card,
   ``sk-abc``). The leftmost such suffix is found with one regex over the last word (whitespace-free
   tails) plus a few gated regexes for tails that may span spaces (``4111 1111``, ``secret key: ``),
   each tried only after its gate (a digit, ``secret``, ``-``) is seen. Everything before it is
   settled, because no attempt starting there can read past the current end.
2. *Window.* Ordinary ("weak") tails are held for at most ``window`` characters: the configured
   ``hold_back``, capped by the longest span the active detectors can examine. Past it the oldest
   characters are released, so clean text never lags by more than the window.
3. *Strong tails.* A tail that starts with a distinctive secret prefix (``-----BEGIN ... PRIVATE
   KEY-----``, ``eyJ``, ``sk-``, ``ghp_``, ...) may be held up to the engine's ``strong_cap``
   (about 16 KB, a whole PEM block) instead: leaking half a key is worse than a delay that only
   happens while something key-shaped is being streamed. A PEM block without END is held until the
   cap, then released with its base64 lines redacted, exactly as a whole-text scan would.
4. *Straddles.* The settled prefix is scanned (plus a little released context for look-behinds;
   skipped when no detector's hint such as ``@``, a digit or ``sk-`` occurs). If any candidate,
   even one a validator rejected, crosses the release point, the point moves back to its start so
   that scanning resumes exactly where a whole-text scan would.

Result: ``"".join(feed(c) for c in chunks) + flush() == engine.redact(text)[0]`` for every split,
as long as no candidate is longer than the window it is held for (the default 256-character window
covers every built-in weak detector except absurdly long e-mail domains).
"""

from __future__ import annotations

from .scanner import Engine, Finding, apply, resolve

# Released characters kept for look-behinds and for e-mail local parts (at most 65 chars back).
_CONTEXT = 128
# The hint pre-check pays off on the short texts a stream releases; on long ones (request prompts scanned in
# pieces) it costs ~5x the detectors' own scan, which skips ahead on literals.
_HINT_MAX = 1024


class StreamRedactor:
    """Redacts one text stream (one choice's content, or one tool call's arguments)."""

    __slots__ = ("_engine", "_gated", "_offset", "_pos", "_strong_cap", "_text", "_window", "counts", "findings")

    def __init__(self, engine: Engine, hold_back: int = 256) -> None:
        self._engine = engine
        self._window = max(1, min(hold_back, engine.window))
        self._strong_cap = max(self._window, engine.strong_cap)
        # Gated (whitespace-spanning) tails are weak: never looked for beyond the window.
        self._gated = [(g, t, min(span, self._window) + 1) for g, t, span in engine.gated]
        # Released context followed by the unreleased text, which starts at ``_pos``.
        self._text = ""
        self._pos = 0
        self._offset = 0  # where ``_text`` starts in the whole stream
        # Set to a list to collect every finding with its position in the whole stream (request scanning).
        self.findings: list[Finding] | None = None
        # Per detector type: how many matches were redacted; for the audit record (never the text).
        self.counts: dict[str, int] = {}

    @property
    def pending(self) -> int:
        """Characters received but not yet released."""
        return len(self._text) - self._pos

    @property
    def window(self) -> int:
        return self._window

    def feed(self, chunk: str) -> str:
        """Add ``chunk``; return the text (redacted) that is safe to release now."""
        if not chunk:
            return ""
        text = self._text + chunk
        self._text = text
        pos = self._pos
        n = len(text)
        engine = self._engine
        lo = max(pos, n - self._window)
        # Whitespace-free tails can only start in the last word: searching a whole window of
        # positions with every tail pattern would cost tens of microseconds per chunk.
        word = max(text.rfind(" ", lo), text.rfind("\n", lo), text.rfind("\t", lo), text.rfind("\r", lo)) + 1
        m = engine.weak_tail.search(text, max(lo, word))
        cut = n if m is None else m.start()
        for gate, tail, span in self._gated:
            g = gate.search(text, max(pos, n - span))
            if g is not None and g.start() < cut:
                m = tail.search(text, g.start(), n)
                if m is not None and m.start() < cut:
                    cut = m.start()
        if engine.strong_tail is not None:
            m = engine.strong_tail.search(text, max(pos, n - self._strong_cap))
            if m is not None and m.start() < cut:
                cut = m.start()
        if cut <= pos:
            return ""
        return self._release(cut)

    def flush(self) -> str:
        """End of stream: release (redacted) everything still held."""
        out = self._release(len(self._text)) if self.pending else ""
        self._offset += len(self._text)
        self._text = ""
        self._pos = 0
        return out

    def _release(self, cut: int) -> str:
        text, pos = self._text, self._pos
        hint = self._engine.hint
        if hint is not None and len(text) - pos <= _HINT_MAX and hint.search(text, pos) is None:
            # No detector can have a candidate here: release without scanning.
            keep = max(0, cut - _CONTEXT)
            self._text = text[keep:]
            self._pos = cut - keep
            self._offset += keep
            return text[pos:cut]
        cands = self._engine.candidates(text, pos)
        moved = True
        while moved:
            moved = False
            for c in cands:
                if pos <= c[0] < cut < c[1]:
                    cut = c[0]
                    moved = True
        if cut <= pos:
            return ""
        findings = resolve(c for c in cands if c[0] < cut)
        for f in findings:
            self.counts[f.type] = self.counts.get(f.type, 0) + 1
        if self.findings is not None:
            self.findings.extend(Finding(f.type, f.start + self._offset, f.end + self._offset) for f in findings)
        out = apply(text, findings, pos, cut)
        keep = max(0, cut - _CONTEXT)
        self._text = text[keep:]
        self._pos = cut - keep
        self._offset += keep
        return out
