"""Usage → cost in integer micro-credits (never floats in the ledger).

Prices are credits per million tokens, so one token at price P costs exactly P micro-credits. A price is
read once as the exact decimal it was written as (``0.15`` is 15/100, not the nearest binary float) and
scaled to an integer; every cost after that is integer arithmetic, with the request's total rounded
half-up once. This runs on every request, so the decimal parsing is cached per price.
"""

from __future__ import annotations

import functools
from decimal import Decimal

from .config import Price
from .types import Usage


@functools.lru_cache(maxsize=1024)
def scaled(*prices: float) -> tuple[tuple[int, ...], int]:
    """``prices`` as integers over one power-of-ten denominator: ``((n1, n2, ...), scale)``, exactly."""
    exact = [Decimal(str(p)) for p in prices]
    digits = max((-int(d.as_tuple().exponent) for d in exact), default=0)
    scale = 10 ** max(0, digits)
    return tuple(int(d * scale) for d in exact), scale


def cost_micro(usage: Usage, price: Price) -> int:
    cached = min(usage.cached_tokens, usage.prompt_tokens)
    fresh = usage.prompt_tokens - cached
    cached_price = price.cached_input if price.cached_input is not None else price.input
    (n_in, n_cached, n_out), scale = scaled(price.input, cached_price, price.output)
    total = fresh * n_in + cached * n_cached + usage.completion_tokens * n_out
    return (2 * total + scale) // (2 * scale)  # total / scale, rounded half-up


def ceil_micro(tokens: int, price_per_million: float) -> int:
    """An upper bound in micro-credits for ``tokens`` at one price (budget reservations round up)."""
    (n,), scale = scaled(price_per_million)
    return -(-tokens * n // scale)
