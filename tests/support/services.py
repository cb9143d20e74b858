"""The outside services some tests need: PostgreSQL, Redis and nginx. Present, or a clear skip; in CI, a failure.

Without them a newcomer still runs everything else: each test that needs a missing service is skipped, with
which service, why it could not be used and how to provide it (``pytest -ra`` lists the reasons at the end).
With ``CI=true`` (set by .ci/run, which starts the services) the same tests fail instead, so a broken
pipeline can never pass by skipping.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
from concurrent.futures import ThreadPoolExecutor

import asyncpg
import pytest
import redis

PG_DSN = os.environ.get("SLUICEGATE_TEST_PG", "postgresql://root@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("SLUICEGATE_TEST_REDIS", "redis://127.0.0.1:6379/0")

HOW = {
    "postgresql": "start PostgreSQL on 127.0.0.1:5432 with a database `test` open to this user "
    "(or point SLUICEGATE_TEST_PG at one)",
    "redis": "start Redis on 127.0.0.1:6379 (or point SLUICEGATE_TEST_REDIS at one)",
    "nginx": "install nginx, e.g. `apt-get install -y nginx-light` (or point SLUICEGATE_TEST_NGINX at the binary)",
}


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def require(service: str) -> None:
    """Skip the calling test (outside CI) or fail it (in CI) when ``service`` cannot be used."""
    problem = _problem(service)
    if problem is None:
        return
    message = f"needs {service}, which is not available here ({problem}): {HOW[service]}"
    if in_ci():
        pytest.fail(message + ". CI=true, so this is a failure, not a skip.", pytrace=False)
    pytest.skip(message)


def redis_url() -> str:
    require("redis")
    return REDIS_URL


def nginx_path() -> str:
    require("nginx")
    path = _nginx()
    assert path is not None
    return path


@functools.cache
def _problem(service: str) -> str | None:
    """Why ``service`` cannot be used, or None; probed once per test run."""
    try:
        if service == "postgresql":
            with ThreadPoolExecutor(1) as pool:
                pool.submit(asyncio.run, _pg_ping()).result()
        elif service == "redis":
            client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3, socket_timeout=3)
            try:
                client.ping()
            finally:
                client.close()
        elif service == "nginx":
            if _nginx() is None:
                return "no nginx binary on PATH or in /usr/sbin"
        else:
            raise ValueError(f"unknown service {service!r}")
    except (OSError, asyncpg.PostgresError, redis.RedisError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}".splitlines()[0]
    return None


async def _pg_ping() -> None:
    conn = await asyncpg.connect(PG_DSN, timeout=3)
    try:
        await conn.execute("SELECT 1")
    finally:
        await conn.close()


def _nginx() -> str | None:
    given = os.environ.get("SLUICEGATE_TEST_NGINX")
    if given:
        return given if os.access(given, os.X_OK) else None
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.path.exists(p)), None)
