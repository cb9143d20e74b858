"""HTTP details of the console: cookies, forms, security headers, static files."""

from __future__ import annotations

import hashlib
import mimetypes
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qs, urlsplit

from ..asgi import Request, send_bytes
from ..errors import InvalidRequest

if TYPE_CHECKING:
    from .deps import ConsoleDeps
    from .sessions import Session

PREFIX = "/ui"
COOKIE = "sluicegate_session"
COOKIE_PATH = PREFIX
MAX_FORM_BYTES = 64 * 1024

# No inline script or style anywhere: the pages, their SVG charts and their scripts all come from /ui itself.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
PAGE_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    # Pages show live figures and, once, new keys: never kept by the browser or an intermediary.
    "cache-control": "no-store",
}
_TYPES = {".css": "text/css; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml"}


@dataclass(slots=True)
class Response:
    status: int = 200
    body: bytes = b""
    content_type: bytes = b"text/html; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)

    async def send(self, request: Request) -> None:
        await send_bytes(request.send, self.status, self.body, self.content_type, self.headers)


def redirect(location: str, status: int = 303) -> Response:
    return Response(status, b"", b"text/plain; charset=utf-8", {**PAGE_HEADERS, "location": location})


def cookies(request: Request) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in (request.header(b"cookie") or "").split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name not in out:
            out[name] = value
    return out


def query(request: Request) -> dict[str, str]:
    raw = request.scope.get("query_string", b"").decode("latin-1")
    return {k: v[-1].strip() for k, v in parse_qs(raw, keep_blank_values=True).items()}


async def form(request: Request) -> dict[str, list[str]]:
    """An ``application/x-www-form-urlencoded`` body; every value a list (checkboxes repeat their name)."""
    kind = (request.header(b"content-type") or "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise InvalidRequest("the console accepts HTML form posts only")
    raw = await request.body(MAX_FORM_BYTES)
    return parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True)


def same_origin(request: Request) -> bool:
    """A browser's POST carries Origin; it must name this host (a page elsewhere posting here is refused)."""
    origin = request.header(b"origin")
    if origin is None:
        return True  # not a browser, or an old one: the CSRF token still has to match
    return urlsplit(origin).netloc == (request.header(b"host") or "")


def is_tls(request: Request) -> bool:
    return request.scope.get("scheme") == "https"


def client_address(request: Request) -> str:
    client = request.scope.get("client")
    return str(client[0]) if client else "unknown"


def session_cookie(token: str, *, secure: bool) -> str:
    flags = f"; Path={COOKIE_PATH}; HttpOnly; SameSite=Strict" + ("; Secure" if secure else "")
    return f"{COOKIE}={token}{flags}"


def clear_cookie(*, secure: bool) -> str:
    return session_cookie("", secure=secure) + "; Max-Age=0"


class StaticFiles:
    """The package's ``static/`` files, read once, served under a content hash so they can be cached for good."""

    def __init__(self) -> None:
        self._files: dict[str, tuple[bytes, str, str]] = {}  # name -> (body, content type, hash)
        for entry in resources.files(__package__).joinpath("static").iterdir():
            if entry.is_file():
                body = entry.read_bytes()
                suffix = "." + entry.name.rsplit(".", 1)[-1]
                kind = _TYPES.get(suffix) or mimetypes.guess_type(entry.name)[0] or "application/octet-stream"
                self._files[entry.name] = (body, kind, hashlib.sha256(body).hexdigest()[:12])

    def url(self, name: str) -> str:
        return f"{COOKIE_PATH}/static/{self._files[name][2]}/{name}"

    def response(self, version: str, name: str, if_none_match: str | None) -> Response | None:
        entry = self._files.get(name)
        if entry is None:
            return None
        body, kind, digest = entry
        etag = f'"{digest}"'
        headers = {"etag": etag, "x-content-type-options": "nosniff"}
        # A hashed URL never changes content: cached for a year. Any other version is served fresh, briefly.
        headers["cache-control"] = "public, max-age=31536000, immutable" if version == digest else "no-cache"
        if if_none_match == etag:
            return Response(304, b"", kind.encode(), headers)
        return Response(200, body, kind.encode(), headers)


class Renderer(Protocol):
    """What the pages and actions use of the console (``console.app.Console``)."""

    gw: ConsoleDeps

    def render(
        self,
        template: str,
        status: int = 200,
        *,
        session: Session | None = None,
        headers: dict[str, str] | None = None,
        **context: Any,
    ) -> Response: ...
