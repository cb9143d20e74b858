"""The console's changes (POST forms): each is one call into the admin service, then a redirect to the result.

Fields are read as text, turned into the types the admin service takes, and checked there, so a bad value gets
the same message as from the API or the CLI. A new or rotated key is the one response that shows a secret: it is
rendered once, never stored for a redirect, and the page is marked ``no-store``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from ..admin import _when as parse_when
from ..admin import parse_limits
from ..errors import InvalidRequest, NotFound
from ..types import NO_LIMITS
from .web import PREFIX, Renderer, Response, redirect

if TYPE_CHECKING:
    from .pages import Pages
    from .sessions import Session

DONE = {
    "created": "Created.",
    "revoked": "Key revoked: it is refused from now on.",
    "limits": "Limits saved.",
    "expiry": "Expiry saved.",
    "granted": "Grant added.",
    "ungranted": "Grant removed.",
    "dlp": "DLP override saved.",
    "deleted": "Group deleted.",
}
DLP_ACTIONS = ("inherit", "off", "block", "redact", "log")


def _one(data: dict[str, list[str]], name: str) -> str:
    values = data.get(name)
    return values[0].strip() if values else ""


def _optional_int(data: dict[str, list[str]], name: str) -> int | None:
    text = _one(data, name).replace(",", "").replace("_", "")
    if not text:
        return None
    if not text.isdigit():
        raise InvalidRequest(f"'{name}' must be a whole number, or empty for no limit", param=name)
    return int(text)


def limits_body(data: dict[str, list[str]]) -> dict[str, Any]:
    """The limits form as the admin service's partial update: every field present, empty meaning none."""
    budget = _one(data, "budget").replace(",", "")
    return {
        "rpm": _optional_int(data, "rpm"),
        "tpm": _optional_int(data, "tpm"),
        "budget": budget or None,
        "budget_period": _one(data, "budget_period") or "total",
    }


def _models(data: dict[str, list[str]]) -> list[str] | None:
    text = _one(data, "models")
    return [m.strip() for m in text.replace("\n", ",").split(",") if m.strip()] if text else None


class Actions:
    def __init__(self, console: Renderer, pages: Pages) -> None:
        self.c = console
        self.gw = console.gw
        self._pages = pages

    async def post(self, parts: list[str], data: dict[str, list[str]], session: Session) -> Response:
        who = session.who
        admin = self.gw.admin
        match parts:
            case ["keys"]:
                return await self._create_key(data, session, who)
            case ["keys", ref, "revoke"]:
                key = await admin.revoke_key(ref, actor=who)
                return _back("keys", key["name"], "revoked")
            case ["keys", ref, "rotate"]:
                key = await admin.rotate_key(ref, actor=who)
                return self._secret(session, key, rotated=True)
            case ["keys", ref, "limits"]:
                key = await admin.set_key_limits(ref, limits_body(data), actor=who)
                return _back("keys", key["name"], "limits")
            case ["keys", ref, "expiry"]:
                text = _one(data, "expires")
                key = await admin.set_key_expiry(ref, None if text in ("", "never") else _expiry(text), actor=who)
                return _back("keys", key["name"], "expiry")
            case ["groups"]:
                group = await admin.create_group(_one(data, "name"), _models(data) or [], actor=who)
                return _back("groups", group["name"], "created")
            case ["groups", name, "grants"]:
                await admin.grant(name, _one(data, "model"), actor=who)
                return _back("groups", name, "granted")
            case ["groups", name, "grants", "delete"]:
                await admin.revoke_grant(name, _one(data, "model"), actor=who)
                return _back("groups", name, "ungranted")
            case ["groups", name, "limits"]:
                await admin.set_group_limits(name, limits_body(data), actor=who)
                return _back("groups", name, "limits")
            case ["groups", name, "dlp"]:
                await admin.set_group_dlp(name, _dlp_override(data), actor=who)
                return _back("groups", name, "dlp")
            case ["groups", name, "delete"]:
                await admin.delete_group(name, actor=who)
                return redirect(f"{PREFIX}/groups?done=deleted")
            case ["audit", "verify"]:
                result = await admin.verify_audit()
                await admin.audit_action(who, "audit.verify", "audit_log", ok=result["ok"], records=result["records"])
                return await self._pages.audit({}, session, verified=result)
        raise NotFound("No such action")

    async def _create_key(self, data: dict[str, list[str]], session: Session, who: str) -> Response:
        admin = self.gw.admin
        limits = limits_body(data)
        parse_limits(limits, NO_LIMITS)  # refuse bad limits before the key exists
        expires = _one(data, "expires")
        key = await admin.create_key(
            _one(data, "name"), _one(data, "group"), _models(data), _expiry(expires) if expires else None, actor=who
        )
        if any(v is not None for k, v in limits.items() if k != "budget_period"):
            key = {**key, **await admin.set_key_limits(key["name"], limits, actor=who)}
        return self._secret(session, key, rotated=False)

    def _secret(self, session: Session, key: dict[str, Any], *, rotated: bool) -> Response:
        return self.c.render("key_created.html", 201 if not rotated else 200, session=session, key=key,
                             rotated=rotated, active="keys", done=None)  # fmt: skip


def _expiry(text: str) -> Any:
    """A duration (``30d``) as the admin service takes it, or a date/time given as an absolute expiry."""
    if text[:1].isdigit() and text[-1:] in "smhdw" and text[:-1].isdigit():
        return text
    return parse_when(text, "expires")


def _dlp_override(data: dict[str, list[str]]) -> dict[str, Any] | None:
    override: dict[str, Any] = {}
    for direction in ("request", "response"):
        action = _one(data, f"{direction}_action") or "inherit"
        if action not in DLP_ACTIONS:
            raise InvalidRequest(f"'{direction}_action' must be one of {', '.join(DLP_ACTIONS)}", param=direction)
        if action == "inherit":
            continue
        if action == "off":
            override[direction] = None
            continue
        detectors = [d for d in data.get(f"{direction}_detectors", []) if d]
        override[direction] = {"action": action, **({"detectors": detectors} if detectors else {})}
    return override or None


def _back(kind: str, name: str, done: str) -> Response:
    return redirect(f"{PREFIX}/{kind}/{quote(name, safe='')}?done={done}")
