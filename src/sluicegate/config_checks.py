"""Settings that validate one by one but defeat each other together: warnings for ``check-config`` and ``serve``.

The retry budget: ``routing.retry.max_retry_time`` (counted from the request's arrival) stops new attempts,
while an attempt already running is bounded only by its own timeouts. A stream's attempt can take up to its
deployment's ``timeouts.first_token`` (which also bounds ``connect + headers``: the whole attempt runs under
it). If the budget is gone when the first attempt times out, an upstream that never answers is reported as
504 and the deployments and fallbacks after it are never tried.
"""

from __future__ import annotations

from .config import GatewayConfig, ModelConfig


def config_warnings(config: GatewayConfig) -> list[str]:
    return retry_budget_warnings(config)


def retry_budget_warnings(config: GatewayConfig) -> list[str]:
    """One warning per model whose retry budget has no room for a failover after a full first-attempt timeout."""
    budget = config.routing.retry.max_retry_time
    models = {m.id: m for m in config.models}
    out = []
    for model in config.models:
        first, then = _worst_two_attempts(model, models)
        if then is None or budget >= first + then:
            continue
        out.append(
            f"model {model.id!r}: routing.retry.max_retry_time ({budget:g} s) leaves no room for a failover after a "
            f"silent first attempt (up to {first:g} s, timeouts.first_token) plus the next attempt (up to {then:g} s): "
            f"a stream whose upstream never answers would get 504 without trying the next deployment or fallback. "
            f"Set max_retry_time to at least {first + then:g}, or lower first_token."
        )
    return out


def _worst_two_attempts(model: ModelConfig, models: dict[str, ModelConfig]) -> tuple[float, float | None]:
    """The longest first attempt (any own deployment may go first) and the longest attempt that may follow it."""
    own = sorted(d.timeouts.first_token for d in model.deployments)
    rest = own[:-1]
    for fallback_id in model.fallbacks:
        fallback = models.get(fallback_id)
        if fallback is not None and fallback.id != model.id:
            rest.extend(d.timeouts.first_token for d in fallback.deployments)
    return own[-1], (max(rest) if rest else None)
