"""Groups and API keys in the store. Rows in, rows out; no policy here (that is ``admin.py``)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from ..types import NO_LIMITS, Limits
from .schema import api_keys, groups


class NameTaken(Exception):
    """A unique name or prefix is already taken."""


class GroupInUse(Exception):
    """A group still has keys that are not revoked."""


@dataclass(frozen=True, slots=True)
class GroupRow:
    id: str
    name: str
    models: tuple[str, ...]
    created_at: float
    updated_at: float
    limits: Limits = NO_LIMITS
    dlp: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class KeyRow:
    id: str
    name: str
    prefix: str
    key_hash: str
    group_id: str
    group_name: str
    group_models: tuple[str, ...]
    models: tuple[str, ...] | None
    expires_at: float | None
    created_at: float
    last_used_at: float | None
    revoked: bool
    revoked_at: float | None
    limits: Limits = NO_LIMITS
    group_limits: Limits = NO_LIMITS
    group_dlp: dict[str, Any] | None = None

    def usable(self, now: float) -> bool:
        return not self.revoked and (self.expires_at is None or self.expires_at > now)


def _limits(rpm: Any, tpm: Any, budget: Any, period: Any) -> Limits:
    if rpm is None and tpm is None and budget is None:
        return NO_LIMITS
    return Limits(rpm=rpm, tpm=tpm, budget_micro=budget, budget_period=period or "total")


def _group(row: Any) -> GroupRow:
    limits = _limits(row.rpm, row.tpm, row.budget_micro, row.budget_period)
    return GroupRow(row.id, row.name, tuple(row.models or ()), row.created_at, row.updated_at, limits, row.dlp)


_KEY_COLUMNS = (
    *api_keys.c,
    groups.c.name.label("group_name"),
    groups.c.models.label("group_models"),
    groups.c.rpm.label("group_rpm"),
    groups.c.tpm.label("group_tpm"),
    groups.c.budget_micro.label("group_budget_micro"),
    groups.c.budget_period.label("group_budget_period"),
    groups.c.dlp.label("group_dlp"),
)


def _key(row: Any) -> KeyRow:
    return KeyRow(
        id=row.id,
        name=row.name,
        prefix=row.prefix,
        key_hash=row.key_hash,
        group_id=row.group_id,
        group_name=row.group_name,
        group_models=tuple(row.group_models or ()),
        models=tuple(row.models) if row.models is not None else None,
        expires_at=row.expires_at,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        revoked=bool(row.revoked),
        revoked_at=row.revoked_at,
        limits=_limits(row.rpm, row.tpm, row.budget_micro, row.budget_period),
        group_limits=_limits(row.group_rpm, row.group_tpm, row.group_budget_micro, row.group_budget_period),
        group_dlp=row.group_dlp,
    )


class IdentityStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    # groups

    async def create_group(self, name: str, models: list[str]) -> GroupRow:
        now = time.time()
        group_id = "grp_" + uuid.uuid4().hex[:20]
        try:
            async with self._engine.begin() as conn:
                await conn.execute(
                    groups.insert().values(id=group_id, name=name, models=models, created_at=now, updated_at=now)
                )
        except IntegrityError as exc:
            raise NameTaken(f"a group named {name!r} already exists") from exc
        return GroupRow(group_id, name, tuple(models), now, now)

    async def get_group(self, name: str) -> GroupRow | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(groups).where(groups.c.name == name))).first()
        return _group(row) if row else None

    async def list_groups(self) -> list[GroupRow]:
        async with self._engine.connect() as conn:
            rows = (await conn.execute(select(groups).order_by(groups.c.name))).all()
        return [_group(r) for r in rows]

    async def set_group_models(self, group_id: str, models: list[str]) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                update(groups).where(groups.c.id == group_id).values(models=models, updated_at=time.time())
            )

    async def set_limits(self, table: str, row_id: str, limits: Limits) -> None:
        target = groups if table == "groups" else api_keys
        values = {
            "rpm": limits.rpm,
            "tpm": limits.tpm,
            "budget_micro": limits.budget_micro,
            "budget_period": limits.budget_period if limits.budget_micro is not None else None,
        }
        async with self._engine.begin() as conn:
            await conn.execute(update(target).where(target.c.id == row_id).values(**values))

    async def set_group_dlp(self, group_id: str, dlp: dict[str, Any] | None) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(update(groups).where(groups.c.id == group_id).values(dlp=dlp, updated_at=time.time()))

    async def delete_group(self, group_id: str) -> int:
        """Delete a group and its revoked keys (returns how many); ``Conflict`` while any key is not revoked."""
        in_group = api_keys.c.group_id == group_id
        try:
            async with self._engine.begin() as conn:
                live = select(func.count()).select_from(api_keys).where(in_group, api_keys.c.revoked.is_(False))
                if (await conn.execute(live)).scalar_one():
                    raise GroupInUse("the group still has keys that are not revoked")
                removed = await conn.execute(api_keys.delete().where(in_group, api_keys.c.revoked.is_(True)))
                await conn.execute(groups.delete().where(groups.c.id == group_id))
        except IntegrityError as exc:  # a key was created in the group meanwhile
            raise GroupInUse("the group still has keys that are not revoked") from exc
        return int(removed.rowcount)

    # keys

    async def create_key(
        self,
        *,
        name: str,
        prefix: str,
        key_hash: str,
        group_id: str,
        models: list[str] | None,
        expires_at: float | None,
    ) -> str:
        key_id = "key_" + uuid.uuid4().hex[:20]
        try:
            async with self._engine.begin() as conn:
                await conn.execute(
                    api_keys.insert().values(
                        id=key_id,
                        name=name,
                        prefix=prefix,
                        key_hash=key_hash,
                        group_id=group_id,
                        models=models,
                        expires_at=expires_at,
                        created_at=time.time(),
                        revoked=False,
                    )
                )
        except IntegrityError as exc:
            raise NameTaken(f"a key named {name!r} (or with that prefix) already exists") from exc
        return key_id

    def _keys(self) -> Any:
        return select(*_KEY_COLUMNS).join(groups, groups.c.id == api_keys.c.group_id)

    async def key_by_prefix(self, prefix: str) -> KeyRow | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(self._keys().where(api_keys.c.prefix == prefix))).first()
        return _key(row) if row else None

    async def find_key(self, name_or_prefix: str) -> KeyRow | None:
        cond = or_(
            api_keys.c.name == name_or_prefix, api_keys.c.prefix == name_or_prefix, api_keys.c.id == name_or_prefix
        )
        async with self._engine.connect() as conn:
            row = (await conn.execute(self._keys().where(cond))).first()
        return _key(row) if row else None

    async def list_keys(self, group_id: str | None = None) -> list[KeyRow]:
        stmt = self._keys().order_by(api_keys.c.created_at)
        if group_id is not None:
            stmt = stmt.where(api_keys.c.group_id == group_id)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [_key(r) for r in rows]

    async def revoke_key(self, key_id: str) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                update(api_keys).where(api_keys.c.id == key_id).values(revoked=True, revoked_at=time.time())
            )

    async def set_key_expiry(self, key_id: str, expires_at: float | None) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(update(api_keys).where(api_keys.c.id == key_id).values(expires_at=expires_at))

    async def rotate_key(self, key_id: str, prefix: str, key_hash: str) -> None:
        try:
            async with self._engine.begin() as conn:
                await conn.execute(
                    update(api_keys).where(api_keys.c.id == key_id).values(prefix=prefix, key_hash=key_hash)
                )
        except IntegrityError as exc:
            raise NameTaken("prefix collision; try again") from exc

    async def touch_keys(self, last_used: dict[str, float]) -> None:
        """Record last-use times in one transaction (batched off the request path)."""
        if not last_used:
            return
        async with self._engine.begin() as conn:
            for key_id, at in last_used.items():
                await conn.execute(update(api_keys).where(api_keys.c.id == key_id).values(last_used_at=at))

    async def ping(self) -> None:
        async with self._engine.connect() as conn:
            await conn.execute(select(1))
