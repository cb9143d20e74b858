"""Which deployments may answer a public model, in the order they are tried.

A model's own deployments come first (a weighted random order, so traffic spreads across keys and
providers), then each fallback model's deployments, in the configured order. The response is
attributed to the public model of the deployment that answered.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from ..config import Deployment, GatewayConfig, ModelConfig
from ..providers.base import Provider
from ..providers.options import default_max_tokens
from ..providers.registry import ProviderRegistry


@dataclass(frozen=True, slots=True)
class Target:
    model: ModelConfig
    deployment: Deployment
    provider: Provider
    is_fallback: bool
    key: str  # unique per deployment: the circuit breaker's and the metrics' handle
    accepts_prefill: bool = False  # may continue a stream that failed after its first byte


def deployment_key(model: ModelConfig, index: int) -> str:
    """The circuit breaker's handle of one deployment of one model (metrics map it back to labels)."""
    return f"{model.id}#{index}:{model.deployments[index].label}"


class Router:
    def __init__(
        self,
        config: GatewayConfig,
        providers: Mapping[str, Provider],
        registry: ProviderRegistry,
        rng: random.Random | None = None,
    ):
        self._models = {m.id: m for m in config.models}
        self._providers = providers
        self._prefill = {
            deployment_key(m, i): registry.accepts_prefill(d)
            for m in config.models
            for i, d in enumerate(m.deployments)
        }
        # A budget reserves this many output tokens when the client sets none: the most any deployment may send.
        self._max_tokens = {m.id: max(default_max_tokens(d) for d in m.deployments) for m in config.models}
        self._rng = rng or random.Random()

    def default_max_tokens(self, model: ModelConfig) -> int:
        return self._max_tokens[model.id]

    def model(self, model_id: str) -> ModelConfig | None:
        return self._models.get(model_id)

    @property
    def models(self) -> list[ModelConfig]:
        return list(self._models.values())

    def targets(self, model: ModelConfig) -> Iterator[Target]:
        yield from self._deployments(model, is_fallback=False)
        for fallback_id in model.fallbacks:
            fallback = self._models.get(fallback_id)
            if fallback is not None and fallback.id != model.id:
                yield from self._deployments(fallback, is_fallback=True)

    def _deployments(self, model: ModelConfig, *, is_fallback: bool) -> Iterator[Target]:
        order: Sequence[int] = range(len(model.deployments))
        if len(model.deployments) > 1:
            order = self._weighted_order(model.deployments)
        for i in order:
            deployment = model.deployments[i]
            key = deployment_key(model, i)
            provider = self._providers[deployment.provider]
            yield Target(model, deployment, provider, is_fallback, key, self._prefill[key])

    def _weighted_order(self, deployments: list[Deployment]) -> list[int]:
        # Efraimidis-Spirakis: sort by u^(1/w), a weighted shuffle without replacement.
        keyed = [(self._rng.random() ** (1.0 / d.weight), i) for i, d in enumerate(deployments)]
        keyed.sort(reverse=True)
        return [i for _, i in keyed]
