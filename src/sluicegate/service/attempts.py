"""Trying targets before the first byte: bounded retries per deployment, then the next deployment or fallback.

Every attempt is logged on the context (failed ones too; they are listed in the record, never billed) and
reported to the circuit breaker: a retryable failure counts against its deployment, a request-specific
one (a 4xx the upstream will give again) does not. A ``context_length_exceeded`` switches once to the
model's ``context_window_fallback``. ``Retry-After`` hints are honoured when short; a longer one moves on.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ..config import ModelConfig, RetryConfig
from ..errors import GatewayError, StreamInterrupted, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from ..hooks import RequestContext, Served
from ..policies.access import may_use
from ..records import Attempt
from ..routing.backoff import backoff_delay
from ..routing.circuit import CircuitBreaker
from ..routing.router import Router, Target

T = TypeVar("T")


class AttemptLoop:
    def __init__(self, retry: RetryConfig, router: Router, breaker: CircuitBreaker, rng: random.Random) -> None:
        self._retry = retry
        self._router = router
        self._breaker = breaker
        self._rng = rng

    async def run(self, ctx: RequestContext, model: ModelConfig, call: Callable[[Target], Awaitable[T]]) -> T:
        """Try targets in order with bounded retries; return the first success or raise the last error."""
        loop = asyncio.get_running_loop()
        deadline = ctx.started + self._retry.max_retry_time
        breaker = self._breaker
        last_error: GatewayError | None = None
        targets = self._router.targets(model)
        context_fallback_used = False
        while (target := next(targets, None)) is not None:
            if not may_use(ctx.principal, target.model.id):
                # A fallback is asked only if the key could ask for it directly; skipped, never silently used.
                ctx.attempt_log.append(skipped(target, "model_access_denied"))
                continue
            if not breaker.allow(target.key):
                ctx.attempt_log.append(skipped(target, "circuit_open"))
                last_error = last_error or UpstreamUnavailable("every deployment of this model is unavailable")
                continue
            tries = 0
            while True:
                tries += 1
                ctx.attempts += 1
                started = time.perf_counter()
                started_at = time.time()
                try:
                    result = await call(target)
                except (UpstreamError, StreamInterrupted, TimeoutError) as exc:
                    err = pre_stream_error(exc)
                    ctx.attempt_log.append(attempt_record(target, started, started_at, err.code, err.status))
                    last_error = err
                    if err.retryable:
                        breaker.failure(target.key)
                    else:
                        breaker.release_probe(target.key)
                        fallback = model.context_window_fallback
                        if err.code == "context_length_exceeded" and fallback and not context_fallback_used:
                            fallback_model = self._router.model(fallback)
                            if fallback_model is not None:
                                context_fallback_used = True
                                targets = self._router.targets(fallback_model)
                                break
                        raise err from exc
                    wait = self._retry_wait(err, tries)
                    if wait is None or loop.time() + wait >= deadline:
                        break
                    await asyncio.sleep(wait)
                    continue
                except BaseException:
                    breaker.release_probe(target.key)
                    raise
                breaker.success(target.key)
                ctx.attempt_log.append(attempt_record(target, started, started_at))
                ctx.served_by = Served(target.model, target.deployment)
                # Fallback models tried (a model switch each), whether or not they answered; one the key may
                # not use was not tried (and counting it would tell the client it exists).
                tried = {a.model for a in ctx.attempt_log if a.error_code != "model_access_denied"}
                ctx.fallbacks = len(tried - {model.id})
                return result
            if loop.time() >= deadline:
                break
        raise last_error or UpstreamUnavailable("no deployment is available for this model")

    def _retry_wait(self, err: UpstreamError, tries: int) -> float | None:
        """Seconds to wait before retrying the same deployment, or None to move on."""
        retry = self._retry
        if isinstance(err, UpstreamTimeout) or tries >= retry.max_attempts_per_deployment:
            return None  # a silent route only multiplies the wait: move on
        if err.retry_after is not None:
            return err.retry_after if err.retry_after <= retry.retry_after_cap else None
        return backoff_delay(retry, tries - 1, self._rng)


def attempt_record(
    target: Target, started: float, started_at: float, error_code: str | None = None, status: int | None = None
) -> Attempt:
    """The record of one finished attempt (``started``: perf_counter; ``started_at``: epoch)."""
    return Attempt(
        target.model.id,
        target.deployment.label,
        error_code is None,
        error_code,
        status,
        (time.perf_counter() - started) * 1000,
        started_at,
        time.time(),
    )


def skipped(target: Target, error_code: str) -> Attempt:
    """The record of a target passed over without a network call (``Attempt.skipped``)."""
    now = time.time()
    return Attempt(target.model.id, target.deployment.label, False, error_code, started_at=now, ended_at=now)


def pre_stream_error(exc: BaseException) -> UpstreamError:
    if isinstance(exc, UpstreamError):
        return exc
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout("the upstream sent no first token in time")
    if isinstance(exc, StreamInterrupted):
        return UpstreamError(f"the upstream failed before the first token: {exc.message}")
    return UpstreamError("the upstream failed")
