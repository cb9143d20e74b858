"""What happened: the record of one request every hook reads, and an entry of the audit log."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .types import Usage

# Error codes of attempts that were skipped without a network call: an open circuit, or a fallback or
# continuation target the key may not use.
SKIPPED_CODES = frozenset(("circuit_open", "model_access_denied"))


@dataclass(slots=True)
class Attempt:
    """One try at one deployment. Failed attempts are kept, never billed."""

    model: str
    deployment: str
    ok: bool
    error_code: str | None = None
    status: int | None = None
    latency_ms: float = 0.0
    # Epoch seconds, so traces can be emitted after the fact with the attempt's real start and end.
    started_at: float = 0.0
    ended_at: float = 0.0

    @property
    def skipped(self) -> bool:
        """Never sent upstream (nothing was tried, so it is neither a retry nor a failure of the deployment)."""
        return not self.ok and self.error_code in SKIPPED_CODES


@dataclass(slots=True)
class RequestRecord:
    request_id: str
    key_id: str
    key_prefix: str
    group: str | None
    requested_model: str
    model: str | None  # the public model that answered (a fallback's id when one did)
    deployment: str | None
    stream: bool
    started_at: float  # epoch seconds
    user: str | None = None
    status: int = 0  # the HTTP status the client got (200 for a stream that started)
    outcome: str = "pending"  # completed | interrupted | cancelled | failed | rejected
    error_code: str | None = None
    usage: Usage | None = None
    partial: bool = False
    cost_micro: int = 0
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    attempts: list[Attempt] = field(default_factory=list)
    metadata: dict[str, str] | None = None  # the client's ``metadata`` (kept for the audit log, never forwarded)
    # Epoch start and end of the commit that made this record durable (set by the recorder).
    stored: tuple[float, float] | None = None
    api: str = "chat"  # the inbound API: chat | messages | responses | embeddings

    @property
    def estimated(self) -> bool:
        return self.usage is not None and self.usage.estimated

    @property
    def billable(self) -> bool:
        """Only a request that reached an upstream and got tokens back costs anything."""
        return self.usage is not None and self.deployment is not None


class AuditEntry(NamedTuple):  # a tuple: built for every request, and a frozen dataclass costs 3x more
    created_at: float
    kind: str  # request | admin | dlp
    actor: str
    action: str
    target: str
    payload: dict[str, Any]
