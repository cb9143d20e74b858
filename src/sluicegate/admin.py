"""Administration of groups and API keys: the one implementation behind the admin API and the CLI.

Every change that affects who may call what is announced on the identity bus, so cached credentials on
this process and on every replica are dropped at once (SPEC: revocation within a second with Redis).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import time
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

import orjson
from pydantic import ValidationError

from .auth.keys import generate_key
from .dlp.config import DirectionConfig
from .dlp.detectors import BUILTIN_NAMES
from .errors import Conflict, InternalError, InvalidRequest, NotFound
from .storage.identity import GroupInUse, GroupRow, IdentityStore, KeyRow, NameTaken
from .storage.usage import REPORT_DIMENSIONS, UsageStore
from .types import NO_LIMITS, Limits

AUDIT_KINDS = ("request", "admin", "dlp")
_MAX_RATE = 2**31 - 1  # the columns are 32-bit integers on PostgreSQL
_MAX_BUDGET_MICRO = 2**63 - 1  # budget_micro is a 64-bit integer
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{0,99}")
_PATTERN = re.compile(r"[A-Za-z0-9*?.\-_:/\[\]!@]{1,200}")


class IdentityBus(Protocol):
    """Tells every process that cached identity data changed."""

    async def key_changed(self, key_id: str) -> None: ...
    async def group_changed(self, group_name: str) -> None: ...


class AdminAudit(Protocol):
    async def admin_action(self, actor: str, action: str, target: str, details: dict[str, Any]) -> None: ...


def limits_view(limits: Limits) -> dict[str, Any]:
    budget = limits.budget_micro
    return {
        "rpm": limits.rpm,
        "tpm": limits.tpm,
        "budget": float(Decimal(budget) / 1_000_000) if budget is not None else None,
        "budget_micro": budget,
        "budget_period": limits.budget_period if budget is not None else None,
    }


def group_view(g: GroupRow) -> dict[str, Any]:
    return {
        "name": g.name,
        "id": g.id,
        "models": list(g.models),
        "limits": limits_view(g.limits),
        "dlp": g.dlp,
        "created_at": g.created_at,
    }


def key_view(k: KeyRow, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    status = "revoked" if k.revoked else ("expired" if k.expires_at is not None and k.expires_at <= now else "active")
    return {
        "id": k.id,
        "name": k.name,
        "prefix": k.prefix,
        "group": k.group_name,
        "models": list(k.models) if k.models is not None else None,
        "expires_at": k.expires_at,
        "created_at": k.created_at,
        "last_used_at": k.last_used_at,
        "revoked": k.revoked,
        "revoked_at": k.revoked_at,
        "status": status,
        "limits": limits_view(k.limits),
    }


def parse_models(value: Any, param: str) -> list[str]:
    """Model ids or wildcard patterns, from a JSON list or a comma-separated string."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list):
        raise InvalidRequest(f"'{param}' must be a list of model ids or patterns", param=param)
    out = []
    for item in items:
        if not isinstance(item, str) or not _PATTERN.fullmatch(item.strip()):
            raise InvalidRequest(f"'{param}' holds an invalid model id or pattern: {item!r}", param=param)
        out.append(item.strip())
    return out


def _check_name(name: Any, param: str = "name") -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidRequest(
            f"'{param}' must be 1-100 characters of letters, digits, '.', '_' or '-', starting with a letter or digit",
            param=param,
        )
    return name


def parse_limits(body: dict[str, Any], current: Limits) -> Limits:
    """Apply a partial update: fields present replace (``null`` clears), fields absent stay."""
    known = {"rpm", "tpm", "budget", "budget_micro", "budget_period"}
    unknown = set(body) - known
    if unknown:
        name = sorted(unknown)[0]
        raise InvalidRequest(f"unknown limit field {name!r}", param=name)
    rpm, tpm = current.rpm, current.tpm
    budget, period = current.budget_micro, current.budget_period
    for name in ("rpm", "tpm"):
        if name in body:
            value = body[name]
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= _MAX_RATE
            ):
                raise InvalidRequest(f"'{name}' must be an integer from 1 to {_MAX_RATE}, or null", param=name)
            rpm, tpm = (value, tpm) if name == "rpm" else (rpm, value)
    if "budget" in body or "budget_micro" in body:
        field = "budget_micro" if "budget_micro" in body else "budget"
        budget = None if body[field] is None else _budget_micro(body[field], field)
    if "budget_period" in body:
        period = body["budget_period"] or "total"
        if period not in ("total", "day", "month"):
            raise InvalidRequest("'budget_period' must be total, day or month", param="budget_period")
    if rpm is None and tpm is None and budget is None:
        return NO_LIMITS
    return Limits(rpm=rpm, tpm=tpm, budget_micro=budget, budget_period=period)


def _budget_micro(raw: Any, field: str) -> int:
    """Credits (``budget``) or micro-credits (``budget_micro``) as integer micro-credits, within the column."""
    amount = None
    if isinstance(raw, int | float | str) and not isinstance(raw, bool):
        with contextlib.suppress(InvalidOperation):
            amount = Decimal(str(raw).strip())
    # NaN and Infinity parse as Decimals (and NaN refuses comparisons), so finiteness is checked first.
    if amount is None or not amount.is_finite():
        raise InvalidRequest(f"'{field}' must be a finite number of credits, or null", param=field)
    micro = amount if field == "budget_micro" else amount * 1_000_000
    if not 0 <= micro <= _MAX_BUDGET_MICRO:
        most = _MAX_BUDGET_MICRO if field == "budget_micro" else _MAX_BUDGET_MICRO // 1_000_000
        raise InvalidRequest(f"'{field}' must be from 0 to {most}", param=field)
    if micro != micro.to_integral_value():
        unit = "a whole number of micro-credits" if field == "budget_micro" else "at most 6 decimals"
        raise InvalidRequest(f"'{field}' must have {unit}", param=field)
    return int(micro)


class Admin:
    def __init__(
        self,
        store: IdentityStore,
        bus: IdentityBus,
        audit: AdminAudit | None = None,
        usage: UsageStore | None = None,
    ) -> None:
        self._store = store
        self._bus = bus
        self._audit = audit
        self._usage = usage

    def set_audit(self, audit: AdminAudit) -> None:
        self._audit = audit

    async def _record(self, actor: str, action: str, target: str, **details: Any) -> None:
        if self._audit is not None:
            await self._audit.admin_action(actor, action, target, details)

    async def audit_action(self, actor: str, action: str, target: str, **details: Any) -> None:
        """Record an admin-side event that is not a change made here (console logins) in the same chain."""
        await self._record(actor, action, target, **details)

    # groups

    async def create_group(self, name: Any, models: Any, actor: str = "admin") -> dict[str, Any]:
        name = _check_name(name)
        patterns = parse_models(models if models is not None else [], "models")
        try:
            group = await self._store.create_group(name, patterns)
        except NameTaken as exc:
            raise Conflict(str(exc), param="name") from exc
        await self._record(actor, "group.create", name, models=patterns)
        return group_view(group)

    async def group(self, name: str) -> GroupRow:
        group = await self._store.get_group(name)
        if group is None:
            raise NotFound(f"no group named {name!r}")
        return group

    async def list_groups(self) -> list[dict[str, Any]]:
        return [group_view(g) for g in await self._store.list_groups()]

    async def show_group(self, name: str) -> dict[str, Any]:
        return group_view(await self.group(name))

    async def set_group_models(self, name: str, models: Any, actor: str = "admin") -> dict[str, Any]:
        group = await self.group(name)
        patterns = parse_models(models, "models")
        await self._store.set_group_models(group.id, patterns)
        await self._bus.group_changed(group.name)
        await self._record(actor, "group.set_models", name, models=patterns)
        return group_view(await self.group(name))

    async def grant(self, name: str, pattern: Any, actor: str = "admin") -> dict[str, Any]:
        group = await self.group(name)
        (added,) = parse_models([pattern], "model")
        models = list(group.models) + ([added] if added not in group.models else [])
        return await self.set_group_models(name, models, actor)

    async def revoke_grant(self, name: str, pattern: str, actor: str = "admin") -> dict[str, Any]:
        group = await self.group(name)
        if pattern not in group.models:
            raise NotFound(f"group {name!r} has no grant {pattern!r}")
        return await self.set_group_models(name, [m for m in group.models if m != pattern], actor)

    async def set_group_limits(self, name: str, body: dict[str, Any], actor: str = "admin") -> dict[str, Any]:
        group = await self.group(name)
        limits = parse_limits(body, group.limits)
        await self._store.set_limits("groups", group.id, limits)
        await self._bus.group_changed(group.name)
        await self._record(actor, "group.set_limits", name, **limits_view(limits))
        return group_view(await self.group(name))

    async def set_group_dlp(self, name: str, body: Any, actor: str = "admin") -> dict[str, Any]:
        """Override the default DLP policy per direction: ``{"request": {...}|null, "response": ...}``.

        A direction given as null turns scanning off for the group; an absent one uses the config's default;
        an empty body (or null) removes the override.
        """
        group = await self.group(name)
        override = _dlp_override(body)
        await self._store.set_group_dlp(group.id, override)
        await self._bus.group_changed(group.name)
        await self._record(actor, "group.set_dlp", name, dlp=override)
        return group_view(await self.group(name))

    async def delete_group(self, name: str, actor: str = "admin") -> None:
        group = await self.group(name)
        try:
            removed = await self._store.delete_group(group.id)
        except GroupInUse as exc:
            raise Conflict(
                f"group {name!r} still has keys that are not revoked; revoke them first "
                "(revoked keys are deleted with their group)"
            ) from exc
        await self._bus.group_changed(group.name)
        await self._record(actor, "group.delete", name, revoked_keys_deleted=removed)

    # keys

    async def create_key(
        self,
        name: Any,
        group: Any,
        models: Any = None,
        expires_at: Any = None,
        actor: str = "admin",
    ) -> dict[str, Any]:
        """Create a key; the returned ``key`` is the only time the secret is ever shown."""
        name = _check_name(name)
        grp = await self.group(_check_name(group, "group"))
        narrowing = parse_models(models, "models") if models is not None else None
        expiry = _expiry(expires_at)
        for _ in range(3):
            new = generate_key()
            try:
                key_id = await self._store.create_key(
                    name=name,
                    prefix=new.prefix,
                    key_hash=new.key_hash,
                    group_id=grp.id,
                    models=narrowing,
                    expires_at=expiry,
                )
                break
            except NameTaken as exc:
                if await self._store.find_key(name):
                    raise Conflict(f"a key named {name!r} already exists", param="name") from exc
        else:
            raise Conflict("could not allocate a unique key prefix; try again")
        await self._record(actor, "key.create", name, group=grp.name, prefix=new.prefix)
        row = await self.key(key_id)
        return {**key_view(row), "key": new.secret}

    async def key(self, ref: str) -> KeyRow:
        row = await self._store.find_key(ref)
        if row is None:
            raise NotFound(f"no key with name or prefix {ref!r}")
        return row

    async def list_keys(self, group: str | None = None) -> list[dict[str, Any]]:
        group_id = (await self.group(group)).id if group else None
        now = time.time()
        return [key_view(k, now) for k in await self._store.list_keys(group_id)]

    async def show_key(self, ref: str) -> dict[str, Any]:
        return key_view(await self.key(ref))

    async def revoke_key(self, ref: str, actor: str = "admin") -> dict[str, Any]:
        row = await self.key(ref)
        if not row.revoked:
            await self._store.revoke_key(row.id)
        await self._bus.key_changed(row.id)
        await self._record(actor, "key.revoke", row.name, prefix=row.prefix)
        return key_view(await self.key(row.id))

    async def set_key_limits(self, ref: str, body: dict[str, Any], actor: str = "admin") -> dict[str, Any]:
        row = await self.key(ref)
        limits = parse_limits(body, row.limits)
        await self._store.set_limits("api_keys", row.id, limits)
        await self._bus.key_changed(row.id)
        await self._record(actor, "key.set_limits", row.name, **limits_view(limits))
        return key_view(await self.key(row.id))

    async def set_key_expiry(self, ref: str, expires: Any, actor: str = "admin") -> dict[str, Any]:
        """A new expiry (future epoch time or duration such as ``30d``), or ``None`` for no expiry."""
        row = await self.key(ref)
        expiry = _expiry(expires)
        await self._store.set_key_expiry(row.id, expiry)
        await self._bus.key_changed(row.id)
        await self._record(actor, "key.set_expiry", row.name, expires_at=expiry)
        return key_view(await self.key(row.id))

    # usage and audit

    def _usage_store(self) -> UsageStore:
        if self._usage is None:
            raise InternalError("usage reporting is not available in this process")
        return self._usage

    async def usage_report(self, by: str, since: Any, until: Any = None) -> list[dict[str, Any]]:
        if by not in REPORT_DIMENSIONS:
            raise InvalidRequest("'by' must be key, group or model", param="by")
        start, end = _when(since, "since"), (_when(until, "until") if until is not None else None)
        rows = await self._usage_store().report(by, start, end)
        for row in rows:
            row["cost"] = float(Decimal(row["cost_micro"]) / 1_000_000)
        return rows

    async def audit_entries(self, limit: int, kind: str | None, before: int | None = None) -> list[dict[str, Any]]:
        """Newest first; ``before``: only entries with a lower sequence number (the next page)."""
        if kind is not None and kind not in AUDIT_KINDS:
            raise InvalidRequest(f"'kind' must be one of {', '.join(AUDIT_KINDS)}", param="kind")
        rows = await self._usage_store().audit_entries(limit, kind, before)
        for row in rows:
            # Stored as the canonical JSON the hash covers; callers get the object, not JSON inside a string.
            row["payload"] = orjson.loads(row["payload"])
        return rows

    async def verify_audit(self) -> dict[str, Any]:
        result = await self._usage_store().verify_audit()
        return {"ok": result.ok, "records": result.records, "problem": result.problem, "seq": result.seq}

    async def rotate_key(self, ref: str, actor: str = "admin") -> dict[str, Any]:
        """A new secret for the same identity (name, group, grants, history); the old secret stops working."""
        row = await self.key(ref)
        if row.revoked:
            raise Conflict(f"key {row.name!r} is revoked; create a new one")
        new = generate_key()
        await self._store.rotate_key(row.id, new.prefix, new.key_hash)
        await self._bus.key_changed(row.id)
        await self._record(actor, "key.rotate", row.name, old_prefix=row.prefix, prefix=new.prefix)
        return {**key_view(await self.key(row.id)), "key": new.secret}


def _dlp_override(body: Any) -> dict[str, Any] | None:
    if body is None or body == {}:
        return None
    if not isinstance(body, dict) or set(body) - {"request", "response"}:
        raise InvalidRequest("the DLP override has 'request' and/or 'response' keys only", param="dlp")
    out: dict[str, Any] = {}
    for direction, spec in body.items():
        if spec is None:
            out[direction] = None
            continue
        try:
            parsed = DirectionConfig.model_validate(spec)
        except ValidationError as exc:
            message = exc.errors()[0]["msg"]
            raise InvalidRequest(f"invalid DLP policy for {direction}: {message}", param=direction) from exc
        unknown = sorted(set(parsed.detectors or ()) - set(BUILTIN_NAMES))
        if unknown:
            raise InvalidRequest(f"unknown DLP detectors: {', '.join(unknown)}", param=direction)
        out[direction] = parsed.model_dump(exclude_none=True)
    return out


def _when(value: Any, param: str) -> float:
    """An ISO date/time (UTC when no zone), epoch seconds (a number, or a string of digits), or a duration
    back from now such as ``7d``; always between 1970 and 9999, the years a report can name."""
    when: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        when = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if m := _DURATION.fullmatch(text):
            when = time.time() - int(m.group(1)) * _UNIT[m.group(2)]
        elif _EPOCH.fullmatch(text):
            when = float(text)
        else:
            try:
                parsed = dt.datetime.fromisoformat(text)
            except ValueError:
                pass
            else:
                when = (parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)).timestamp()
    if when is None:
        raise InvalidRequest(
            f"'{param}' must be a date (2026-11-01), a time, epoch seconds or a duration (7d)", param=param
        )
    if not 0 <= when < _YEAR_10000:
        raise InvalidRequest(f"'{param}' is out of range: it must fall between 1970 and 9999", param=param)
    return when


_DURATION = re.compile(r"(\d+)([smhdw])", re.ASCII)
# Plain numbers are epoch seconds (a basic-format date such as 20261101 must be written 2026-11-01).
_EPOCH = re.compile(r"\d{1,12}(\.\d+)?", re.ASCII)
_YEAR_10000 = 253402300800.0
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _expiry(value: Any) -> float | None:
    """``None``, epoch seconds, or a duration from now such as ``30d`` or ``12h``."""
    if value is None:
        return None
    now = time.time()
    if isinstance(value, int | float) and not isinstance(value, bool) and now < value < _YEAR_10000:
        return float(value)
    if isinstance(value, str) and _EPOCH.fullmatch(value.strip()):
        return _expiry(float(value))
    if isinstance(value, str) and (m := _DURATION.fullmatch(value.strip())) and int(m.group(1)) > 0:
        when = now + int(m.group(1)) * _UNIT[m.group(2)]
        if when < _YEAR_10000:
            return when
    raise InvalidRequest("'expires' must be a future epoch time or a duration such as '30d'", param="expires")
