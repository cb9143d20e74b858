"""The console's pages (GET): figures from the analytics service, keys, groups and audit from the admin service."""

from __future__ import annotations

import time
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import orjson

from ..analytics import summary_csv
from ..dlp.detectors import BUILTIN_NAMES
from ..errors import NotFound
from ..policies.budgets import period_bounds
from ..routing.router import deployment_key
from . import charts
from .charts import Series
from .format import compact, credits, millis, number, percent
from .web import Renderer, Response

if TYPE_CHECKING:
    from .sessions import Session

RANGES = {"1h": "last hour", "24h": "last 24 hours", "7d": "last 7 days", "30d": "last 30 days"}
BY = {"model": "Model", "key": "Key", "group": "Group"}
AUDIT_KINDS = ("request", "admin", "dlp")
PAGE = 50


def _range(q: dict[str, str]) -> str:
    return q.get("range") if q.get("range") in RANGES else "24h"  # type: ignore[return-value]


class Pages:
    def __init__(self, console: Renderer) -> None:
        self.c = console
        self.gw = console.gw

    async def get(self, parts: list[str], q: dict[str, str], session: Session) -> Response:
        match parts:
            case ["overview"]:
                return await self.overview(q, session)
            case ["usage"]:
                return await self.usage(q, session)
            case ["usage", "export.csv" | "export.json" as name]:
                return await self.export(q, name.rsplit(".", 1)[1])
            case ["keys"]:
                return await self.keys(q, session)
            case ["keys", ref]:
                return await self.key(ref, q, session)
            case ["groups"]:
                return await self.groups(q, session)
            case ["groups", name]:
                return await self.group(name, q, session)
            case ["requests"]:
                return await self.requests(q, session)
            case ["requests", row_id]:
                return await self.request(row_id, session)
            case ["audit"]:
                return await self.audit(q, session)
            case ["models"]:
                return await self.models(session)
        raise NotFound("No such page")

    def page(self, template: str, session: Session, active: str, q: dict[str, str], **context: Any) -> Response:
        return self.c.render(template, session=session, active=active, done=q.get("done"), **context)

    # figures

    async def overview(self, q: dict[str, str], session: Session) -> Response:
        an = self.gw.analytics
        span = _range(q)
        ts = await an.timeseries("none", span)
        figures = (await an.summary("none", span))["total"]
        tops = {dim: (await an.top(dim, span))["data"] for dim in ("model", "key", "group")}
        t, b, total = ts["timestamps"], ts["bucket"], ts["total"]
        graphs = [
            _bars("c-requests", "Requests", t, b, total["requests"], number(figures["requests"]), "requests"),
            _lines(
                "c-tokens",
                "Tokens",
                t,
                b,
                [
                    Series("prompt", total["prompt_tokens"]),
                    Series("cached", total["cached_tokens"]),
                    Series("completion", total["completion_tokens"]),
                ],
            ),
            _bars("c-spend", "Spend (credits)", t, b, total["cost"], credits(figures["cost"]), "credits", credits),
            _lines("c-errors", "Error rate", t, b, [Series("errors", total["error_rate"])], percent),
            _lines(
                "c-latency",
                "Latency",
                t,
                b,
                [Series("p50", total["latency_p50_ms"]), Series("p95", total["latency_p95_ms"])],
                millis,
            ),
            _lines(
                "c-ttft",
                "Time to first token",
                t,
                b,
                [Series("p50", total["ttft_p50_ms"]), Series("p95", total["ttft_p95_ms"])],
                millis,
            ),
        ]
        return self.page(
            "overview.html", session, "overview", q, span=span, ranges=RANGES, figures=figures, graphs=graphs, tops=tops
        )

    async def usage(self, q: dict[str, str], session: Session) -> Response:
        an = self.gw.analytics
        span = _range(q)
        by = q.get("by") if q.get("by") in BY else "model"
        ts = await an.timeseries(by, span, top=6)
        summary = await an.summary(by, span)
        t, b = ts["timestamps"], ts["bucket"]
        spend = [Series(s["label"], s["cost"]) for s in ts["series"]]
        requests = [Series(s["label"], s["requests"]) for s in ts["series"]]
        graphs = [
            _lines("c-usage-spend", f"Spend by {by} (credits)", t, b, spend, credits),
            _lines("c-usage-requests", f"Requests by {by}", t, b, requests),
        ]
        query = urlencode({"by": by, "range": span})
        return self.page(
            "usage.html",
            session,
            "usage",
            q,
            span=span,
            ranges=RANGES,
            by=by,
            dims=BY,
            graphs=graphs,
            legend=charts.legend(spend),
            summary=summary,
            query=query,
        )

    async def export(self, q: dict[str, str], kind: str) -> Response:
        by = q.get("by") if q.get("by") in BY else "model"
        span = _range(q)
        summary = await self.gw.analytics.summary(by, span)
        name = f"sluicegate-usage-by-{by}-{span}.{kind}"
        headers = {"content-disposition": f'attachment; filename="{name}"', "cache-control": "no-store"}
        if kind == "csv":
            return Response(200, summary_csv(summary).encode(), b"text/csv; charset=utf-8", headers)
        return Response(200, orjson.dumps(summary), b"application/json", headers)

    # keys and groups

    async def _spend(self, scope: str, ident: str, limits: dict[str, Any]) -> dict[str, Any] | None:
        budget = limits.get("budget_micro")
        if budget is None:
            return None
        period = limits.get("budget_period") or "total"
        _, start, _ = period_bounds(period, time.time())
        spent = await self.gw.usage.spent_since(scope, ident, start)
        ratio = spent / budget if budget else 1.0
        return {"spent": spent / 1e6, "budget": budget / 1e6, "period": period, "ratio": ratio}

    async def keys(self, q: dict[str, str], session: Session) -> Response:
        admin = self.gw.admin
        group = q.get("group") or None
        keys = await admin.list_keys(group)
        for k in keys:
            k["spend"] = await self._spend("key", k["id"], k["limits"])
        groups = await admin.list_groups()
        return self.page("keys.html", session, "keys", q, keys=keys, groups=groups, group=group, now=time.time())

    async def key(self, ref: str, q: dict[str, str], session: Session) -> Response:
        key = await self.gw.admin.show_key(ref)
        key["spend"] = await self._spend("key", key["id"], key["limits"])
        recent = await self.gw.analytics.requests(limit=10, key=key["id"])
        return self.page("key.html", session, "keys", q, key=key, recent=recent["data"], now=time.time())

    async def groups(self, q: dict[str, str], session: Session) -> Response:
        groups = await self.gw.admin.list_groups()
        keys = await self.gw.admin.list_keys()
        for g in groups:
            g["keys"] = sum(1 for k in keys if k["group"] == g["name"])
            g["spend"] = await self._spend("group", g["name"], g["limits"])
        return self.page("groups.html", session, "groups", q, groups=groups)

    async def group(self, name: str, q: dict[str, str], session: Session) -> Response:
        group = await self.gw.admin.show_group(name)
        group["spend"] = await self._spend("group", group["name"], group["limits"])
        configured = [m.id for m in self.gw.config.models]
        grants = [
            {"pattern": p, "matches": [m for m in configured if m == p or fnmatchcase(m, p)]} for p in group["models"]
        ]
        usable = sorted({m for g in grants for m in g["matches"]})
        keys = await self.gw.admin.list_keys(name)
        return self.page(
            "group.html",
            session,
            "groups",
            q,
            group=group,
            grants=grants,
            usable=usable,
            configured=configured,
            keys=keys,
            detectors=BUILTIN_NAMES,
            dlp_defaults=self.gw.config.dlp,
            now=time.time(),
        )

    # logs

    async def requests(self, q: dict[str, str], session: Session) -> Response:
        filters = {k: q.get(k) or None for k in ("model", "key", "group", "status", "error_code")}
        page = await self.gw.analytics.requests(limit=PAGE, before=q.get("before"), **filters)
        kept = {k: v for k, v in filters.items() if v}
        more = f"?{urlencode({**kept, 'before': page['next']})}" if page["next"] else None
        return self.page(
            "requests.html",
            session,
            "requests",
            q,
            rows=page["data"],
            more=more,
            filters=filters,
            models=[m.id for m in self.gw.config.models],
            groups=[g["name"] for g in await self.gw.admin.list_groups()],
            filtered=bool(kept),
        )

    async def request(self, row_id: str, session: Session) -> Response:
        row = await self.gw.analytics.request(row_id)
        return self.page(
            "request.html", session, "requests", {}, row=row, prompts_logged=self.gw.analytics.prompts_logged
        )

    async def audit(self, q: dict[str, str], session: Session, verified: dict[str, Any] | None = None) -> Response:
        kind = q.get("kind") if q.get("kind") in AUDIT_KINDS else None
        before = int(q["before"]) if q.get("before", "").isdigit() else None
        entries = await self.gw.admin.audit_entries(PAGE + 1, kind, before)
        more = None
        if len(entries) > PAGE:
            entries = entries[:PAGE]
            more = "?" + urlencode({**({"kind": kind} if kind else {}), "before": entries[-1]["seq"]})
        for e in entries:
            e["details"] = e["payload"]  # the admin service returns it as an object
        context = {"entries": entries, "kind": kind, "kinds": AUDIT_KINDS, "more": more, "verified": verified}
        return self.page("audit.html", session, "audit", q, **context)

    async def models(self, session: Session) -> Response:
        upstreams = {(u["model"], u["deployment"]): u for u in await self.gw.analytics.upstreams("1h")}
        breaker = self.gw.breaker
        models = []
        for m in self.gw.config.models:
            deployments = []
            for i, d in enumerate(m.deployments):
                deployments.append(
                    {
                        "label": d.label,
                        "provider": d.provider,
                        "api_base": _public_base(d.api_base),
                        "weight": d.weight,
                        "timeouts": d.timeouts,
                        "circuit": breaker.state(deployment_key(m, i)) if breaker is not None else "unknown",
                        "recent": upstreams.get((m.id, d.label)),
                    }
                )
            models.append({"config": m, "deployments": deployments})
        circuits = self.gw.config.routing.circuit
        return self.page("models.html", session, "models", {}, models=models, circuits=circuits)


def _public_base(url: str | None) -> str | None:
    """The upstream's address without credentials or query (a URL may carry a token in either)."""
    if not url:
        return None
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _bars(
    chart_id: str, title: str, t: list[int], b: int, values: list[Any], total: str, unit: str, fmt: Any = compact
) -> dict[str, Any]:
    summary = charts.peak_summary(title, t, b, values, total)
    svg = charts.chart(chart_id, title, t, b, [Series(unit, values)], bars=True, fmt=fmt, summary=summary)
    return {"title": title, "svg": svg, "legend": None}


def _lines(chart_id: str, title: str, t: list[int], b: int, series: list[Series], fmt: Any = compact) -> dict[str, Any]:
    parts = []
    for s in series:
        known = [v for v in s.values if v is not None]
        parts.append(f"{s.label} up to {fmt(max(known))}" if known else f"{s.label}: none")
    summary = f"{title}: " + "; ".join(parts) + "."
    svg = charts.chart(chart_id, title, t, b, series, fmt=fmt, summary=summary)
    return {"title": title, "svg": svg, "legend": charts.legend(series) if len(series) > 1 else None}
