"""Retry timing: exponential backoff with full jitter.

A random wait between 0 and the capped exponential, so that many gateways retrying the same provider do
not synchronise. A ``Retry-After`` hint is honoured when it is short (see ``service.attempts``); a longer
one means "go elsewhere" rather than hold the client.
"""

from __future__ import annotations

import random

from ..config import RetryConfig


def backoff_delay(config: RetryConfig, retry_number: int, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(max, base * 2**n)]; ``retry_number`` counts from 0."""
    ceiling = min(config.backoff_max, config.backoff_base * (2**retry_number))
    return rng.uniform(0.0, ceiling)
