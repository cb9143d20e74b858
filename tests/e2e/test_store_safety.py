"""No completed response loses its usage row or audit entry because of one bad field (issues 23 and 24), through
the real gateway on SQLite and PostgreSQL, with concurrent requests sharing group commits."""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sluicegate.storage.db import create_engine
from sluicegate.storage.usage import UsageStore
from tests.conftest import TEST_TIMEOUTS
from tests.fakes.openai import FakeOpenAI
from tests.support.databases import database_url, pg_execute
from tests.support.gateway import GatewayProcess

CUT_CODE = "x" * 66 + "...[truncated]"  # HOSTILE_CODE as the 80-character error_code column keeps it


def config(url: str) -> dict[str, Any]:
    def dep(model: str) -> dict[str, Any]:
        return {"provider": "openai", "model": model, "api_base": url, "api_key": "sk-up", "timeouts": TEST_TIMEOUTS}

    return {
        "models": [
            {"id": "metered", "deployments": [dep("up")], "price": {"input": 1000, "output": 2000}},
            {"id": "hostile", "deployments": [dep("up scenario:hostile_error")]},
        ],
        "routing": {"retry": {"max_attempts_per_deployment": 1}, "circuit": {"enabled": False}},
    }


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def gw(
    request: pytest.FixtureRequest, upstream: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GatewayProcess, str]]:
    workdir: Path = tmp_path_factory.mktemp(f"store-{request.param}")
    with (
        database_url(request.param, workdir) as url,
        GatewayProcess(config(upstream.url), workdir, {"SLUICEGATE_DATABASE_URL": url}) as g,
    ):
        yield g, url


def send_all(g: GatewayProcess, bodies: dict[str, dict[str, Any]]) -> dict[str, httpx.Response]:
    """Every body at once (they share the gateway's group commits), keyed by the request id each was sent with."""

    async def run() -> dict[str, httpx.Response]:
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=100)) as client:
            calls = [
                client.post(
                    g.base_url + "/chat/completions",
                    json=body,
                    headers={"Authorization": f"Bearer {g.key}", "x-request-id": rid},
                )
                for rid, body in bodies.items()
            ]
            return dict(zip(bodies, await asyncio.gather(*calls), strict=True))

    return asyncio.run(run())


def body(model: str = "metered", *, stream: bool = False, **extra: Any) -> dict[str, Any]:
    return {"model": model, "stream": stream, "messages": [{"role": "user", "content": "hi"}], **extra}


def usage_rows(url: str, ids: list[str]) -> dict[str, dict[str, Any]]:
    async def fetch() -> list[dict[str, Any]]:
        engine = create_engine(url)
        try:
            return await UsageStore(engine).by_request_ids(ids)
        finally:
            await engine.dispose()

    return {r["request_id"]: r for r in asyncio.run(fetch())}


def admin(g: GatewayProcess, path: str) -> Any:
    r = httpx.get(g.url + "/admin/v1" + path, headers={"Authorization": f"Bearer {g.key}"}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def audited_request_ids(g: GatewayProcess) -> set[str]:
    return {e["payload"]["request_id"] for e in admin(g, "/audit?kind=request&limit=1000")["data"]}


def refused_metric(g: GatewayProcess, result: str) -> float:
    text = httpx.get(g.url + "/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "sluicegate_store_refused_records_total" and s.labels == {"result": result}:
                return float(s.value)
    return 0.0


def test_bad_fields_from_clients_and_upstreams_cost_no_request_its_record(gw: tuple[GatewayProcess, str]) -> None:
    g, url = gw
    tag = uuid.uuid4().hex[:8]
    answered = {f"ok-{tag}-{i}": body(stream=i % 2 == 0, user=f"user-{i}") for i in range(30)}
    hostile = {f"hostile-{tag}-{i}": body("hostile", stream=i % 2 == 0) for i in range(10)}
    refused = {
        **{f"nul-user-{tag}-{i}": body(user=f"alice\u0000{i}") for i in range(5)},
        **{f"long-user-{tag}-{i}": body(user="u" * 257) for i in range(3)},
        **{f"nul-meta-{tag}-{i}": body(metadata={"team": f"se\u0000arch{i}"}) for i in range(3)},
        **{f"nul-key-{tag}-{i}": body(metadata={f"te\u0000am{i}": "search"}) for i in range(2)},
    }
    responses = send_all(g, {**answered, **refused, **hostile})

    # Every request the gateway answered has its usage row and its audit entry, whatever rode in its batch.
    recorded = [*answered, *hostile]
    rows = usage_rows(url, recorded)
    assert sorted(set(recorded) - rows.keys()) == [], g.log()[-3000:]
    assert sorted(set(recorded) - audited_request_ids(g)) == []
    for rid in hostile:
        # The upstream's own code, as far as the column holds it, without the NUL; also in the attempts.
        assert rows[rid]["error_code"] == CUT_CODE and rows[rid]["status"] == 400
        assert rows[rid]["attempts"][0]["error_code"] == CUT_CODE
    assert all(rows[rid]["user_field"] == answered[rid]["user"] for rid in answered)
    assert admin(g, "/audit/verify")["ok"] is True

    for rid in answered:
        assert responses[rid].status_code == 200, responses[rid].text
    for rid in hostile:
        assert responses[rid].status_code == 400  # the upstream's 4xx, passed on
    for rid, body_sent in refused.items():
        error = responses[rid].json()["error"]
        param = "user" if "user" in body_sent else "metadata"
        assert (responses[rid].status_code, error["code"], error["param"]) == (400, "invalid_body", param), error


def test_a_record_the_database_refuses_is_written_in_its_last_resort_form(gw: tuple[GatewayProcess, str]) -> None:
    """The database refuses what the gateway's cleaning lets through (here, non-ASCII users, as a LATIN1 database
    refuses other scripts): those responses still complete with their record, in ASCII, their batch-mates as
    sent; the metric and the log say so, and the audit chain verifies."""
    g, url = gw
    if url.startswith("sqlite"):
        with sqlite3.connect(urlparse(url).path) as db:
            db.execute(
                "CREATE TRIGGER IF NOT EXISTS ascii_user BEFORE INSERT ON usage WHEN NEW.user_field GLOB '*[^ -~]*' "
                "BEGIN SELECT RAISE(ABORT, 'ascii_user'); END"
            )
    else:
        schema = parse_qs(urlparse(url).query)["search_path"][0]
        pg_execute(f"ALTER TABLE \"{schema}\".usage ADD CONSTRAINT ascii_user CHECK (user_field ~ '^[ -~]*$')")
    before = refused_metric(g, "salvaged")
    tag = uuid.uuid4().hex[:8]
    sent = {f"ascii-{tag}-{i}": body(stream=i % 3 == 0, user=f"名前-{i}" if i % 2 else f"user-{i}") for i in range(20)}
    responses = send_all(g, sent)
    assert all(r.status_code == 200 for r in responses.values())
    rows = usage_rows(url, list(sent))
    assert len(rows) == 20 and set(sent) <= audited_request_ids(g)
    for i, rid in enumerate(sent):
        assert rows[rid]["user_field"] == (f"\\u540d\\u524d-{i}" if i % 2 else f"user-{i}")
    assert refused_metric(g, "salvaged") - before == 10
    assert "written in its last-resort form" in g.log()
    assert admin(g, "/audit/verify")["ok"] is True
