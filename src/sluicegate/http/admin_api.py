"""The admin API under ``/admin/v1/``: thin JSON front door to ``admin.Admin`` (the CLI is the other).

    GET    /admin/v1/groups                      list groups
    POST   /admin/v1/groups                      {"name", "models": [...]}
    GET    /admin/v1/groups/{name}
    PATCH  /admin/v1/groups/{name}               {"models": [...]}  (replaces the grants)
    DELETE /admin/v1/groups/{name}               refused while the group has keys
    POST   /admin/v1/groups/{name}/grants        {"model": "claude-*"}
    DELETE /admin/v1/groups/{name}/grants/{pat}
    GET    /admin/v1/keys[?group=NAME]           list keys (never secrets)
    POST   /admin/v1/keys                        {"name", "group", "models"?, "expires"?} → the key, shown once
    GET    /admin/v1/keys/{name-or-prefix}
    POST   /admin/v1/keys/{name-or-prefix}/revoke
    POST   /admin/v1/keys/{name-or-prefix}/rotate → the new key, shown once
    PUT    /admin/v1/groups/{name}/limits        {"rpm", "tpm", "budget" (credits), "budget_period"}; null clears
    PUT    /admin/v1/groups/{name}/dlp           {"request": {"action", "detectors"}|null, "response": ...}
    PUT    /admin/v1/keys/{name-or-prefix}/limits
    PUT    /admin/v1/keys/{name-or-prefix}/expiry {"expires": "30d" | epoch seconds | null}
    GET    /admin/v1/usage?by=key|group|model&since=2026-11-01&until=...
    GET    /admin/v1/audit?limit=100&kind=admin[&before=SEQ]   newest first
    GET    /admin/v1/audit/verify                 walks the hash chain

Only the master key is accepted: no credential, or one that is no key at all, gets 401 ``invalid_api_key``; a
valid API key gets 403 ``admin_key_required`` (it authenticates, but only the master key administers). Errors
use the OpenAI envelope like every other endpoint; bad input is a 400 whose ``param`` names the field.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote

import orjson

from ..asgi import Request, send_error, send_json
from ..auth.credentials import extract_credential
from ..errors import AdminKeyRequired, AuthenticationFailed, GatewayError, InvalidRequest, MethodNotAllowed, NotFound

if TYPE_CHECKING:
    from .deps import Services

PREFIX = "/admin/v1/"
ADMIN_KEY_MESSAGE = (
    "The admin API needs the master key (SLUICEGATE_MASTER_KEY) as 'Authorization: Bearer <key>'; "
    "none was given, or it is not a valid key."
)
_MAX_ADMIN_BODY = 1024 * 1024


async def dispatch(gw: Services, request: Request) -> None:
    try:
        await _require_master(gw, request)
        parts = [unquote(p) for p in request.path[len(PREFIX) :].split("/") if p]
        status, result = await _route(gw, request, parts)
    except GatewayError as exc:
        await send_error(request.send, exc)
        return
    await send_json(request.send, status, result)


async def _require_master(gw: Services, request: Request) -> None:
    try:
        credential = extract_credential(request.header(b"authorization"), request.header(b"x-api-key"))
        if gw.master.is_master(credential):
            return
        # Only to tell a caller with a working API key why it is refused (it could learn as much from /v1/models).
        await gw.authenticator.authenticate(credential)
    except AuthenticationFailed:
        raise AuthenticationFailed(ADMIN_KEY_MESSAGE) from None
    raise AdminKeyRequired(
        "This API key may call models, but not the admin API, which needs the master key (SLUICEGATE_MASTER_KEY)."
    )


def _before(q: dict[str, str]) -> int | None:
    raw = q.get("before")
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit()):
        raise InvalidRequest("'before' must be an audit sequence number (a whole number)", param="before")
    return int(raw)


def _limit(q: dict[str, str]) -> int:
    raw = q.get("limit")
    if raw is None:
        return 100
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
        raise InvalidRequest("'limit' must be a whole number from 1 (at most 1000 are returned)", param="limit")
    return min(int(raw), 1000)


async def _json(request: Request) -> dict[str, Any]:
    raw = await request.body(_MAX_ADMIN_BODY)
    try:
        body = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest("the request body is not valid JSON") from exc
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return body


def _query(request: Request) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(request.scope.get("query_string", b"").decode()).items()}


def _listing(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"object": "list", "data": items}


async def _route(gw: Services, request: Request, parts: list[str]) -> tuple[int, Any]:
    admin = gw.admin
    method = request.method
    match parts:
        case ["groups"]:
            if method == "GET":
                return 200, _listing(await admin.list_groups())
            if method == "POST":
                body = await _json(request)
                return 201, await admin.create_group(body.get("name"), body.get("models"))
        case ["groups", name]:
            if method == "GET":
                return 200, await admin.show_group(name)
            if method == "PATCH":
                body = await _json(request)
                return 200, await admin.set_group_models(name, body.get("models"))
            if method == "DELETE":
                await admin.delete_group(name)
                return 200, {"deleted": True, "name": name}
        case ["groups", name, "limits"] if method == "PUT":
            return 200, await admin.set_group_limits(name, await _json(request))
        case ["groups", name, "dlp"] if method == "PUT":
            raw = await request.body(_MAX_ADMIN_BODY)
            try:
                override = orjson.loads(raw) if raw.strip() else None
            except orjson.JSONDecodeError as exc:
                raise InvalidRequest("the request body is not valid JSON") from exc
            return 200, await admin.set_group_dlp(name, override)
        case ["keys", ref, "limits"] if method == "PUT":
            return 200, await admin.set_key_limits(ref, await _json(request))
        case ["keys", ref, "expiry"] if method == "PUT":
            return 200, await admin.set_key_expiry(ref, (await _json(request)).get("expires"))
        case ["usage"] if method == "GET":
            q = _query(request)
            rows = await admin.usage_report(q.get("by", "model"), q.get("since", "30d"), q.get("until"))
            return 200, _listing(rows)
        case ["audit"] if method == "GET":
            q = _query(request)
            before = _before(q)
            return 200, _listing(await admin.audit_entries(_limit(q), q.get("kind"), before))
        case ["audit", "verify"] if method == "GET":
            return 200, await admin.verify_audit()
        case ["groups", name, "grants"] if method == "POST":
            body = await _json(request)
            return 200, await admin.grant(name, body.get("model"))
        case ["groups", name, "grants", pattern] if method == "DELETE":
            return 200, await admin.revoke_grant(name, pattern)
        case ["keys"]:
            if method == "GET":
                return 200, _listing(await admin.list_keys(_query(request).get("group")))
            if method == "POST":
                body = await _json(request)
                created = await admin.create_key(
                    body.get("name"), body.get("group"), body.get("models"), body.get("expires")
                )
                return 201, created
        case ["keys", ref] if method == "GET":
            return 200, await admin.show_key(ref)
        case ["keys", ref, "revoke"] if method == "POST":
            return 200, await admin.revoke_key(ref)
        case ["keys", ref, "rotate"] if method == "POST":
            return 200, await admin.rotate_key(ref)
        case _:
            raise NotFound(f"Unknown admin path {request.path}")
    raise MethodNotAllowed(f"Method {method} is not allowed on {request.path}")
