"""The configuration file: YAML with ``${ENV}`` interpolation, validated into frozen typed settings.

This module and ``settings.py`` are the only readers of the config file and the environment. Validation
errors name the field and the line it sits on, so ``sluicegate check-config`` can point at the mistake.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Protocol

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .dlp.config import DlpConfig

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_ORIGIN = re.compile(r"https?://[^/\s]+", re.IGNORECASE)


class ConfigError(Exception):
    """The config file is unusable; ``problems`` lists each as ``"line N: field: message"``."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))
        self.problems = problems


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Timeouts(_Strict):
    """Seconds. ``first_token`` runs from sending the request to the first chunk; ``idle`` between chunks."""

    connect: float = Field(default=5.0, gt=0)
    headers: float = Field(default=30.0, gt=0)
    first_token: float = Field(default=60.0, gt=0)
    idle: float = Field(default=60.0, gt=0)
    total: float = Field(default=600.0, gt=0)


class Price(_Strict):
    """Credits per million tokens."""

    input: float = Field(default=0.0, ge=0)
    cached_input: float | None = Field(default=None, ge=0)
    output: float = Field(default=0.0, ge=0)


Problem = tuple[tuple[str | int, ...], str]  # (path inside one deployment, message)


class ProviderCatalog(Protocol):
    """What the config needs to know about providers (``providers.registry``): checking one deployment."""

    def check(self, deployment: Deployment) -> tuple[Any, list[Problem]]:
        """The deployment's typed options, and what is wrong with it (the options are None if anything is)."""
        ...


_DEPLOYMENT_FIELDS = frozenset(
    {"provider", "name", "model", "api_base", "api_key", "weight", "timeouts", "strict", "prefill", "options"}
)


class Deployment(_Strict):
    """One upstream that can answer a model. Settings only some providers take (``default_max_tokens``,
    ``token_delay_ms``, ...) sit beside these in the file; they are gathered into ``options`` and checked by
    the provider's own options model (``providers.registry``)."""

    provider: str = Field(min_length=1)
    # A label for records, metrics and logs; defaults to "provider/model".
    name: str | None = None
    model: str = ""
    api_base: str | None = None
    api_key: str | None = Field(default=None, repr=False)
    weight: float = Field(default=1.0, gt=0)
    timeouts: Timeouts = Timeouts()
    # End the stream with stream_error on a malformed upstream event instead of dropping the event.
    strict: bool = False
    # Whether this upstream continues a trailing assistant message (prefill). Default: the provider's
    # (Anthropic yes, others no: an OpenAI-compatible server may start a new answer instead).
    prefill: bool | None = None
    # The provider's own settings: a dict as written, the provider's typed options once validated.
    options: Any = None

    @property
    def label(self) -> str:
        return self.name or f"{self.provider}/{self.model or self.provider}"

    @model_validator(mode="before")
    @classmethod
    def _gather_options(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        extra = {k: v for k, v in data.items() if k not in _DEPLOYMENT_FIELDS}
        if not extra:
            return data
        return {**{k: v for k, v in data.items() if k in _DEPLOYMENT_FIELDS}, "options": {**extra}}


class ModelConfig(_Strict):
    id: str = Field(min_length=1)
    deployments: list[Deployment] = Field(min_length=1)
    fallbacks: list[str] = []
    # A larger-context model to use when the upstream says the prompt is too long.
    context_window_fallback: str | None = None
    # After the first byte, continue a failed stream on another deployment (or fallback) that accepts an
    # assistant prefill, instead of ending it with stream_error. Off by default.
    continue_on_failure: bool = False
    price: Price = Price()
    owned_by: str = "sluicegate"


class ServerConfig(_Strict):
    # 8 MiB (a 2M-token prompt) keeps the longest event-loop stall of one request, decoding its JSON, near
    # 15 ms; each MiB more adds ~2 ms (docs/observability.md, "Event-loop lag").
    max_body_bytes: int = Field(default=8 * 1024 * 1024, gt=0)
    # After every choice has its finish_reason, how long to wait for the usage chunk and [DONE].
    tail_grace: float = Field(default=2.0, gt=0)
    # Send ": keep-alive" comments while waiting for a slow first token after this many seconds (off when
    # null). Trade-off: the first comment commits the status to 200, so a later failure is a stream_error frame.
    keepalive_after: float | None = Field(default=None, gt=0)
    keepalive_interval: float = Field(default=10.0, gt=0)
    # On SIGTERM: how long in-flight streams may run before they are ended with a stream_error frame.
    drain_timeout: float = Field(default=30.0, ge=0)
    # Load shedding: chat requests in flight per process (503 overloaded beyond it) and per key (429
    # concurrency_limit_exceeded); null = no cap. Health, readiness and metrics are never shed. Left out, the
    # per-key cap is half the process cap, so one key (slow bodies, a runaway client) cannot take all of it.
    max_concurrent_requests: int | None = Field(default=10_000, ge=1)
    max_concurrent_per_key: int | None = Field(default=None, ge=1)
    # Slow senders: seconds from a request's first byte to the end of its headers, and from there to the end
    # of its body (both totals, so trickling a byte at a time does not reset them); then 408 and close.
    header_timeout: float = Field(default=10.0, gt=0)
    body_timeout: float = Field(default=60.0, gt=0)
    # Request line plus headers, in bytes, and the number of header lines: beyond either, 431.
    max_header_bytes: int = Field(default=32 * 1024, ge=1024)
    max_headers: int = Field(default=100, ge=8)
    # Browser origins allowed to call the API (CORS), e.g. ["https://app.example.com"]; ["*"] allows any.
    # Empty (the default): no CORS headers, and preflight requests get 405.
    cors_origins: list[str] = []
    # The listen queue (raise with net.core.somaxconn for bursts of thousands of new streams).
    backlog: int = Field(default=4096, ge=16)
    # Idle client keep-alive; keep it longer than a load balancer's upstream keepalive_timeout (nginx: 4 s).
    keepalive_timeout: float = Field(default=5.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _per_key_default(cls, data: Any) -> Any:
        if isinstance(data, dict) and "max_concurrent_per_key" not in data:
            total = data.get("max_concurrent_requests", 10_000)
            if isinstance(total, int) and total >= 1:
                data = {**data, "max_concurrent_per_key": max(1, total // 2)}
        return data

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, origins: list[str]) -> list[str]:
        for origin in origins:
            if origin != "*" and not _ORIGIN.fullmatch(origin):
                raise ValueError(f"{origin!r} is not an origin (scheme://host[:port], no path) or '*'")
        return [o.lower() for o in origins]


class StorageConfig(_Strict):
    # Connections per process to PostgreSQL: pool_size kept open, up to max_overflow more under load.
    pool_size: int = Field(default=10, ge=1)
    max_overflow: int = Field(default=10, ge=0)


class RetryConfig(_Strict):
    """Retries before the first byte only; never after the client has received content."""

    max_attempts_per_deployment: int = Field(default=2, ge=1, le=10)
    backoff_base: float = Field(default=0.2, ge=0)
    backoff_max: float = Field(default=2.0, ge=0)
    # Wait for an upstream's Retry-After up to this many seconds; a longer hint moves on to another deployment.
    retry_after_cap: float = Field(default=2.0, ge=0)
    # No new attempt or wait starts after this many seconds from the request's arrival (a running attempt is
    # bounded by its own timeouts). The default leaves room for a failover after a silent first attempt at the
    # default first_token (60 + 60); `check-config` warns about configs where it does not (config_checks.py).
    max_retry_time: float = Field(default=120.0, gt=0)


class CircuitConfig(_Strict):
    enabled: bool = True
    failure_threshold: int = Field(default=5, ge=1)
    window: float = Field(default=30.0, gt=0)
    cooldown: float = Field(default=10.0, gt=0)


class RoutingConfig(_Strict):
    retry: RetryConfig = RetryConfig()
    circuit: CircuitConfig = CircuitConfig()


class AuthConfig(_Strict):
    # How long a verified key is trusted from memory. Revocation is immediate on the process that
    # revoked and, with Redis, on every other; without Redis other processes see it within this TTL.
    cache_ttl: float = Field(default=5.0, gt=0, le=300)


class ObservabilityConfig(_Strict):
    """Metrics, request logs and traces (docs/observability.md)."""

    # Prometheus metrics at GET /metrics; off removes the sink and the endpoint (404).
    metrics: bool = True
    # Require the master key on /metrics. Off by default: scrapers on a private network rarely carry one,
    # and the metrics hold no secrets (only model, deployment and group names, counts and durations).
    metrics_auth: bool = False
    # One info line per request on the ``sluicegate.request`` logger.
    request_log: bool = True
    # OTLP/HTTP traces endpoint (e.g. http://collector:4318); SLUICEGATE_OTEL_ENDPOINT overrides it.
    # Unset means tracing is off and OpenTelemetry is never imported.
    otlp_endpoint: str | None = None
    service_name: str = Field(default="sluicegate", min_length=1)


class MeteringConfig(_Strict):
    # Off: no usage records (and no request audit entries). For measurement only: budgets then see no spend.
    enabled: bool = True
    # Raw usage rows older than this are deleted once their day is rolled up into daily totals.
    retention_days: int = Field(default=90, ge=1)
    rollup_interval: float = Field(default=3600.0, gt=0)
    # Add every request to the hash-chained audit log (admin actions always are).
    audit_requests: bool = True
    # Prompt logging: keep each forwarded request's messages (after DLP redaction), as JSON cut at
    # audit_prompt_max_chars, in its audit entry. Off by default: prompts may hold personal data.
    audit_prompts: bool = False
    audit_prompt_max_chars: int = Field(default=65_536, ge=256)
    # Bounded queue of records waiting for their group commit; callers wait when it is full.
    max_pending: int = Field(default=10_000, ge=100)


class LimitsConfig(_Strict):
    # When Redis (shared limits) is unreachable: refuse (closed, the default) or admit without limits (open).
    on_redis_error: Literal["closed", "open"] = "closed"
    # A budget reservation expires on its own this many seconds after the longest its request can run (the
    # retry window plus the longest total timeout of a deployment that may answer), in case no process is
    # left to settle it (one killed mid-request).
    budget_hold_grace: float = Field(default=60.0, gt=0)


class ConsoleConfig(_Strict):
    """The admin web console at /ui (docs/console.md)."""

    enabled: bool = True
    # A session ends after this many seconds without a page view, and in any case this long after login.
    session_idle: float = Field(default=1800.0, gt=0)
    session_max: float = Field(default=43_200.0, gt=0)
    # Login attempts per minute per client address (and ten times that from all clients together).
    login_attempts_per_minute: int = Field(default=5, ge=1, le=1000)
    # Secure cookie flag: null sets it when the request came over TLS; true when TLS ends at a proxy.
    secure_cookie: bool | None = None


class GatewayConfig(_Strict):
    models: list[ModelConfig] = Field(min_length=1)
    server: ServerConfig = ServerConfig()
    auth: AuthConfig = AuthConfig()
    routing: RoutingConfig = RoutingConfig()
    storage: StorageConfig = StorageConfig()
    metering: MeteringConfig = MeteringConfig()
    limits: LimitsConfig = LimitsConfig()
    # Data loss prevention defaults (groups may override a direction); absent = no scanning.
    dlp: DlpConfig = DlpConfig()
    observability: ObservabilityConfig = ObservabilityConfig()
    console: ConsoleConfig = ConsoleConfig()

    @field_validator("models")
    @classmethod
    def _unique_ids(cls, models: list[ModelConfig]) -> list[ModelConfig]:
        seen: set[str] = set()
        for m in models:
            if m.id in seen:
                raise ValueError(f"duplicate model id {m.id!r}")
            seen.add(m.id)
        ids = {m.id for m in models}
        for m in models:
            for fb in m.fallbacks:
                if fb not in ids:
                    raise ValueError(f"model {m.id!r}: fallback {fb!r} is not a configured model")
            if m.context_window_fallback is not None and m.context_window_fallback not in ids:
                raise ValueError(
                    f"model {m.id!r}: context_window_fallback {m.context_window_fallback!r} is not a configured model"
                )
        return models

    def model(self, model_id: str) -> ModelConfig | None:
        for m in self.models:
            if m.id == model_id:
                return m
        return None

    def request_deadline(self, model: ModelConfig) -> float:
        """Seconds a request for ``model`` can run at most: the retry window plus the longest total timeout of a
        deployment that may answer it (its own, its fallbacks', its larger-context fallback's)."""
        ids = [model.id, *model.fallbacks, *([model.context_window_fallback] if model.context_window_fallback else [])]
        totals = [d.timeouts.total for m in map(self.model, ids) if m is not None for d in m.deployments]
        return self.routing.retry.max_retry_time + max(totals)


DEMO_CONFIG: dict[str, Any] = {
    "models": [
        {
            "id": "demo",
            "owned_by": "sluicegate",
            "deployments": [{"provider": "demo", "model": "demo"}],
        }
    ]
}


def load_config(
    path: str | Path | None, environ: Mapping[str, str] | None = None, providers: ProviderCatalog | None = None
) -> GatewayConfig:
    """Read, interpolate and validate a config file; ``None`` gives the built-in demo config.

    ``providers`` checks each deployment's provider and options (without it they are taken as written).
    """
    if path is None:
        config = GatewayConfig.model_validate(DEMO_CONFIG)
        if providers is not None:
            check_providers(config, providers)
        return config
    environ = os.environ if environ is None else environ
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"cannot read {path}: {exc.strerror}"]) from exc
    return parse_config(text, environ, providers)


def parse_config(text: str, environ: Mapping[str, str], providers: ProviderCatalog | None = None) -> GatewayConfig:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError([f"not valid YAML: {exc}"]) from exc
    if node is None:
        raise ConfigError(["the file is empty"])
    problems: list[str] = []
    data = _interpolate(yaml.safe_load(text), environ, problems, node, ())
    if problems:
        raise ConfigError(problems)
    if not isinstance(data, dict):
        raise ConfigError(["line 1: the top level must be a mapping"])
    try:
        config = GatewayConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([_describe(err, node) for err in exc.errors()]) from exc
    if providers is not None:
        check_providers(config, providers, node)
    return config


def check_providers(config: GatewayConfig, providers: ProviderCatalog, node: yaml.Node | None = None) -> None:
    """Check every deployment's provider and options, and give each its typed options."""
    problems: list[str] = []
    for i, model in enumerate(config.models):
        for j, deployment in enumerate(model.deployments):
            options, found = providers.check(deployment)
            for where, message in found:
                path = ("models", i, "deployments", j, *where)
                line = _line_of(node, path) if node is not None else None
                problems.append(f"{f'line {line}: ' if line else ''}{_dotted(path)}: {message}")
            deployment.__dict__["options"] = options  # frozen for everyone else; set once, here
    if problems:
        raise ConfigError(problems)


def _interpolate(
    value: Any, environ: Mapping[str, str], problems: list[str], root: yaml.Node, path: tuple[Any, ...]
) -> Any:
    if isinstance(value, str):

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in environ:
                return environ[name]
            if default is not None:
                return default
            line = _line_of(root, path)
            where = f"line {line}: " if line else ""
            problems.append(f"{where}{_dotted(path)}: environment variable {name} is not set")
            return ""

        return _ENV_REF.sub(sub, value)
    if isinstance(value, dict):
        return {k: _interpolate(v, environ, problems, root, (*path, k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, environ, problems, root, (*path, i)) for i, v in enumerate(value)]
    return value


def _describe(err: Any, root: yaml.Node) -> str:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith(("function-", "model-"))))
    line = _line_of(root, loc)
    where = f"line {line}: " if line else ""
    msg = str(err["msg"]).removeprefix("Value error, ")
    return f"{where}{_dotted(loc) or '(top level)'}: {msg}"


def _dotted(path: tuple[Any, ...]) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _line_of(root: yaml.Node, path: tuple[Any, ...]) -> int | None:
    """The 1-based line of the deepest node along ``path`` that exists in the YAML document."""
    node = root
    line = node.start_mark.line + 1
    for part in path:
        child = None
        if isinstance(node, yaml.MappingNode):
            for key, val in node.value:
                if key.value == part:
                    child = val
                    line = key.start_mark.line + 1
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            child = node.value[part]
            line = child.start_mark.line + 1
        if child is None:
            break
        node = child
    return line
