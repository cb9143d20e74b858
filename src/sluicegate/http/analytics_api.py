"""The analytics API under ``/admin/v1/usage/``: what the console's charts and tables read, as JSON (or CSV).

    GET /admin/v1/usage/timeseries?by=model&bucket=1h&since=24h[&until=...][&top=8]
    GET /admin/v1/usage/summary?by=key&since=7d[&format=csv]
    GET /admin/v1/usage/top?by=key&since=30d[&limit=5]        spend and requests of the biggest values only
    GET /admin/v1/usage/requests?limit=50[&before=CURSOR][&model=...][&key=...][&group=...][&status=error]
    GET /admin/v1/usage/requests/{id}
    GET /admin/v1/usage/upstreams?since=1h

``by``: model, key, group, deployment or none. ``since``/``until``: a date, a time, epoch seconds or a duration
back from now (``24h``). ``bucket``: 1m ... 1d (default: about 24-60 points for the range). Only the master key
is accepted, as on the rest of the admin API; ``GET /admin/v1/usage`` (the day-based report) stays there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import parse_qs, unquote

from ..analytics import summary_csv
from ..asgi import Request, send_bytes, send_error, send_json
from ..auth.authenticator import INVALID_KEY_MESSAGE
from ..auth.credentials import extract_credential
from ..errors import AuthenticationFailed, GatewayError, MethodNotAllowed, NotFound

if TYPE_CHECKING:
    from .deps import Services

PREFIX = "/admin/v1/usage/"


async def dispatch(gw: Services, request: Request) -> None:
    try:
        credential = extract_credential(request.header(b"authorization"), request.header(b"x-api-key"))
        if not gw.master.is_master(credential):
            raise AuthenticationFailed(INVALID_KEY_MESSAGE)
        if request.method != "GET":
            raise MethodNotAllowed(f"Method {request.method} is not allowed on {request.path}")
        parts = [unquote(p) for p in request.path[len(PREFIX) :].split("/") if p]
        q = {k: v[0] for k, v in parse_qs(request.scope.get("query_string", b"").decode()).items()}
        analytics = gw.analytics
        match parts:
            case ["timeseries"]:
                result = await analytics.timeseries(
                    q.get("by"), q.get("since"), q.get("until"), q.get("bucket"), q.get("top")
                )
            case ["summary"]:
                result = await analytics.summary(q.get("by"), q.get("since"), q.get("until"), q.get("bucket"))
                if q.get("format") == "csv":
                    body = summary_csv(result).encode()
                    headers = {"content-disposition": f'attachment; filename="usage-by-{result["by"]}.csv"'}
                    await send_bytes(request.send, 200, body, b"text/csv; charset=utf-8", headers)
                    return
            case ["top"]:
                result = await analytics.top(
                    q.get("by"), q.get("since"), q.get("until"), q.get("bucket"), q.get("limit")
                )
            case ["requests"]:
                result = await analytics.requests(
                    limit=q.get("limit"),
                    before=q.get("before"),
                    since=q.get("since"),
                    model=q.get("model"),
                    key=q.get("key"),
                    group=q.get("group"),
                    status=q.get("status"),
                    error_code=q.get("error_code"),
                )
            case ["requests", row_id]:
                result = await analytics.request(row_id)
            case ["upstreams"]:
                result = {"object": "list", "data": await analytics.upstreams(q.get("since", "1h"))}
            case _:
                raise NotFound(f"Unknown admin path {request.path}")
    except GatewayError as exc:
        await send_error(request.send, exc)
        return
    await send_json(request.send, 200, result)
