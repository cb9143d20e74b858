"""Settings a provider family takes beside the common deployment fields (``providers.registry``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from ..config import Deployment


class Options(BaseModel):
    """Settings every family takes; a family's own options extend it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Output tokens a budget reserves when the client sets no max_tokens; providers that require max_tokens
    # (Anthropic, Gemini) also send it.
    default_max_tokens: int = Field(default=4096, gt=0)


class DemoOptions(Options):
    token_delay_ms: float = Field(default=20.0, ge=0)  # pacing between streamed tokens


OptionsT = TypeVar("OptionsT", bound=Options)


def options_of(deployment: Deployment, kind: type[OptionsT]) -> OptionsT:
    """A deployment's typed options (parsed here if the config was validated without the registry)."""
    opts = deployment.options
    if isinstance(opts, kind):
        return opts
    return kind.model_validate(opts if isinstance(opts, Mapping) else {})


def default_max_tokens(deployment: Deployment) -> int:
    opts: Any = deployment.options
    return opts.default_max_tokens if isinstance(opts, Options) else options_of(deployment, Options).default_max_tokens
