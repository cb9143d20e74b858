"""Process settings from the environment (SPEC §9), read once at start into a frozen value.

This is the only module that reads ``os.environ`` for sluicegate's own settings.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

# Every variable sluicegate reads, with what it is for (``sluicegate --help`` prints this table).
ENVIRONMENT = (
    ("SLUICEGATE_CONFIG", "the config file (default: the built-in demo model)"),
    ("SLUICEGATE_MASTER_KEY", "the admin key: may call every model and the admin API"),
    ("SLUICEGATE_DATA_DIR", "where the SQLite store lives (default: a per-user data directory)"),
    ("SLUICEGATE_DATABASE_URL", "sqlite:///PATH or postgresql://... (default: sqlite:///<data dir>/sluicegate.db)"),
    ("SLUICEGATE_REDIS_URL", "Redis for limits and key revocation shared across workers and replicas"),
    ("SLUICEGATE_OTEL_ENDPOINT", "OTLP/HTTP endpoint for traces (overrides observability.otlp_endpoint)"),
)


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
        data_dir = os.path.abspath(env.get("SLUICEGATE_DATA_DIR") or default_data_dir(env))
        return cls(
            config_path=config_path or env.get("SLUICEGATE_CONFIG") or None,
            database_url=env.get("SLUICEGATE_DATABASE_URL") or f"sqlite:///{os.path.join(data_dir, 'sluicegate.db')}",
            redis_url=env.get("SLUICEGATE_REDIS_URL") or None,
            master_key=env.get("SLUICEGATE_MASTER_KEY") or None,
            data_dir=data_dir,
            otel_endpoint=env.get("SLUICEGATE_OTEL_ENDPOINT") or None,
            prometheus_multiproc_dir=env.get("PROMETHEUS_MULTIPROC_DIR") or None,
        )


def default_data_dir(env: Mapping[str, str]) -> str:
    """The per-user data directory, so ``serve`` and the admin commands find the same store from any folder.

    ``$XDG_DATA_HOME/sluicegate`` (else ``~/.local/share/sluicegate``) on Linux and other Unixes,
    ``~/Library/Application Support/sluicegate`` on macOS, ``%LOCALAPPDATA%\\sluicegate`` on Windows.
    """
    home = env.get("HOME") or os.path.expanduser("~")
    if sys.platform == "win32":
        base = env.get("LOCALAPPDATA") or os.path.join(home, "AppData", "Local")
    elif sys.platform == "darwin":
        base = os.path.join(home, "Library", "Application Support")
    else:
        xdg = env.get("XDG_DATA_HOME", "")
        # The XDG spec says a relative value is invalid and must be ignored.
        base = xdg if os.path.isabs(xdg) else os.path.join(home, ".local", "share")
    return os.path.join(base, "sluicegate")


def display_database_url(url: str) -> str:
    """The database URL with any password masked, fit for logs and the command line's ``using ...`` line."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return url.split("://", 1)[0] + "://..."
    if not password:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
