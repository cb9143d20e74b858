"""The identity store and the admin service on both engines: SQLite and the machine's PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from sluicegate.admin import Admin
from sluicegate.auth.authenticator import IdentityEvents, KeyAuthenticator, MasterKeyAuthenticator
from sluicegate.auth.keys import hash_key
from sluicegate.bus import LocalBus
from sluicegate.errors import AuthenticationFailed, Conflict, InvalidRequest, NotFound, StoreUnavailable
from sluicegate.storage.db import create_engine
from sluicegate.storage.identity import IdentityStore
from sluicegate.storage.migrations import MIGRATIONS, migrate, pending
from tests.support.databases import database_url


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[IdentityStore]:
    with database_url(request.param, tmp_path) as url:
        engine = create_engine(url)
        assert await pending(engine) == [v for v, _, _ in MIGRATIONS]
        assert await migrate(engine) == [v for v, _, _ in MIGRATIONS]
        assert await migrate(engine) == []  # idempotent
        assert await pending(engine) == []
        try:
            yield IdentityStore(engine)
        finally:
            await engine.dispose()


def make(store: IdentityStore, ttl: float = 60.0) -> tuple[Admin, KeyAuthenticator]:
    auth = KeyAuthenticator(store, MasterKeyAuthenticator("sk-master"), ttl=ttl)
    return Admin(store, IdentityEvents(LocalBus(), auth)), auth


async def test_keys_are_stored_hashed_and_shown_once(store: IdentityStore) -> None:
    admin, auth = make(store)
    await admin.create_group("eng", ["gpt-*", "claude-*"])
    created = await admin.create_key("ci-bot", "eng")
    secret = created["key"]
    assert secret.startswith("sk-sg-") and len(secret) > 40
    assert created["prefix"] == secret[:14]
    row = await store.find_key("ci-bot")
    assert row is not None and row.key_hash == hash_key(secret) and secret not in repr(row)
    listed = await admin.list_keys()
    assert all("key" not in k for k in listed) and listed[0]["status"] == "active"
    assert "key" not in await admin.show_key("ci-bot")
    principal = await auth.authenticate(secret)
    assert principal.group == "eng" and principal.models == ("gpt-*", "claude-*") and not principal.is_admin


async def test_revoke_rotate_expire(store: IdentityStore) -> None:
    admin, auth = make(store)
    await admin.create_group("eng", ["*"])
    old = (await admin.create_key("bot", "eng"))["key"]
    await auth.authenticate(old)
    rotated = await admin.rotate_key("bot")
    with pytest.raises(AuthenticationFailed):
        await auth.authenticate(old)  # evicted at once on this process
    assert (await auth.authenticate(rotated["key"])).name == "bot"
    assert rotated["id"] == (await admin.show_key(rotated["prefix"]))["id"]  # same identity
    await admin.revoke_key(rotated["prefix"])
    with pytest.raises(AuthenticationFailed):
        await auth.authenticate(rotated["key"])
    with pytest.raises(Conflict):
        await admin.rotate_key("bot")
    short = await admin.create_key("short", "eng", expires_at="1s")
    assert (await auth.authenticate(short["key"])).name == "short"
    row = await store.find_key("short")
    assert row is not None and row.expires_at is not None
    # Expiry is a wall-clock instant the store compares with time.time(): no event to wait on but the clock.
    time.sleep(max(0.0, row.expires_at - time.time()) + 0.05)
    with pytest.raises(AuthenticationFailed):
        await auth.authenticate(short["key"])  # expiry is checked even on a cache hit


async def test_per_key_models_and_group_grants(store: IdentityStore) -> None:
    admin, auth = make(store)
    await admin.create_group("eng", ["gpt-*"])
    key = (await admin.create_key("narrow", "eng", models=["gpt-4o"]))["key"]
    p = await auth.authenticate(key)
    assert p.key_models == ("gpt-4o",)
    group = await admin.grant("eng", "claude-*")
    assert group["models"] == ["gpt-*", "claude-*"]
    assert (await auth.authenticate(key)).models == ("gpt-*", "claude-*")  # group change evicted the cache
    assert (await admin.revoke_grant("eng", "gpt-*"))["models"] == ["claude-*"]
    with pytest.raises(NotFound):
        await admin.revoke_grant("eng", "nope")


async def test_admin_validation_and_conflicts(store: IdentityStore) -> None:
    admin, _ = make(store)
    await admin.create_group("eng", "gpt-*,demo")
    with pytest.raises(Conflict):
        await admin.create_group("eng", [])
    with pytest.raises(InvalidRequest):
        await admin.create_group("bad name!", [])
    with pytest.raises(InvalidRequest):
        await admin.create_group("ok", ["has space"])
    with pytest.raises(NotFound):
        await admin.create_key("k", "no-such-group")
    await admin.create_key("k", "eng")
    with pytest.raises(Conflict):
        await admin.create_key("k", "eng")
    with pytest.raises(Conflict):
        await admin.delete_group("eng")  # still has keys
    with pytest.raises(InvalidRequest):
        await admin.create_key("k2", "eng", expires_at="yesterday")
    await admin.create_group("empty", [])
    await admin.delete_group("empty")
    assert [g["name"] for g in await admin.list_groups()] == ["eng"]


async def test_a_group_whose_keys_are_all_revoked_can_be_deleted(store: IdentityStore) -> None:
    admin, _ = make(store)
    await admin.create_group("old", ["demo"])
    await admin.create_key("old-a", "old")
    await admin.create_key("old-b", "old")
    await admin.revoke_key("old-a")
    with pytest.raises(Conflict, match="not revoked"):
        await admin.delete_group("old")  # old-b still works
    await admin.revoke_key("old-b")
    await admin.delete_group("old")  # the revoked keys go with it
    assert [k["name"] for k in await admin.list_keys()] == []
    await admin.create_group("old", [])  # the name is free again
    await admin.create_key("old-a", "old")


async def test_unknown_and_malformed_keys_are_refused_alike(store: IdentityStore) -> None:
    admin, auth = make(store)
    await admin.create_group("eng", ["*"])
    real = (await admin.create_key("k", "eng"))["key"]
    messages = set()
    for bad in ["nope", "sk-sg-", real[:-1] + ("A" if real[-1] != "A" else "B"), real[:14] + "x" * 30]:
        with pytest.raises(AuthenticationFailed) as info:
            await auth.authenticate(bad)
        messages.add(info.value.message)
    assert len(messages) == 1
    assert (await auth.authenticate("sk-master")).is_admin


async def test_store_outage_fails_closed_but_cached_keys_keep_working(store: IdentityStore) -> None:
    admin, auth = make(store)
    await admin.create_group("eng", ["*"])
    cached = (await admin.create_key("cached", "eng"))["key"]
    unknown = (await admin.create_key("unknown", "eng"))["key"]
    await auth.authenticate(cached)
    engine = store._engine
    async with engine.begin() as conn:
        await conn.execute(text("ALTER TABLE api_keys RENAME TO api_keys_gone"))
    try:
        assert (await auth.authenticate(cached)).name == "cached"
        with pytest.raises(StoreUnavailable):
            await auth.authenticate(unknown)
    finally:
        async with engine.begin() as conn:
            await conn.execute(text("ALTER TABLE api_keys_gone RENAME TO api_keys"))
    assert (await auth.authenticate(unknown)).name == "unknown"


async def test_last_used_is_recorded_in_batches(store: IdentityStore) -> None:
    admin, auth = make(store)
    await admin.create_group("eng", ["*"])
    key = (await admin.create_key("k", "eng"))["key"]
    await auth.authenticate(key)
    assert (await admin.show_key("k"))["last_used_at"] is None
    await store.touch_keys(auth.take_last_used())
    assert (await admin.show_key("k"))["last_used_at"] is not None
    assert auth.take_last_used() == {}


async def test_a_burst_on_a_cold_key_costs_one_store_query(store: IdentityStore) -> None:
    admin, auth = make(store)
    await admin.create_group("eng", ["*"])
    secret = (await admin.create_key("k", "eng"))["key"]
    calls = 0
    lookup = store.key_by_prefix

    async def counted(prefix: str) -> Any:
        nonlocal calls
        calls += 1
        return await lookup(prefix)

    store.key_by_prefix = counted  # type: ignore[method-assign]
    principals = await asyncio.gather(*(auth.authenticate(secret) for _ in range(200)))
    assert {p.name for p in principals} == {"k"} and calls == 1


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_concurrent_first_starts_migrate_once(kind: str, tmp_path: Path) -> None:
    with database_url(kind, tmp_path) as url:
        engines = [create_engine(url) for _ in range(4)]
        try:
            results = await asyncio.gather(*(migrate(e) for e in engines))
            applied = [v for r in results for v in r]
            assert sorted(applied) == sorted(v for v, _, _ in MIGRATIONS)  # each step exactly once
        finally:
            for e in engines:
                await e.dispose()


async def test_limits_out_of_range_are_a_400_not_a_database_error(store: IdentityStore) -> None:
    admin, _ = make(store)
    await admin.create_group("eng", ["*"])
    await admin.create_key("k", "eng")
    with pytest.raises(InvalidRequest) as info:
        await admin.set_key_limits("k", {"tpm": 2**31})
    assert info.value.param == "tpm"
    assert (await admin.set_key_limits("k", {"tpm": 2**31 - 1}))["limits"]["tpm"] == 2**31 - 1
