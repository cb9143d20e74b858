"""The database schema as SQLAlchemy Core tables: one definition for SQLite and PostgreSQL.

Tables here describe the newest schema; ``migrations.py`` holds the ordered steps that build it, so an
existing database is upgraded in place. Times are UTC epoch seconds (floats), portable across both engines.
"""

from __future__ import annotations

from sqlalchemy import JSON, Boolean, Column, Float, ForeignKey, Index, MetaData, String, Table

metadata = MetaData()

groups = Table(
    "groups",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(200), nullable=False, unique=True),
    Column("models", JSON, nullable=False),  # list of model ids or fnmatch patterns
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
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
    Index("ix_api_keys_group", "group_id"),
)

schema_migrations = Table(
    "schema_migrations",
    metadata,
    Column("version", String(20), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("applied_at", Float, nullable=False),
)
