"""Load shedding: caps on concurrent chat requests, globally and per key, answered fast instead of queued.

Beyond the caps a request is refused at once (503 ``overloaded`` globally, 429 ``concurrency_limit_exceeded``
per key, both with ``Retry-After``) before its body is parsed or any upstream is called, so an overload
never becomes an unbounded queue of waiting coroutines. Health, readiness and metrics are not counted,
so they stay responsive while chat traffic is shed.
"""

from __future__ import annotations

from ..errors import Overloaded, RateLimited


class ConcurrencyLimited(RateLimited):
    code = "concurrency_limit_exceeded"


class LoadShedder:
    def __init__(self, max_total: int | None, max_per_key: int | None) -> None:
        self._max_total = max_total
        self._max_per_key = max_per_key
        self.inflight = 0
        self._per_key: dict[str, int] = {}
        self.shed_total = 0

    def admit(self, key_id: str) -> None:
        if self._max_total is not None and self.inflight >= self._max_total:
            self.shed_total += 1
            raise Overloaded("The gateway is at capacity; retry shortly.", headers={"retry-after": "1"})
        if self._max_per_key is not None:
            current = self._per_key.get(key_id, 0)
            if current >= self._max_per_key:
                self.shed_total += 1
                raise ConcurrencyLimited(
                    f"This key already has {current} requests in flight (the limit); retry when one finishes.",
                    headers={"retry-after": "1"},
                )
            self._per_key[key_id] = current + 1
        self.inflight += 1

    def release(self, key_id: str) -> None:
        self.inflight -= 1
        if self._max_per_key is not None:
            left = self._per_key.get(key_id, 1) - 1
            if left > 0:
                self._per_key[key_id] = left
            else:
                self._per_key.pop(key_id, None)
