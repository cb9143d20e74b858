"""Every provider family the gateway can call, in one table: adding one touches this file and its own module.

A ``ProviderSpec`` says how to build the adapter, what the family can do (accept an assistant prefill,
require ``max_tokens``, pass an inbound API through natively), which settings its deployments may carry
beside the common ones (its own typed ``options``, validated with the config file so a mistake names its
line), what its deployments require, and its name in traces. Nothing else in the gateway compares
provider names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from pydantic import ValidationError

from ..config import Deployment, Problem
from ..tokens import TokenCounter
from .anthropic import AnthropicProvider
from .base import Provider
from .demo import DemoProvider
from .gemini import GeminiProvider
from .openai_compat import OpenAICompatProvider
from .options import DemoOptions, Options


@dataclass(frozen=True, slots=True)
class Deps:
    """What adapters may be built with: the shared upstream HTTP session and the tokenizer."""

    session: aiohttp.ClientSession
    tokens: TokenCounter


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    name: str
    build: Callable[[Deps], Provider]
    trace_name: str  # gen_ai.system / gen_ai.provider.name
    options: type[Options] = Options
    prefill: bool = False  # continues a trailing assistant message (default of a deployment's ``prefill``)
    needs_max_tokens: bool = False
    needs_api_base: bool = False
    needs_model: bool = True
    native_apis: frozenset[str] = field(default_factory=frozenset)  # inbound APIs it can take as they come


class ProviderRegistry:
    """The provider table, also the config's ``ProviderCatalog``: validates ``provider`` and its options."""

    def __init__(self, specs: list[ProviderSpec]) -> None:
        self._specs = {s.name: s for s in specs}

    def __getitem__(self, name: str) -> ProviderSpec:
        return self._specs[name]

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    @property
    def names(self) -> list[str]:
        return list(self._specs)

    def check(self, deployment: Deployment) -> tuple[Any, list[Problem]]:
        """The deployment's typed options and its problems (``config.ProviderCatalog``)."""
        spec = self._specs.get(deployment.provider)
        if spec is None:
            return None, [(("provider",), f"unknown provider {deployment.provider!r}; known: {', '.join(self._specs)}")]
        problems: list[Problem] = []
        if spec.needs_api_base and not deployment.api_base:
            problems.append(((), f"api_base is required for provider {spec.name!r}"))
        if spec.needs_model and not deployment.model:
            problems.append(((), f"model (the upstream model name) is required for provider {spec.name!r}"))
        raw = deployment.options if isinstance(deployment.options, Mapping) else {}
        try:
            options = spec.options.model_validate(raw)
        except ValidationError as exc:
            for err in exc.errors():
                problems.append((tuple(err["loc"]), f"{err['msg']} (provider {spec.name!r})"))
            return None, problems
        return (None if problems else options), problems

    def accepts_prefill(self, deployment: Deployment) -> bool:
        if deployment.prefill is not None:
            return deployment.prefill
        spec = self._specs.get(deployment.provider)
        return spec is not None and spec.prefill

    def build(self, deps: Deps, names: set[str]) -> dict[str, Provider]:
        """One adapter per family in use (one instance serves all its deployments)."""
        return {name: self._specs[name].build(deps) for name in names}

    def trace_names(self) -> dict[str, str]:
        return {name: spec.trace_name for name, spec in self._specs.items()}


PROVIDERS = ProviderRegistry(
    [
        # Any OpenAI-compatible server: OpenAI, vLLM, Ollama, llama.cpp, Groq, ...
        ProviderSpec(
            "openai",
            lambda d: OpenAICompatProvider(d.session),
            trace_name="openai",
            needs_api_base=True,
            native_apis=frozenset({"chat"}),
        ),
        ProviderSpec(
            "anthropic",
            lambda d: AnthropicProvider(d.session),
            trace_name="anthropic",
            prefill=True,  # Messages continues a trailing assistant turn
            needs_max_tokens=True,
        ),
        ProviderSpec("gemini", lambda d: GeminiProvider(d.session), trace_name="gcp.gemini", needs_max_tokens=True),
        ProviderSpec(
            "demo",
            lambda d: DemoProvider(d.tokens),
            trace_name="sluicegate.demo",
            options=DemoOptions,
            needs_model=False,
        ),
    ]
)
