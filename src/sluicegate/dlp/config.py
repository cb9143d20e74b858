"""Pydantic models for the ``dlp:`` section of the config file.

    dlp:
      request: {action: block, detectors: [payment_card, private_key, aws_access_key]}
      response: {action: redact}          # all detectors when none are listed
      custom: [{name: project_codename, pattern: "PRJ-[0-9]{4}"}, {name: internal, keywords: [bluebird]}]
      hold_back: 256                      # max chars held back on streams

A direction that is absent is not scanned.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .custom import CustomKeywords, CustomRegex
from .detectors import BUILTIN_NAMES
from .scanner import DlpRule, Engine

_NAME = r"^[a-z][a-z0-9_]{0,63}$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DirectionConfig(_Model):
    action: Literal["block", "redact", "log"]
    detectors: list[str] | None = None

    def policy(self) -> DlpRule:
        return DlpRule(self.action, tuple(self.detectors) if self.detectors else None)


class CustomRegexConfig(_Model):
    name: Annotated[str, Field(pattern=_NAME)]
    pattern: Annotated[str, Field(min_length=1, max_length=1000)]
    case_sensitive: bool = True

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            compiled = re.compile(value)
        except re.error as exc:
            raise ValueError(f"invalid regex: {exc}") from None
        # An empty match would redact between every two characters.
        if compiled.fullmatch("") is not None:
            raise ValueError("pattern must not match the empty string")
        return value

    def spec(self) -> CustomRegex:
        return CustomRegex(self.name, self.pattern, self.case_sensitive)


class CustomKeywordsConfig(_Model):
    name: Annotated[str, Field(pattern=_NAME)]
    keywords: Annotated[list[Annotated[str, Field(min_length=1, max_length=200)]], Field(min_length=1)]
    case_sensitive: bool = False

    def spec(self) -> CustomKeywords:
        return CustomKeywords(self.name, tuple(self.keywords), self.case_sensitive)


class DlpConfig(_Model):
    request: DirectionConfig | None = None
    response: DirectionConfig | None = None
    custom: list[CustomRegexConfig | CustomKeywordsConfig] = []
    # Bounded below so every built-in weak detector (cards, IBANs, most e-mails) fits the window.
    hold_back: Annotated[int, Field(ge=64, le=65_536)] = 256

    @model_validator(mode="after")
    def _names(self) -> DlpConfig:
        custom = [c.name for c in self.custom]
        clash = sorted({n for n in custom if n in BUILTIN_NAMES or custom.count(n) > 1})
        if clash:
            raise ValueError(f"custom detector names must be unique and not built-in: {', '.join(clash)}")
        known = set(BUILTIN_NAMES) | set(custom)
        for direction in (self.request, self.response):
            unknown = sorted(set(direction.detectors or ()) - known) if direction else []
            if unknown:
                raise ValueError(f"unknown DLP detectors: {', '.join(unknown)}")
        return self

    def engine(self, direction: Literal["request", "response"]) -> Engine | None:
        """The compiled engine for one direction, or None when that direction is not scanned."""
        cfg = self.request if direction == "request" else self.response
        if cfg is None:
            return None
        return Engine(cfg.policy(), [c.spec() for c in self.custom])
