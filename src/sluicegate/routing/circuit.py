"""Circuit breaking: which deployments to leave alone for a while.

The circuit breaker counts failures per deployment in a sliding window. Once open it sends no traffic
for ``cooldown`` seconds, then lets exactly one probe through (half-open); the probe's success closes it
at once, its failure re-opens it. State changes go to every listener (``add_listener``): the Redis bus shares
them so replicas agree, the metrics show them.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ..bus import LocalBus
from ..config import CircuitConfig


@dataclass(slots=True)
class _Circuit:
    failures: deque[float] = field(default_factory=deque)
    open_until: float = 0.0
    probing: bool = False

    @property
    def state(self) -> str:
        if self.open_until == 0.0:
            return "closed"
        return "open" if time.monotonic() < self.open_until else "half_open"


StateListener = Callable[[str, str], None]  # (deployment key, "open" | "closed")


class CircuitBreaker:
    def __init__(self, config: CircuitConfig, on_change: StateListener | None = None) -> None:
        self._config = config
        self._circuits: dict[str, _Circuit] = {}
        # (listener, also told of changes applied from other processes): the Redis bus must not be told of
        # remote changes (it would echo them back), a state gauge must.
        self._listeners: list[tuple[StateListener, bool]] = []
        if on_change is not None:
            self.add_listener(on_change)

    def add_listener(self, listener: StateListener, *, remote: bool = False) -> None:
        self._listeners.append((listener, remote))

    def _changed(self, key: str, state: str, *, remote: bool = False) -> None:
        for listener, wants_remote in self._listeners:
            if wants_remote or not remote:
                listener(key, state)

    def state(self, key: str) -> str:
        circuit = self._circuits.get(key)
        return circuit.state if circuit else "closed"

    def allow(self, key: str) -> bool:
        """May a request go to this deployment now? In half-open state, only one probe at a time."""
        if not self._config.enabled:
            return True
        circuit = self._circuits.get(key)
        if circuit is None or circuit.open_until == 0.0:
            return True
        if time.monotonic() < circuit.open_until:
            return False
        if circuit.probing:
            return False
        circuit.probing = True
        return True

    def success(self, key: str) -> None:
        circuit = self._circuits.get(key)
        if circuit is None:
            return
        was_open = circuit.open_until != 0.0
        circuit.failures.clear()
        circuit.open_until = 0.0
        circuit.probing = False
        if was_open:
            self._changed(key, "closed")

    def failure(self, key: str) -> None:
        if not self._config.enabled:
            return
        circuit = self._circuits.setdefault(key, _Circuit())
        now = time.monotonic()
        if circuit.open_until != 0.0:
            # A failed probe (or a straggler): open again for a full cooldown.
            circuit.open_until = now + self._config.cooldown
            circuit.probing = False
            return
        circuit.failures.append(now)
        horizon = now - self._config.window
        while circuit.failures and circuit.failures[0] < horizon:
            circuit.failures.popleft()
        if len(circuit.failures) >= self._config.failure_threshold:
            circuit.open_until = now + self._config.cooldown
            circuit.failures.clear()
            self._changed(key, "open")

    def release_probe(self, key: str) -> None:
        """A probe that ended without a verdict (the client left): let another one through."""
        circuit = self._circuits.get(key)
        if circuit is not None:
            circuit.probing = False

    def apply_remote(self, key: str, state: str) -> None:
        """Another process opened or closed this circuit."""
        circuit = self._circuits.setdefault(key, _Circuit())
        if state == "open":
            circuit.open_until = max(circuit.open_until, time.monotonic() + self._config.cooldown)
            circuit.failures.clear()
            self._changed(key, "open", remote=True)
        elif state == "closed":
            circuit.open_until = 0.0
            circuit.failures.clear()
            circuit.probing = False
            self._changed(key, "closed", remote=True)


class CircuitSharing:
    """Shares this process's circuit changes on the bus and applies other processes', so replicas agree.

    Only with a shared (Redis) bus: this process's own changes are already applied, so they are published
    for the others only, and the bus never hands a process its own messages back.
    """

    def __init__(self, breaker: CircuitBreaker, bus: LocalBus) -> None:
        self._bus = bus
        self._pending: set[asyncio.Task[None]] = set()
        breaker.add_listener(self._changed)
        bus.subscribe("circuit", lambda m: breaker.apply_remote(str(m.get("key")), str(m.get("state"))))

    def _changed(self, key: str, state: str) -> None:
        """Called synchronously by the breaker; the publish runs in the background."""
        task = asyncio.get_running_loop().create_task(
            self._bus.publish("circuit", {"key": key, "state": state}, local=False)
        )
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
