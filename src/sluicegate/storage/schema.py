"""The database schema as SQLAlchemy Core tables: one definition for SQLite and PostgreSQL.

Tables here describe the newest schema; ``migrations.py`` holds the ordered steps that build it, so an
existing database is upgraded in place. Times are UTC epoch seconds (floats), portable across both engines.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)

metadata = MetaData()

# The counters every usage total holds (daily rollups, reports, the analytics cube), in one order.
USAGE_TOTALS = (
    "requests",
    "errors",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "cost_micro",
)

groups = Table(
    "groups",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("models", JSON, nullable=False),  # list of model ids or fnmatch patterns
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    # limits (0002): None = unlimited
    Column("rpm", Integer, nullable=True),
    Column("tpm", Integer, nullable=True),
    Column("budget_micro", BigInteger, nullable=True),
    Column("budget_period", String(10), nullable=True),  # total | day | month
    Column("dlp", JSON, nullable=True),  # (0003) per-direction DLP override, see policies/dlp.py
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("prefix", String(32), nullable=False, unique=True),
    Column("key_hash", String(64), nullable=False),  # hex SHA-256 of the whole key; the key itself is never stored
    Column("group_id", String(40), ForeignKey("groups.id"), nullable=False),
    Column("models", JSON, nullable=True),  # optional narrowing of the group's grants
    Column("expires_at", Float, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("last_used_at", Float, nullable=True),
    Column("revoked", Boolean, nullable=False, default=False),
    Column("revoked_at", Float, nullable=True),
    Column("rpm", Integer, nullable=True),
    Column("tpm", Integer, nullable=True),
    Column("budget_micro", BigInteger, nullable=True),
    Column("budget_period", String(10), nullable=True),
    Index("ix_api_keys_group", "group_id"),
)

# One row per request (SPEC §8). Raw rows are pruned after they are rolled up into usage_daily. Indexes are
# few on purpose: each is written by every group commit (migration 0004 says which were dropped and why).
usage = Table(
    "usage",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("request_id", String(140), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("day", String(10), nullable=False),  # UTC date of created_at, for rollups
    Column("key_id", String(40), nullable=False),
    Column("key_prefix", String(32), nullable=False),
    Column("group_name", String(200), nullable=True),
    Column("requested_model", String(200), nullable=False),
    Column("model", String(200), nullable=True),
    Column("deployment", String(300), nullable=True),
    Column("stream", Boolean, nullable=False),
    Column("status", Integer, nullable=False),
    Column("outcome", String(20), nullable=False),
    Column("error_code", String(80), nullable=True),
    Column("partial", Boolean, nullable=False),
    Column("estimated", Boolean, nullable=False),
    Column("prompt_tokens", Integer, nullable=False),
    Column("cached_tokens", Integer, nullable=False),
    Column("cache_write_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("reasoning_tokens", Integer, nullable=False),
    Column("cost_micro", BigInteger, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("ttft_ms", Float, nullable=True),
    Column("user_field", String(300), nullable=True),
    Column("attempts", JSON, nullable=False),
    Index("ix_usage_created", "created_at"),
    Index("ix_usage_key_created", "key_id", "created_at"),
    Index("ix_usage_group_created", "group_name", "created_at"),
)

usage_daily = Table(
    "usage_daily",
    metadata,
    Column("day", String(10), nullable=False),
    Column("key_id", String(40), nullable=False),
    Column("key_prefix", String(32), nullable=False),
    Column("group_name", String(200), nullable=False),  # "" when none
    Column("model", String(200), nullable=False),  # "" when no model answered
    Column("requests", BigInteger, nullable=False),
    Column("errors", BigInteger, nullable=False),
    Column("prompt_tokens", BigInteger, nullable=False),
    Column("cached_tokens", BigInteger, nullable=False),
    Column("completion_tokens", BigInteger, nullable=False),
    Column("reasoning_tokens", BigInteger, nullable=False),
    Column("cost_micro", BigInteger, nullable=False),
    PrimaryKeyConstraint("day", "key_id", "group_name", "model"),
)

rollup_days = Table(
    "rollup_days",
    metadata,
    Column("day", String(10), primary_key=True),
    Column("rolled_at", Float, nullable=False),
)

# Append-only, hash-chained: each row's hash covers its content and the previous row's hash.
audit_log = Table(
    "audit_log",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False),
    Column("created_at", Float, nullable=False),
    Column("kind", String(20), nullable=False),  # request | admin | dlp
    Column("actor", String(200), nullable=False),
    Column("action", String(80), nullable=False),
    Column("target", String(300), nullable=False),
    Column("payload", Text, nullable=False),  # canonical JSON, hashed as stored
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)

# The chain's head: one row, locked by every append so replicas extend one chain.
audit_head = Table(
    "audit_head",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
)

schema_migrations = Table(
    "schema_migrations",
    metadata,
    Column("version", String(20), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("applied_at", Float, nullable=False),
)
