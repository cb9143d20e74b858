"""The console's front door: static files, login and logout, the session and CSRF checks, then the pages.

Every page is read through the admin and analytics services (``admin.py``, ``analytics.py``); every change is a
POST of an HTML form that carries the session's CSRF token, and goes through the same service calls as the
admin API and the CLI, recorded in the audit chain with the console as the actor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote, unquote

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from ..asgi import Request
from ..errors import GatewayError, MethodNotAllowed, NotFound
from ..policies.ratelimit import Limiter, LocalLimiter, RedisLimiter
from .actions import DONE, Actions
from .format import FILTERS
from .pages import Pages
from .sessions import LoginGuard, Session, SessionStore
from .web import (
    COOKIE,
    PAGE_HEADERS,
    PREFIX,
    Response,
    StaticFiles,
    clear_cookie,
    client_address,
    cookies,
    form,
    is_tls,
    query,
    redirect,
    same_origin,
    session_cookie,
)

if TYPE_CHECKING:
    from .deps import ConsoleDeps

HOME = PREFIX + "/overview"
NAV = (
    ("overview", "Overview"),
    ("usage", "Usage"),
    ("keys", "Keys"),
    ("groups", "Groups"),
    ("requests", "Requests"),
    ("audit", "Audit"),
    ("models", "Models & health"),
)


def first(data: dict[str, list[str]], name: str) -> str | None:
    values = data.get(name)
    return values[0] if values else None


class Console:
    def __init__(self, gw: ConsoleDeps) -> None:
        self.gw = gw
        config = gw.config.console
        self.sessions = SessionStore(gw.engine, idle=config.session_idle, max_age=config.session_max)
        limiter: Limiter = RedisLimiter(gw.redis) if gw.redis is not None else LocalLimiter()
        self.guard = LoginGuard(limiter, config.login_attempts_per_minute)
        self.static = StaticFiles()
        self.env = Environment(
            loader=PackageLoader("sluicegate.console", "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(FILTERS)
        self.env.globals.update(static=self.static.url, nav=NAV, prefix=PREFIX, done_messages=DONE)
        self.pages = Pages(self)
        self.actions = Actions(self, self.pages)

    async def __call__(self, request: Request) -> None:
        try:
            response = await self._route(request)
        except GatewayError as exc:
            response = self.render("message.html", exc.status, title="Not done", message=exc.message, error=True)
        await response.send(request)

    def render(
        self,
        template: str,
        status: int = 200,
        *,
        session: Session | None = None,
        headers: dict[str, str] | None = None,
        **context: Any,
    ) -> Response:
        context.setdefault("active", None)
        context.setdefault("done", None)
        body = self.env.get_template(template).render(session=session, csrf=session.csrf if session else "", **context)
        return Response(status, body.encode("utf-8"), headers={**PAGE_HEADERS, **(headers or {})})

    def secure(self, request: Request) -> bool:
        configured = self.gw.config.console.secure_cookie
        return is_tls(request) if configured is None else configured

    async def _route(self, request: Request) -> Response:
        parts = [unquote(p) for p in request.path[len(PREFIX) :].split("/") if p]
        method = request.method
        if parts[:1] == ["static"]:
            if method not in ("GET", "HEAD") or len(parts) != 3:
                raise NotFound(f"Unknown path {request.path}")
            found = self.static.response(parts[1], parts[2], request.header(b"if-none-match"))
            if found is None:
                raise NotFound(f"Unknown path {request.path}")
            return found
        if method not in ("GET", "POST"):
            raise MethodNotAllowed(f"Method {method} is not allowed on {request.path}")
        if not parts:
            return redirect(HOME)
        if parts == ["login"]:
            return await (self._login(request) if method == "POST" else self._login_page(request))
        jar = cookies(request)
        session = await self.sessions.get(jar.get(COOKIE))
        if session is None:
            return self._signed_out(request, had_cookie=bool(jar.get(COOKIE)))
        try:
            if method == "GET":
                return await self.pages.get(parts, query(request), session)
            data = await form(request) if same_origin(request) else None
            if data is None or not session.csrf_ok(first(data, "csrf")):
                return self.render(
                    "message.html",
                    403,
                    session=session,
                    title="Refused",
                    message="This form's security token is missing or out of date, so nothing was changed. "
                    "Reload the page and try again.",
                    error=True,
                )
            if parts == ["logout"]:
                return await self._logout(request, session)
            return await self.actions.post(parts, data, session)
        except GatewayError as exc:  # the admin service's refusal, shown on a page of the console
            return self.render("message.html", exc.status, session=session, title="Not done", message=exc.message,
                               error=True)  # fmt: skip

    def _signed_out(self, request: Request, *, had_cookie: bool) -> Response:
        secure = self.secure(request)
        if request.method == "GET":
            raw = request.scope.get("query_string", b"").decode("latin-1")
            target = request.path + (f"?{raw}" if raw else "")
            location = f"{PREFIX}/login?next={quote(target, safe='')}" + ("&expired=1" if had_cookie else "")
            response = redirect(location)
        else:
            # A change posted without a live session is refused, never replayed after logging in.
            response = self.render(
                "message.html",
                401,
                title="Signed out",
                message="Your session has ended, so nothing was changed. Log in again.",
                error=True,
            )
        if had_cookie:
            response.headers["set-cookie"] = clear_cookie(secure=secure)
        return response

    async def _login_page(self, request: Request, status: int = 200, **context: Any) -> Response:
        q = query(request)
        return self.render(
            "login.html",
            status,
            next=_safe_next(q.get("next")),
            expired=bool(q.get("expired")),
            bye=bool(q.get("bye")),
            master_set=self.gw.master_set,
            **context,
        )

    async def _login(self, request: Request) -> Response:
        client = client_address(request)
        if not same_origin(request):
            return await self._login_page(request, 403, problem="This login form came from another site.")
        data = await form(request)
        wait = await self.guard.admit(client)
        if wait is not None:
            if await self.guard.first_refusal(client):
                await self.gw.admin.audit_action("console", "console.login_refused", client, reason="rate_limited")
            seconds = int(wait + 0.999)
            return await self._login_page(
                request,
                429,
                headers={"retry-after": str(seconds)},
                problem=f"Too many login attempts from your address. Try again in {seconds} s.",
            )
        key = first(data, "master_key") or ""
        if not self.gw.master.is_master(key.strip()):
            await self.gw.admin.audit_action("console", "console.login_failed", client)
            return await self._login_page(request, 401, problem="That is not the master key.")
        token, session = await self.sessions.create("master", client)
        await self.gw.admin.audit_action(session.who, "console.login", client)
        response = redirect(_safe_next(first(data, "next")))
        response.headers["set-cookie"] = session_cookie(token, secure=self.secure(request))
        return response

    async def _logout(self, request: Request, session: Session) -> Response:
        token = cookies(request).get(COOKIE, "")
        await self.sessions.end(token)
        await self.gw.admin.audit_action(session.who, "console.logout", session.client)
        response = redirect(f"{PREFIX}/login?bye=1")
        response.headers["set-cookie"] = clear_cookie(secure=self.secure(request))
        return response


def _safe_next(target: str | None) -> str:
    """Only a console path on this host (never ``//elsewhere`` or a scheme): no open redirect."""
    if not target or not target.startswith(PREFIX + "/") or target.startswith("//") or "\\" in target:
        return HOME
    if target.startswith((PREFIX + "/login", PREFIX + "/logout", PREFIX + "/static")):
        return HOME
    return target
