"""Keys, groups and model access end to end: CLI, admin API, openai SDK, two replicas on PostgreSQL + Redis."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import gateway_config
from tests.fakes.openai import FakeOpenAI
from tests.support.databases import database_url
from tests.support.gateway import GatewayProcess
from tests.support.services import redis_url


def cli(gw: GatewayProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in gw.env.items() if k != "SLUICEGATE_CONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "sluicegate", *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def admin(gw: GatewayProcess, method: str, path: str, body: Any = None, key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key or gw.key}"}
    return httpx.request(method, gw.url + "/admin/v1" + path, json=body, headers=headers, timeout=10)


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def sdk(gw: GatewayProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)


def ask(client: openai.OpenAI, model: str) -> str:
    response = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    return response.choices[0].message.content or ""


def test_cli_key_then_sdk_access_denied_and_revoked(gateway: GatewayProcess, fake: FakeOpenAI) -> None:
    group, name = unique("eng"), unique("ci-bot")
    created = cli(gateway, "groups", "create", group, "--models", "gpt-*")
    assert created.returncode == 0, created.stderr
    out = cli(gateway, "keys", "create", "--name", name, "--group", group)
    assert out.returncode == 0, out.stderr
    secret = out.stdout.strip().splitlines()[-1]
    assert secret.startswith("sk-sg-")
    listed = cli(gateway, "keys", "list", "--json")
    assert secret not in listed.stdout
    assert any(k["name"] == name and k["status"] == "active" for k in json.loads(listed.stdout))

    client = sdk(gateway, secret)
    assert ask(client, "gpt-test") == "Hello from the fake upstream."
    with pytest.raises(openai.PermissionDeniedError) as denied:
        ask(client, "demo")
    assert denied.value.code == "model_access_denied"
    with pytest.raises(openai.NotFoundError) as missing:
        ask(client, "no-such-model")
    assert missing.value.code == "model_not_found"
    assert {m.id for m in client.models.list()} == {"gpt-test", "gpt-strict"}

    revoked = admin(gateway, "POST", f"/keys/{name}/revoke")
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    with pytest.raises(openai.AuthenticationError) as refused:
        ask(client, "gpt-test")
    assert refused.value.code == "invalid_api_key"


def test_per_key_model_narrowing_and_models_list(gateway: GatewayProcess, fake: FakeOpenAI) -> None:
    group = unique("wide")
    assert admin(gateway, "POST", "/groups", {"name": group, "models": ["gpt-*", "demo"]}).status_code == 201
    r = admin(gateway, "POST", "/keys", {"name": unique("narrow"), "group": group, "models": ["demo"]})
    assert r.status_code == 201
    client = sdk(gateway, r.json()["key"])
    assert [m.id for m in client.models.list()] == ["demo"]
    with pytest.raises(openai.PermissionDeniedError):
        ask(client, "gpt-test")
    assert "demo model" in ask(client, "demo")


def test_admin_api_shapes_auth_and_errors(gateway: GatewayProcess) -> None:
    group = unique("ops")
    assert admin(gateway, "POST", "/groups", {"name": group, "models": ["demo"]}).status_code == 201
    dup = admin(gateway, "POST", "/groups", {"name": group, "models": []})
    assert dup.status_code == 409 and dup.json()["error"]["code"] == "conflict"
    bad = admin(gateway, "POST", "/groups", {"name": "no spaces allowed", "models": []})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "name"
    assert admin(gateway, "POST", f"/groups/{group}/grants", {"model": "gpt-*"}).json()["models"] == ["demo", "gpt-*"]
    assert admin(gateway, "DELETE", f"/groups/{group}/grants/demo").json()["models"] == ["gpt-*"]
    assert admin(gateway, "PATCH", f"/groups/{group}", {"models": ["x-*"]}).json()["models"] == ["x-*"]

    key = admin(gateway, "POST", "/keys", {"name": unique("k"), "group": group, "expires": "30d"}).json()
    assert key["expires_at"] > time.time() + 29 * 86400
    shown = admin(gateway, "GET", f"/keys/{key['prefix']}").json()
    assert "key" not in shown and shown["name"] == key["name"]
    listed = admin(gateway, "GET", f"/keys?group={group}").json()
    assert listed["object"] == "list" and [k["name"] for k in listed["data"]] == [key["name"]]
    rotated = admin(gateway, "POST", f"/keys/{key['name']}/rotate").json()
    assert rotated["key"] != key["key"] and rotated["id"] == key["id"]
    assert admin(gateway, "GET", "/keys/nope").status_code == 404
    assert admin(gateway, "GET", "/nothing-here").status_code == 404
    assert admin(gateway, "PUT", "/keys").status_code == 405

    # Only the master key administers: a valid API key gets 403 saying so; no key or a wrong one, 401.
    refused = admin(gateway, "GET", "/groups", key=rotated["key"])
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "admin_key_required"
    assert "needs the master key" in refused.json()["error"]["message"]
    for headers in ({}, {"Authorization": "Bearer sk-sg-not-a-real-key"}):
        no_auth = httpx.get(gateway.url + "/admin/v1/groups", headers=headers)
        assert no_auth.status_code == 401 and no_auth.json()["error"]["code"] == "invalid_api_key"
        assert "The admin API needs the master key" in no_auth.json()["error"]["message"]


def test_200_parallel_requests_valid_succeed_revoked_refused(gateway: GatewayProcess, fake: FakeOpenAI) -> None:
    group = unique("load")
    admin(gateway, "POST", "/groups", {"name": group, "models": ["gpt-test"]})
    good = [admin(gateway, "POST", "/keys", {"name": unique("g"), "group": group}).json()["key"] for _ in range(4)]
    bad = admin(gateway, "POST", "/keys", {"name": unique("b"), "group": group}).json()
    assert admin(gateway, "POST", f"/keys/{bad['name']}/revoke").status_code == 200

    async def run() -> list[int]:
        body = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=200)) as client:

            async def one(i: int) -> int:
                key = bad["key"] if i % 5 == 4 else good[i % 4]
                r = await client.post(
                    gateway.base_url + "/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
                )
                return r.status_code

            return await asyncio.gather(*(one(i) for i in range(200)))

    statuses = asyncio.run(run())
    assert [s for i, s in enumerate(statuses) if i % 5 != 4] == [200] * 160
    assert [s for i, s in enumerate(statuses) if i % 5 == 4] == [401] * 40


@pytest.fixture(scope="module")
def replicas(upstream: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[GatewayProcess]]:
    workdir = tmp_path_factory.mktemp("replicas")
    with database_url("postgres", workdir) as url:
        env = {"SLUICEGATE_DATABASE_URL": url, "SLUICEGATE_REDIS_URL": redis_url()}
        config = gateway_config(upstream.url)
        config["auth"] = {"cache_ttl": 60}  # prove propagation comes from the bus, not from expiry
        procs = []
        try:
            for i in range(2):
                wd: Path = workdir / f"r{i}"
                wd.mkdir()
                procs.append(GatewayProcess(config, wd, env).start())
            yield procs
        finally:
            for p in procs:
                p.stop()


def test_revocation_on_one_replica_is_refused_by_the_other_within_a_second(
    replicas: list[GatewayProcess], fake: FakeOpenAI
) -> None:
    a, b = replicas
    group = unique("repl")
    assert admin(a, "POST", "/groups", {"name": group, "models": ["gpt-*"]}).status_code == 201
    key = admin(a, "POST", "/keys", {"name": unique("k"), "group": group}).json()
    assert ask(sdk(b, key["key"]), "gpt-test")  # b has it cached now (TTL 60 s)
    assert admin(a, "POST", f"/keys/{key['name']}/revoke").status_code == 200
    revoked_at = time.monotonic()
    while True:
        r = httpx.get(b.base_url + "/models", headers={"Authorization": f"Bearer {key['key']}"})
        if r.status_code == 401:
            break
        assert time.monotonic() - revoked_at < 1.0, "replica b still accepts the revoked key after 1 s"
        time.sleep(0.02)
    # A grant change on b reaches a's cache too.
    assert admin(b, "PATCH", f"/groups/{group}", {"models": ["demo"]}).status_code == 200
    key2 = admin(b, "POST", "/keys", {"name": unique("k2"), "group": group}).json()
    deadline = time.monotonic() + 1.0
    while [m.id for m in sdk(a, key2["key"]).models.list()] != ["demo"]:
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_cli_revocation_reaches_running_replicas_through_redis(
    replicas: list[GatewayProcess], fake: FakeOpenAI
) -> None:
    a, b = replicas
    group = unique("clirev")
    admin(a, "POST", "/groups", {"name": group, "models": ["gpt-*"]})
    key = admin(a, "POST", "/keys", {"name": unique("k"), "group": group}).json()
    for gw in (a, b):
        assert ask(sdk(gw, key["key"]), "gpt-test")
    out = cli(a, "keys", "revoke", key["prefix"])
    assert out.returncode == 0, out.stderr
    deadline = time.monotonic() + 1.0
    for gw in (a, b):
        while httpx.get(gw.base_url + "/models", headers={"Authorization": f"Bearer {key['key']}"}).status_code != 401:
            assert time.monotonic() < deadline
            time.sleep(0.02)
