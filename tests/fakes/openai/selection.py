"""Which scenario a request asks for: header, instance setting, model, last user message (``tests.fakes.openai``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Scenario:
    name: str
    arg: str | None = None

    def __str__(self) -> str:
        return self.name if self.arg is None else f"{self.name}:{self.arg}"


class ScenarioError(ValueError):
    """An unknown scenario or a bad argument; answered with a 400 so the test author sees it."""


_TOKEN = re.compile(r"scenario:([a-z_]+)(?::([\w.\-]*\w))?")
_BARE = re.compile(r"\s*(?:scenario:)?([a-z_]+)(?::(\S+))?\s*")


def parse_scenario(text: str) -> Scenario | None:
    """The first ``scenario:NAME[:ARG]`` token in ``text``, if any."""
    match = _TOKEN.search(text)
    return Scenario(match[1], match[2]) if match else None


def _last_user_text(body: dict[str, Any]) -> str:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return _text_of(message.get("content"))
    return ""


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                return str(part["text"])
    return ""


def select_scenario(body: Any, headers: dict[str, str], forced: str | None = None) -> Scenario:
    """Apply the precedence of the module docstring: header, instance setting, model, last user message."""
    for explicit in (headers.get("x-fake-scenario"), forced):
        if explicit:
            match = _BARE.fullmatch(explicit)
            if not match:
                raise ScenarioError(f"cannot parse scenario {explicit!r}")
            return Scenario(match[1], match[2])
    if isinstance(body, dict):
        for text in (str(body.get("model", "")), _last_user_text(body)):
            if found := parse_scenario(text):
                return found
    return Scenario("normal")
