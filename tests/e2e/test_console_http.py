"""The console's session and CSRF rules over plain HTTP, against the real gateway on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import html
import json
import pathlib
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from sluicegate.app import App
from sluicegate.config import GatewayConfig
from sluicegate.settings import Settings
from tests.conftest import TEST_TIMEOUTS
from tests.fakes.openai import FakeOpenAI
from tests.support.console import (
    admin_get,
    age_sessions,
    console_gateway,
    csrf_of,
    database,
    login,
    session_rows,
)
from tests.support.gateway import GatewayProcess


def config(url: str, **console: Any) -> dict[str, Any]:
    dep = {"provider": "openai", "model": "up", "api_base": url, "api_key": "sk-up", "timeouts": TEST_TIMEOUTS}
    return {
        "models": [{"id": "gpt-test", "deployments": [dep], "price": {"input": 1000, "output": 2000}}],
        "routing": {"retry": {"max_attempts_per_deployment": 1}, "circuit": {"enabled": False}},
        "console": {"session_idle": 600, "login_attempts_per_minute": 1000, **console},
    }


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def gw(
    request: pytest.FixtureRequest, upstream: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    with console_gateway(config(upstream.url), tmp_path_factory.mktemp("console"), request.param) as g:
        yield g


def audit(gw: GatewayProcess, kind: str = "admin") -> list[dict[str, Any]]:
    r = admin_get(gw, "/audit", kind=kind, limit=50)
    assert r.status_code == 200
    return list(r.json()["data"])


def test_a_page_without_a_session_sends_the_browser_to_the_login(gw: GatewayProcess) -> None:
    r = httpx.get(gw.url + "/ui/keys?group=a")
    assert r.status_code == 303 and r.headers["location"] == "/ui/login?next=%2Fui%2Fkeys%3Fgroup%3Da"
    page = httpx.get(gw.url + "/ui/login")
    assert page.status_code == 200 and 'name="master_key"' in page.text
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store" and page.headers["x-frame-options"] == "DENY"


def test_login_gives_a_strict_httponly_cookie_whose_token_is_stored_only_as_a_hash(gw: GatewayProcess) -> None:
    r = httpx.post(gw.url + "/ui/login", data={"master_key": gw.key, "next": "/ui/keys"})
    assert r.status_code == 303 and r.headers["location"] == "/ui/keys"
    cookie = r.headers["set-cookie"]
    name, _, rest = cookie.partition("=")
    token = rest.split(";")[0]
    flags = {f.strip().lower() for f in cookie.split(";")[1:]}
    assert name == "sluicegate_session" and len(token) >= 40
    assert {"httponly", "samesite=strict", "path=/ui"} <= flags
    assert "secure" not in flags  # plain HTTP here; over TLS (or with console.secure_cookie) it is set
    rows = session_rows(database(gw))
    assert hashlib.sha256(token.encode()).hexdigest() in {row.token_hash for row in rows}
    assert all(token not in str(tuple(row)) for row in rows)
    page = httpx.get(gw.url + "/ui/keys", cookies={"sluicegate_session": token})
    assert page.status_code == 200 and "API keys" in page.text
    logins = [e for e in audit(gw) if e["action"] == "console.login"]
    assert logins and logins[0]["actor"] == "console:master@127.0.0.1"


def test_a_wrong_master_key_is_refused_and_audited(gw: GatewayProcess) -> None:
    before = len([e for e in audit(gw) if e["action"] == "console.login_failed"])
    r = httpx.post(gw.url + "/ui/login", data={"master_key": "sk-wrong-" + uuid.uuid4().hex})
    assert r.status_code == 401 and "set-cookie" not in r.headers
    assert "That is not the master key" in r.text and "sk-wrong" not in r.text
    failed = [e for e in audit(gw) if e["action"] == "console.login_failed"]
    assert len(failed) == before + 1 and failed[0]["target"] == "127.0.0.1"
    assert "sk-wrong" not in str(failed[0])


def test_every_change_needs_the_sessions_csrf_token_and_this_origin(gw: GatewayProcess) -> None:
    client = login(gw)
    token = csrf_of(client.get("/ui/groups").text)
    name = "g-" + uuid.uuid4().hex[:8]

    def create(**extra: Any) -> httpx.Response:
        data = {"name": name, "models": "gpt-*", **extra.pop("data", {})}
        return client.post("/ui/groups", data=data, **extra)

    for refused in (create(), create(data={"csrf": "forged"}), create(data={"csrf": ""})):
        assert refused.status_code == 403 and "nothing was changed" in refused.text
    cross_site = create(data={"csrf": token}, headers={"origin": "https://evil.example"})
    assert cross_site.status_code == 403
    other = login(gw)  # another session's token is no good here either
    assert create(data={"csrf": csrf_of(other.get("/ui/groups").text)}).status_code == 403
    assert admin_get(gw, f"/groups/{name}").status_code == 404
    done = create(data={"csrf": token}, headers={"origin": gw.url})
    assert done.status_code == 303 and done.headers["location"] == f"/ui/groups/{name}?done=created"
    assert admin_get(gw, f"/groups/{name}").json()["models"] == ["gpt-*"]
    entry = next(e for e in audit(gw) if e["action"] == "group.create" and e["target"] == name)
    assert entry["actor"] == "console:master@127.0.0.1"


def test_an_ended_session_is_refused_and_changes_nothing(gw: GatewayProcess) -> None:
    client = login(gw)
    token = csrf_of(client.get("/ui/groups").text)
    age_sessions(database(gw), idle=601)  # idle longer than console.session_idle
    page = client.get("/ui/groups")
    assert page.status_code == 303 and page.headers["location"].endswith("&expired=1")
    name = "g-" + uuid.uuid4().hex[:8]
    r = client.post("/ui/groups", data={"csrf": token, "name": name})
    assert r.status_code == 401 and "nothing was changed" in r.text
    assert admin_get(gw, f"/groups/{name}").status_code == 404

    client = login(gw)
    age_sessions(database(gw), past_max=True)  # beyond console.session_max
    assert client.get("/ui/overview").status_code == 303


def test_logout_ends_the_session_everywhere(gw: GatewayProcess) -> None:
    client = login(gw)
    cookie = client.cookies["sluicegate_session"]
    r = client.post("/ui/logout", data={"csrf": csrf_of(client.get("/ui/overview").text)})
    assert r.status_code == 303 and r.headers["location"] == "/ui/login?bye=1"
    assert "max-age=0" in r.headers["set-cookie"].lower()
    again = httpx.get(gw.url + "/ui/overview", cookies={"sluicegate_session": cookie})
    assert again.status_code == 303 and "expired=1" in again.headers["location"]
    assert any(e["action"] == "console.logout" for e in audit(gw))


def test_static_files_have_their_types_and_are_cached_by_content_hash(gw: GatewayProcess) -> None:
    page = httpx.get(gw.url + "/ui/login").text
    for name, kind in (("console.css", "text/css"), ("console.js", "text/javascript"), ("favicon.svg", "image/svg")):
        found = re.search(rf"/ui/static/[0-9a-f]+/{re.escape(name)}", page)
        assert found, name
        url = found.group(0)
        r = httpx.get(gw.url + url)
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
        assert r.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert httpx.get(gw.url + url, headers={"if-none-match": r.headers["etag"]}).status_code == 304
        stale = httpx.get(gw.url + f"/ui/static/0000/{name}")
        assert stale.status_code == 200 and stale.headers["cache-control"] == "no-cache"
    assert httpx.get(gw.url + "/ui/static/x/nothing.css").status_code == 404
    assert httpx.get(gw.url + "/uix").status_code == 404


def test_login_attempts_are_rate_limited_per_address_and_audited_once(
    upstream: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory
) -> None:
    workdir = tmp_path_factory.mktemp("console-limit")
    with console_gateway(config(upstream.url, login_attempts_per_minute=3), workdir) as g:
        statuses = [httpx.post(g.url + "/ui/login", data={"master_key": f"guess-{i}"}).status_code for i in range(3)]
        assert statuses == [401, 401, 401]
        refused = httpx.post(g.url + "/ui/login", data={"master_key": "guess-4"})
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        assert "Too many login attempts" in refused.text
        # Even the right key waits: the limit is on attempts, so a guess that happens to be right gains nothing.
        right = httpx.post(g.url + "/ui/login", data={"master_key": g.key})
        assert right.status_code == 429 and "set-cookie" not in right.headers
        actions = [e["action"] for e in audit(g)]
        assert actions.count("console.login_failed") == 3
        assert actions.count("console.login_refused") == 1  # audited once per address and minute, not per attempt


def _secret(html: str) -> str:
    found = re.search(r'id="secret" type="text" readonly value="([^"]+)"', html)
    assert found, "no one-time key on the page"
    return found.group(1)


def _chat(gw: GatewayProcess, key: str) -> int:
    body = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}
    headers = {"Authorization": f"Bearer {key}"}
    return httpx.post(gw.base_url + "/chat/completions", json=body, headers=headers, timeout=30).status_code


def test_the_key_and_group_forms_make_the_same_changes_as_the_api(gw: GatewayProcess) -> None:
    client = login(gw)
    token = csrf_of(client.get("/ui/keys").text)

    def post(path: str, **data: Any) -> httpx.Response:
        return client.post(path, data={"csrf": token, **data})

    group, name = "g-" + uuid.uuid4().hex[:8], "k-" + uuid.uuid4().hex[:8]
    assert post("/ui/groups", name=group, models="gpt-*").status_code == 303
    created = post("/ui/keys", name=name, group=group, expires="30d", rpm="60", budget="1.5", budget_period="day")
    assert created.status_code == 201 and created.headers["cache-control"] == "no-store"
    first = _secret(created.text)
    key = admin_get(gw, f"/keys/{name}").json()
    assert key["limits"] == {"rpm": 60, "tpm": None, "budget": 1.5, "budget_micro": 1_500_000, "budget_period": "day"}
    assert key["expires_at"] == pytest.approx(time.time() + 30 * 86400, abs=60)
    assert first not in client.get(f"/ui/keys/{name}").text  # shown once, never again

    assert post(f"/ui/keys/{name}/limits", rpm="", tpm="1,000", budget="", budget_period="total").status_code == 303
    assert admin_get(gw, f"/keys/{name}").json()["limits"]["tpm"] == 1000
    bad = post(f"/ui/keys/{name}/limits", rpm="lots")
    assert bad.status_code == 400 and "'rpm' must be a whole number" in html.unescape(bad.text)
    assert "Log out" in bad.text  # the refusal is a page of the console, still logged in
    assert post(f"/ui/keys/{name}/expiry", expires="never").status_code == 303
    assert admin_get(gw, f"/keys/{name}").json()["expires_at"] is None

    rotated = post(f"/ui/keys/{name}/rotate")
    second = _secret(rotated.text)
    assert second != first and _chat(gw, first) == 401 and _chat(gw, second) == 200

    assert post(f"/ui/groups/{group}/grants", model="demo").status_code == 303
    assert post(f"/ui/groups/{group}/grants/delete", model="gpt-*").status_code == 303
    assert admin_get(gw, f"/groups/{group}").json()["models"] == ["demo"]
    dlp = {"request_action": "block", "request_detectors": ["email", "us_ssn"], "response_action": "off"}
    assert post(f"/ui/groups/{group}/dlp", **dlp).status_code == 303
    assert admin_get(gw, f"/groups/{group}").json()["dlp"] == {
        "request": {"action": "block", "detectors": ["email", "us_ssn"]},
        "response": None,
    }
    in_use = post(f"/ui/groups/{group}/delete")
    assert in_use.status_code == 409 and "still has keys" in html.unescape(in_use.text)
    actions = [e["action"] for e in audit(gw) if e["target"] in (group, name)]
    assert {"key.create", "key.set_limits", "key.set_expiry", "key.rotate", "group.set_dlp"} <= set(actions)


async def test_the_session_cookie_is_secure_when_the_request_came_over_tls(
    upstream: FakeOpenAI, tmp_path: pathlib.Path
) -> None:
    """In process, through httpx's ASGI transport, which gives the app the scheme of the URL it was asked for."""
    settings = Settings(
        config_path=None,
        database_url=f"sqlite:///{tmp_path / 'tls.db'}",
        redis_url=None,
        master_key="sk-tls-master",
        data_dir=str(tmp_path),
    )
    app = App(settings, GatewayConfig.model_validate(config(upstream.url)))
    await app.gateway.start()  # the store and services the console uses (no upstream traffic here)
    try:
        transport = httpx.ASGITransport(app=app)
        for scheme, secure in (("https", True), ("http", False)):
            async with httpx.AsyncClient(transport=transport, base_url=f"{scheme}://console.test") as client:
                r = await client.post("/ui/login", data={"master_key": "sk-tls-master"})
                assert r.status_code == 303
                assert ("; Secure" in r.headers["set-cookie"]) is secure
    finally:
        await app.gateway.stop()


def test_key_expiry_is_set_the_same_way_by_the_api_and_the_cli(gw: GatewayProcess) -> None:
    auth = {"Authorization": f"Bearer {gw.key}"}
    group, name = "g-" + uuid.uuid4().hex[:8], "k-" + uuid.uuid4().hex[:8]
    httpx.post(gw.url + "/admin/v1/groups", json={"name": group, "models": ["*"]}, headers=auth).raise_for_status()
    httpx.post(gw.url + "/admin/v1/keys", json={"name": name, "group": group}, headers=auth).raise_for_status()
    env = {k: v for k, v in gw.env.items() if k != "SLUICEGATE_CONFIG"}
    out = subprocess.run([sys.executable, "-m", "sluicegate", "keys", "expire", name, "2d", "--json"], env=env,
                         capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    assert json.loads(out.stdout)["expires_at"] == pytest.approx(time.time() + 2 * 86400, abs=60)
    url = f"{gw.url}/admin/v1/keys/{name}/expiry"
    assert httpx.put(url, json={"expires": None}, headers=auth).json()["expires_at"] is None
    bad = httpx.put(url, json={"expires": "yesterday"}, headers=auth)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "expires"
    assert any(e["action"] == "key.set_expiry" and e["target"] == name for e in audit(gw))


def test_usage_exports_are_the_analytics_summary(gw: GatewayProcess) -> None:
    client = login(gw)
    assert _chat(gw, gw.key) == 200
    exported = client.get("/ui/usage/export.json?by=model&range=24h")
    assert exported.status_code == 200 and exported.headers["content-type"] == "application/json"
    assert 'filename="sluicegate-usage-by-model-24h.json"' in exported.headers["content-disposition"]
    api = admin_get(gw, "/usage/summary", by="model", since="24h").json()
    assert exported.json()["data"] == api["data"] and any(r["key"] == "gpt-test" for r in api["data"])
    table = client.get("/ui/usage/export.csv?by=model&range=24h")
    assert table.headers["content-type"].startswith("text/csv") and table.text.startswith("key,label,requests")
    assert httpx.get(gw.url + "/ui/usage/export.csv").status_code == 303  # no session: to the login
