"""Usage → cost in integer micro-credits (never floats in the ledger).

Prices are credits per million tokens, so one token at price P costs exactly P micro-credits. Each
component is computed in ``Decimal`` and the request's total is rounded half-up once.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from ..config import Price
from ..types import Usage


def cost_micro(usage: Usage, price: Price) -> int:
    cached = min(usage.cached_tokens, usage.prompt_tokens)
    fresh = usage.prompt_tokens - cached
    cached_price = price.cached_input if price.cached_input is not None else price.input
    total = (
        Decimal(fresh) * Decimal(str(price.input))
        + Decimal(cached) * Decimal(str(cached_price))
        + Decimal(usage.completion_tokens) * Decimal(str(price.output))
    )
    return int(total.quantize(Decimal(1), rounding=ROUND_HALF_UP))
