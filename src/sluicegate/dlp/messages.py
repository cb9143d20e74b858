"""Scanning and redacting OpenAI chat ``messages`` (request side).

Covers every text the model will see: string ``content``, ``text`` content parts, assistant
``tool_calls[].function.arguments`` and ``tool`` results. Images, audio and other parts are left
alone. The input is never mutated: changed messages, lists and parts are shallow copies.

The ``*_async`` variants are what the request path uses: scanning costs ~1.2 ms per 100 KB with every
detector, so a 4 MB prompt scanned in one call would hold the event loop for ~50 ms (and a 50 MB one for
over half a second). They scan long texts in ``PIECE``-character pieces through a ``StreamRedactor`` with the
engine's whole window (which gives exactly the whole-text result), yielding to the loop between pieces.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .scanner import Engine, Finding
from .stream import StreamRedactor

# Characters scanned between two yields to the event loop: ~1 ms of work with every detector (a smaller piece
# spends proportionally more on the stream redactor's tail checks, which look at up to 16 KB each time).
PIECE = 65_536


@dataclass(frozen=True, slots=True)
class MessageFinding:
    """A finding inside ``messages[message]`` at ``path`` (e.g. ``content[1].text``); no text."""

    type: str
    message: int
    path: str
    start: int
    end: int


# Given a string and its location, returns the replacement (or the same object when untouched).
_Visit = Callable[[str, int, str], str]


# A text's redacted form and findings, given its location (the engine's answer, or one computed beforehand).
_Lookup = Callable[[str, int, str], tuple[str, list[Finding]]]


def _scanning(found: list[MessageFinding], lookup: _Lookup) -> _Visit:
    def visit(text: str, index: int, path: str) -> str:
        found.extend(_located(lookup(text, index, path)[1], index, path))
        return text

    return visit


def _redacting(found: list[MessageFinding], lookup: _Lookup, engine: Engine) -> _Visit:
    def visit(text: str, index: int, path: str) -> str:
        new, findings = lookup(text, index, path)
        if not findings:
            return text
        found.extend(_located(findings, index, path))
        return _keep_json(text, new, engine) if path.endswith(".arguments") else new

    return visit


def scan_messages(messages: list[dict[str, Any]], engine: Engine) -> list[MessageFinding]:
    found: list[MessageFinding] = []
    _walk(messages, _scanning(found, lambda text, _i, _p: (text, engine.scan(text))))
    return found


def redact_messages(
    messages: list[dict[str, Any]], engine: Engine
) -> tuple[list[dict[str, Any]], list[MessageFinding]]:
    found: list[MessageFinding] = []
    return _walk(messages, _redacting(found, lambda text, _i, _p: engine.redact(text), engine)), found


async def scan_messages_async(messages: list[dict[str, Any]], engine: Engine) -> list[MessageFinding]:
    """``scan_messages``, yielding to the event loop every ``PIECE`` characters."""
    results = await _scan_texts(messages, engine, redact=False)
    found: list[MessageFinding] = []
    _walk(messages, _scanning(found, lambda _t, index, path: results[index, path]))
    return found


async def redact_messages_async(
    messages: list[dict[str, Any]], engine: Engine
) -> tuple[list[dict[str, Any]], list[MessageFinding]]:
    """``redact_messages``, yielding to the event loop every ``PIECE`` characters."""
    results = await _scan_texts(messages, engine, redact=True)
    found: list[MessageFinding] = []
    return _walk(messages, _redacting(found, lambda _t, index, path: results[index, path], engine)), found


async def _scan_texts(
    messages: list[dict[str, Any]], engine: Engine, *, redact: bool
) -> dict[tuple[int, str], tuple[str, list[Finding]]]:
    """Every text of ``messages`` by (message index, path): its redacted form and findings."""
    texts: list[tuple[str, int, str]] = []

    def collect(text: str, index: int, path: str) -> str:
        texts.append((text, index, path))
        return text

    _walk(messages, collect)
    results: dict[tuple[int, str], tuple[str, list[Finding]]] = {}
    since_yield = 0
    for text, index, path in texts:
        if len(text) > PIECE:
            results[index, path] = await _redact_in_pieces(text, engine)
            continue
        results[index, path] = engine.redact(text) if redact else (text, engine.scan(text))
        since_yield += len(text)
        if since_yield >= PIECE:  # many small messages add up too
            since_yield = 0
            await asyncio.sleep(0)
    return results


async def _redact_in_pieces(text: str, engine: Engine) -> tuple[str, list[Finding]]:
    redactor = StreamRedactor(engine, hold_back=engine.window)
    redactor.findings = []
    out: list[str] = []
    for start in range(0, len(text), PIECE):
        out.append(redactor.feed(text[start : start + PIECE]))
        await asyncio.sleep(0)
    out.append(redactor.flush())
    return "".join(out), redactor.findings


def _located(findings: list[Finding], index: int, path: str) -> list[MessageFinding]:
    return [MessageFinding(f.type, index, path, f.start, f.end) for f in findings]


def _walk(messages: list[dict[str, Any]], visit: _Visit) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            out.append(msg)
            continue
        new = msg
        content = msg.get("content")
        if isinstance(content, str):
            replaced = visit(content, i, "content")
            if replaced is not content:
                new = {**msg, "content": replaced}
        elif isinstance(content, list):
            parts = _walk_parts(content, i, visit)
            if parts is not content:
                new = {**msg, "content": parts}
        calls = msg.get("tool_calls")
        if isinstance(calls, list):
            new_calls = _walk_calls(calls, i, visit)
            if new_calls is not calls:
                new = {**new, "tool_calls": new_calls}
        out.append(new)
    return out


def _walk_parts(parts: list[Any], index: int, visit: _Visit) -> list[Any]:
    out = parts
    for j, part in enumerate(parts):
        if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
            continue
        replaced = visit(part["text"], index, f"content[{j}].text")
        if replaced is not part["text"]:
            if out is parts:
                out = list(parts)
            out[j] = {**part, "text": replaced}
    return out


def _walk_calls(calls: list[Any], index: int, visit: _Visit) -> list[Any]:
    out = calls
    for j, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        args = fn.get("arguments") if isinstance(fn, dict) else None
        if not isinstance(fn, dict) or not isinstance(args, str):
            continue
        replaced = visit(args, index, f"tool_calls[{j}].function.arguments")
        if replaced is not args:
            if out is calls:
                out = list(calls)
            out[j] = {**call, "function": {**fn, "arguments": replaced}}
    return out


def _keep_json(original: str, redacted: str, engine: Engine) -> str:
    """Tool arguments are JSON: a match ending just after a backslash could leave an invalid escape.
    Then redact the decoded strings instead and re-encode."""
    try:
        value = json.loads(original)
    except ValueError:
        return redacted
    try:
        json.loads(redacted)
    except ValueError:
        return json.dumps(_redact_json(value, engine), ensure_ascii=False)
    return redacted


def _redact_json(value: Any, engine: Engine) -> Any:
    if isinstance(value, str):
        return engine.redact(value)[0]
    if isinstance(value, list):
        return [_redact_json(v, engine) for v in value]
    if isinstance(value, dict):
        return {k: _redact_json(v, engine) for k, v in value.items()}
    return value
