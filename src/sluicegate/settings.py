"""Process settings from the environment (SPEC §9), read once at start into a frozen value.

This is the only module that reads ``os.environ`` for sluicegate's own settings.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Settings:
    config_path: str | None
    database_url: str
    redis_url: str | None
    master_key: str | None
    data_dir: str
    otel_endpoint: str | None = None  # SLUICEGATE_OTEL_ENDPOINT: traces over OTLP/HTTP (overrides the config)
    # Set by `serve --workers N` (or by the operator): where prometheus_client keeps every worker's values.
    prometheus_multiproc_dir: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, config_path: str | None = None) -> Settings:
        env = os.environ if environ is None else environ
        data_dir = env.get("SLUICEGATE_DATA_DIR") or os.path.join(os.getcwd(), "data")
        return cls(
            config_path=config_path or env.get("SLUICEGATE_CONFIG") or None,
            database_url=env.get("SLUICEGATE_DATABASE_URL") or f"sqlite:///{os.path.join(data_dir, 'sluicegate.db')}",
            redis_url=env.get("SLUICEGATE_REDIS_URL") or None,
            master_key=env.get("SLUICEGATE_MASTER_KEY") or None,
            data_dir=data_dir,
            otel_endpoint=env.get("SLUICEGATE_OTEL_ENDPOINT") or None,
            prometheus_multiproc_dir=env.get("PROMETHEUS_MULTIPROC_DIR") or None,
        )
