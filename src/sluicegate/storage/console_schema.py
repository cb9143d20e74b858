"""Tables of the analytics cube and the web console (migration 0005), on the same metadata as ``schema.py``.

``usage_hourly`` is a cube of complete UTC hours: one row per (dimension, hour, value), where the dimension is
``model``, ``group``, ``key`` (the key's id, stable across rotations) or ``deployment`` (the one that answered).
Each row holds the hour's counts and sums plus two histograms (total latency and time to first token) with
fixed bounds, so percentiles over any range are a sum of histograms, in SQL, on SQLite and PostgreSQL alike.
``rollup_marks['hourly']`` is the first hour not yet rolled: hours before it come from the cube, the rest from
raw rows (``metering/usage_analytics.py``).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Float, PrimaryKeyConstraint, String, Table

from .schema import USAGE_TOTALS, metadata

# Upper bounds (milliseconds, exclusive) of the histogram buckets; one more bucket holds everything above.
# Roughly 1.5x apart: a percentile read from them is within about a fifth of the true value.
HISTOGRAM_BOUNDS_MS: tuple[float, ...] = (
    5, 10, 20, 35, 50, 75, 100, 150, 200, 300, 500, 750, 1_000, 1_500, 2_000, 3_000, 5_000, 7_500, 10_000,
    15_000, 20_000, 30_000, 60_000, 120_000, 300_000,
)  # fmt: skip
BUCKETS = len(HISTOGRAM_BOUNDS_MS) + 1
LATENCY_COLUMNS = tuple(f"lat_{i}" for i in range(BUCKETS))
TTFT_COLUMNS = tuple(f"ttft_{i}" for i in range(BUCKETS))
CUBE_DIMENSIONS = ("model", "group", "key", "deployment")
# The counters of a cube row, in the order the rollup and the queries use.
CUBE_SUMS = (
    *USAGE_TOTALS,
    "latency_ms_sum",
    "ttft_count",
    "ttft_ms_sum",
)

usage_hourly = Table(
    "usage_hourly",
    metadata,
    Column("dim", String(20), nullable=False),  # a dimension, or "<dimension>:day" for a whole day's row
    Column("hour", BigInteger, nullable=False),  # epoch seconds of the hour's start (UTC)
    Column("value", String(300), nullable=False),  # "" when the request had none (no model answered, no group)
    *(Column(name, Float if name.endswith("_sum") else BigInteger, nullable=False) for name in CUBE_SUMS),
    *(Column(name, BigInteger, nullable=False) for name in LATENCY_COLUMNS + TTFT_COLUMNS),
    PrimaryKeyConstraint("dim", "hour", "value"),
)

rollup_marks = Table(
    "rollup_marks",
    metadata,
    Column("name", String(40), primary_key=True),
    Column("value", Float, nullable=False),
)

# Server-side console sessions: the cookie carries a random token, the store only its SHA-256.
console_sessions = Table(
    "console_sessions",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("csrf", String(64), nullable=False),
    Column("actor", String(200), nullable=False),
    Column("client", String(100), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("last_seen", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
)

# Admin and DLP entries by kind, newest first, without indexing request entries (one per request, written by
# the group commit): a partial index skips them at no cost. Queries repeat the predicate so that SQLite, which
# only uses a partial index whose WHERE terms appear in the query, picks it too. Plain DDL rather than an
# ``Index`` on ``audit_log``, which would change what migration 0002 creates on a fresh database.
AUDIT_KIND_PREDICATE = "kind <> 'request'"
AUDIT_KIND_INDEX = f"CREATE INDEX IF NOT EXISTS ix_audit_kind_seq ON audit_log (kind, seq) WHERE {AUDIT_KIND_PREDICATE}"
