"""Metering, budgets, rate limits, audit and reports, through the real gateway process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sluicegate.storage.db import create_engine
from sluicegate.storage.usage import UsageStore
from tests.conftest import TEST_TIMEOUTS
from tests.fakes.openai import FakeOpenAI
from tests.support.databases import database_url
from tests.support.gateway import GatewayProcess
from tests.support.services import redis_url

PRICE = {"input": 1000, "cached_input": 100, "output": 2000}  # credits per million tokens


def config(url: str) -> dict[str, Any]:
    def dep(model: str) -> dict[str, Any]:
        return {"provider": "openai", "model": model, "api_base": url, "api_key": "sk-up", "timeouts": TEST_TIMEOUTS}

    return {
        "models": [
            {"id": "metered", "deployments": [dep("up")], "price": PRICE},
            {"id": "cheap", "deployments": [dep("up")], "price": {"input": 1, "output": 1}},
            {"id": "flaky", "deployments": [dep("up scenario:status:503")], "fallbacks": ["cheap"], "price": PRICE},
        ],
        "server": {"tail_grace": 0.5},
        "routing": {"retry": {"max_attempts_per_deployment": 1}, "circuit": {"enabled": False}},
    }


@pytest.fixture(scope="module")
def gw(upstream: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with GatewayProcess(config(upstream.url), tmp_path_factory.mktemp("acct")) as g:
        yield g


def admin(gw: GatewayProcess, method: str, path: str, body: Any = None) -> Any:
    r = httpx.request(method, gw.url + "/admin/v1" + path, json=body, headers={"Authorization": f"Bearer {gw.key}"})
    assert r.status_code < 300, r.text
    return r.json()


def new_key(gw: GatewayProcess, models: list[str] | None = None, **limits: Any) -> dict[str, Any]:
    group = "g-" + uuid.uuid4().hex[:8]
    admin(gw, "POST", "/groups", {"name": group, "models": models or ["*"]})
    key = admin(gw, "POST", "/keys", {"name": "k-" + uuid.uuid4().hex[:8], "group": group})
    if limits:
        admin(gw, "PUT", f"/keys/{key['name']}/limits", limits)
    return dict(key)


def chat(gw: GatewayProcess, key: str, content: str = "hi", *, model: str = "metered", **extra: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": content}], **extra}
    return httpx.post(
        gw.base_url + "/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )


def records(gw: GatewayProcess, request_ids: list[str], *, database: str | None = None) -> dict[str, dict[str, Any]]:
    async def fetch() -> list[dict[str, Any]]:
        engine = create_engine(database or f"sqlite:///{gw.workdir / 'data' / 'sluicegate.db'}")
        try:
            return await UsageStore(engine).by_request_ids(request_ids)
        finally:
            await engine.dispose()

    return {r["request_id"]: r for r in asyncio.run(fetch())}


def test_every_request_has_its_record_with_exact_cost(gw: GatewayProcess, fake: FakeOpenAI) -> None:
    key = new_key(gw)
    s = chat(gw, key["key"], stream=True, stream_options={"include_usage": True}, user="alice")
    ns = chat(gw, key["key"])
    failed = chat(gw, key["key"], "scenario:status:500")
    assert (s.status_code, ns.status_code, failed.status_code) == (200, 200, 502)
    ids = [r.headers["x-request-id"] for r in (s, ns, failed)]
    got = records(gw, ids)
    stream_rec, plain_rec, failed_rec = (got[i] for i in ids)
    # The fake reports 11 prompt + 5 completion tokens: 11*1000 + 5*2000 = 21,000 micro-credits.
    for rec in (stream_rec, plain_rec):
        assert (rec["prompt_tokens"], rec["completion_tokens"], rec["cost_micro"]) == (11, 5, 21_000)
        assert rec["status"] == 200 and rec["outcome"] == "completed" and not rec["partial"] and not rec["estimated"]
        assert rec["model"] == "metered" and rec["deployment"] == "openai/up" and rec["key_prefix"] == key["prefix"]
        assert rec["latency_ms"] > 0 and rec["ttft_ms"] is not None
    assert stream_rec["stream"] and not plain_rec["stream"] and stream_rec["user_field"] == "alice"
    # The client's usage chunk carries exactly the metered numbers.
    usage_chunk = json.loads(s.content.split(b"\n\n")[-3][6:])
    assert usage_chunk["usage"]["prompt_tokens"] == 11 and usage_chunk["usage"]["completion_tokens"] == 5
    assert (
        failed_rec["status"] == 502 and failed_rec["cost_micro"] == 0 and failed_rec["error_code"] == "upstream_error"
    )


def test_a_failed_attempt_replaced_by_a_fallback_is_an_attempt_not_a_bill(gw: GatewayProcess, fake: FakeOpenAI) -> None:
    key = new_key(gw)
    r = chat(gw, key["key"], model="flaky")
    assert r.status_code == 200 and r.json()["model"] == "cheap"
    rec = records(gw, [r.headers["x-request-id"]])[r.headers["x-request-id"]]
    assert rec["requested_model"] == "flaky" and rec["model"] == "cheap"
    assert [(a["model"], a["ok"]) for a in rec["attempts"]] == [("flaky", False), ("cheap", True)]
    assert rec["cost_micro"] == 16  # 11 + 5 tokens at the fallback's price of 1 per million each


def test_stream_cut_by_the_client_is_partial_and_estimated(gw: GatewayProcess, fake: FakeOpenAI) -> None:
    key = new_key(gw)
    request_id = "cut-" + uuid.uuid4().hex[:8]
    body = {"model": "metered", "stream": True, "messages": [{"role": "user", "content": "scenario:slow_chunks:150"}]}
    headers = {"Authorization": f"Bearer {key['key']}", "x-request-id": request_id}
    with httpx.Client(timeout=10) as client, client.stream("POST", gw.base_url + "/chat/completions", json=body,
                                                          headers=headers) as r:  # fmt: skip
        got = b""
        for part in r.iter_raw():
            got += part
            if got.count(b"\n\n") >= 5:
                break
    deadline = time.monotonic() + 5
    while not (rec := records(gw, [request_id]).get(request_id)):
        assert time.monotonic() < deadline, "no record for a stream the client cut"
        time.sleep(0.05)
    assert rec["partial"] and rec["estimated"] and rec["outcome"] == "cancelled"
    assert rec["completion_tokens"] > 0 and rec["prompt_tokens"] > 0 and rec["cost_micro"] > 0


def test_reservations_under_100_concurrent_requests(gw: GatewayProcess, fake: FakeOpenAI) -> None:
    # Each request reserves prompt (estimated 7 tokens) + max_tokens 10 at the prices: 7,000 + 20,000 = 27,000.
    # Each really costs 11*1000 + 5*2000 = 21,000. A budget of 270,000 admits exactly 10 reservations at once.
    key = new_key(gw, budget_micro=270_000)

    async def burst() -> list[httpx.Response]:
        body = {"model": "metered", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}
        headers = {"Authorization": f"Bearer {key['key']}"}
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=100)) as client:
            url = gw.base_url + "/chat/completions"
            return await asyncio.gather(*(client.post(url, json=body, headers=headers) for _ in range(100)))

    responses = asyncio.run(burst())
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 403]
    # At least the 10 that fit at once; a few more only once finished requests gave back their unused reserve.
    assert len(ok) + len(refused) == 100 and 10 <= len(ok) <= 270_000 // 21_000
    assert all(r.json()["error"]["code"] == "budget_exceeded" for r in refused)
    billed = records(gw, [r.headers["x-request-id"] for r in responses])
    total = sum(r["cost_micro"] for r in billed.values())
    assert total == 21_000 * len(ok) <= 270_000
    report = {r["key"]: r for r in admin(gw, "GET", "/usage?by=key&since=1h")["data"]}
    assert report[key["prefix"]]["cost_micro"] == total  # the ledger sums exactly


def test_rate_limit_headers_and_429(gw: GatewayProcess, fake: FakeOpenAI) -> None:
    key = new_key(gw, rpm=3)
    seen = []
    for _ in range(3):
        r = chat(gw, key["key"])
        assert r.status_code == 200
        assert r.headers["x-ratelimit-limit-requests"] == "3"
        seen.append(int(r.headers["x-ratelimit-remaining-requests"]))
        assert r.headers["x-ratelimit-reset-requests"].endswith("s")
    assert seen == [2, 1, 0]
    refused = chat(gw, key["key"])
    assert refused.status_code == 429
    assert (
        refused.json()["error"]["code"] == "rate_limit_exceeded"
        and refused.json()["error"]["type"] == "rate_limit_error"
    )
    assert 1 <= int(refused.headers["retry-after"]) <= 21
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"


def test_token_limit_charges_prompt_then_completion(gw: GatewayProcess, fake: FakeOpenAI) -> None:
    key = new_key(gw, tpm=30)
    first = chat(gw, key["key"])  # ~7 prompt tokens before, 5 completion tokens after
    assert first.status_code == 200 and first.headers["x-ratelimit-limit-tokens"] == "30"
    statuses = [chat(gw, key["key"]).status_code for _ in range(4)]
    assert statuses[0] == 200 and 429 in statuses


def test_audit_verify_fails_after_a_hand_edit_and_lists_admin_actions(gw: GatewayProcess, fake: FakeOpenAI) -> None:
    key = new_key(gw, rpm=100)
    assert chat(gw, key["key"]).status_code == 200
    env = {k: v for k, v in gw.env.items() if k != "SLUICEGATE_CONFIG"}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "sluicegate", *args]
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=False)

    ok = cli("audit", "verify")
    assert ok.returncode == 0 and "intact" in ok.stdout
    actions = {e["action"] for e in admin(gw, "GET", "/audit?kind=admin&limit=1000")["data"]}
    assert {"group.create", "key.create", "key.set_limits"} <= actions
    requests = admin(gw, "GET", "/audit?kind=request&limit=5")["data"]
    assert requests and "hi" not in json.dumps(requests) and key["key"] not in json.dumps(requests)
    db = sqlite3.connect(gw.workdir / "data" / "sluicegate.db")
    try:
        db.execute("UPDATE audit_log SET payload = replace(payload, '\"status\":200', '\"status\":201') WHERE seq = "
                   "(SELECT max(seq) FROM audit_log WHERE kind = 'request')")  # fmt: skip
        db.commit()
        bad = cli("audit", "verify")
        assert bad.returncode == 1 and "TAMPERED" in bad.stdout
    finally:
        db.execute("UPDATE audit_log SET payload = replace(payload, '\"status\":201', '\"status\":200')")
        db.commit()
        db.close()
    assert cli("audit", "verify").returncode == 0
    report = cli("usage", "--by", "model", "--since", "1h", "--json")
    assert report.returncode == 0 and any(r["model"] == "metered" for r in json.loads(report.stdout))


def request_audits(gw: GatewayProcess, request_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The request audit entries' payloads, by request id."""
    entries = admin(gw, "GET", "/audit?kind=request&limit=1000")["data"]
    payloads = [e["payload"] for e in entries]
    return {p["request_id"]: p for p in payloads if p["request_id"] in request_ids}


def test_metadata_is_kept_in_the_audit_log_and_never_forwarded(gw: GatewayProcess, fake: FakeOpenAI) -> None:
    key = new_key(gw)
    metadata = {"team": "search", "ticket": "T-1234"}
    r = chat(gw, key["key"], "what is sluicegate?", metadata=metadata)
    assert r.status_code == 200
    rid = r.headers["x-request-id"]
    assert request_audits(gw, [rid])[rid]["metadata"] == metadata
    upstream_bodies = [q.body for q in fake.requests if q.body and q.body.get("messages")]
    sent = [b for b in upstream_bodies if b["messages"][-1]["content"] == "what is sluicegate?"]
    assert sent and all("metadata" not in b for b in sent)
    # No prompt text without prompt logging.
    assert "sluicegate?" not in json.dumps(request_audits(gw, [rid]))
    # Metadata breaking OpenAI's rules is refused before any upstream call, naming the field.
    bad = chat(gw, key["key"], metadata={"team": 5})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "metadata"


def test_prompt_logging_keeps_forwarded_prompts_redacted_and_bounded(
    upstream: FakeOpenAI, tmp_path: Path, fake: FakeOpenAI
) -> None:
    cfg = {
        **config(upstream.url),
        "metering": {"audit_prompts": True, "audit_prompt_max_chars": 300},
        "dlp": {"request": {"action": "redact", "detectors": ["email"]}},
    }
    with GatewayProcess(cfg, tmp_path) as g:
        key = new_key(g, rpm=3)
        forwarded = chat(g, key["key"], "mail alice@example.com the plan")
        long = chat(g, key["key"], "word " * 200)
        over = [chat(g, key["key"], "refused alice@example.com") for _ in range(2)]
        assert [forwarded.status_code, long.status_code] == [200, 200] and 429 in [o.status_code for o in over]
        refused = next(o for o in over if o.status_code == 429)
        ids = [r.headers["x-request-id"] for r in (forwarded, long, refused)]
        audits = request_audits(g, ids)
        prompt = json.loads(audits[ids[0]]["prompt"])
        # What went upstream, after DLP: the address is redacted in the log too.
        assert prompt == [{"role": "user", "content": "mail [REDACTED:EMAIL] the plan"}]
        cut = audits[ids[1]]["prompt"]
        assert cut.startswith('[{"role":"user","content":"word word') and cut.endswith("characters in all]")
        assert len(cut) < 400
        # A refused request never reached an upstream (nor, here, DLP): no prompt, so nothing DLP would redact.
        assert "prompt" not in audits[ids[2]] and "alice" not in json.dumps(audits)
        env = {k: v for k, v in g.env.items() if k != "SLUICEGATE_CONFIG"}
        verify = subprocess.run([sys.executable, "-m", "sluicegate", "audit", "verify"], env=env,
                                capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
        assert verify.returncode == 0, verify.stdout


@pytest.fixture(scope="module")
def replicas(upstream: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[GatewayProcess]]:
    workdir = tmp_path_factory.mktemp("acct-replicas")
    with database_url("postgres", workdir) as url:
        env = {"SLUICEGATE_DATABASE_URL": url, "SLUICEGATE_REDIS_URL": redis_url()}
        procs = []
        try:
            for i in range(2):
                wd: Path = workdir / f"r{i}"
                wd.mkdir()
                procs.append(GatewayProcess(config(upstream.url), wd, env).start())
            yield procs
        finally:
            for p in procs:
                p.stop()


def test_60_rpm_admits_60_across_two_replicas(replicas: list[GatewayProcess], fake: FakeOpenAI) -> None:
    a, b = replicas
    key = new_key(a, rpm=60)

    async def burst() -> list[int]:
        body = {"model": "metered", "messages": [{"role": "user", "content": "hi"}]}
        headers = {"Authorization": f"Bearer {key['key']}"}
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=120)) as client:
            calls = [client.post(gw.base_url + "/chat/completions", json=body, headers=headers)
                     for gw in (a, b) for _ in range(60)]  # fmt: skip
            return [r.status_code for r in await asyncio.gather(*calls)]

    statuses = asyncio.run(burst())
    assert statuses.count(200) in (60, 61)  # 61 only if the burst straddles a one-second refill
    assert statuses.count(429) == 120 - statuses.count(200)


def test_sigkill_during_load_loses_no_completed_record(upstream: FakeOpenAI, tmp_path: Path) -> None:
    gw = GatewayProcess(config(upstream.url), tmp_path).start()
    key = new_key(gw)
    completed: list[str] = []
    stop = threading.Event()

    def load(stream: bool) -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                rid = "kill-" + uuid.uuid4().hex
                body = {"model": "metered", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}
                headers = {"Authorization": f"Bearer {key['key']}", "x-request-id": rid}
                try:
                    r = client.post(gw.base_url + "/chat/completions", json=body, headers=headers)
                except httpx.HTTPError:
                    continue
                if r.status_code == 200 and (not stream or r.content.endswith(b"data: [DONE]\n\n")):
                    completed.append(rid)

    threads = [threading.Thread(target=load, args=(i % 2 == 0,)) for i in range(8)]
    for t in threads:
        t.start()
    # Kill mid-load once enough responses have completed to make the check meaningful (not after a fixed time,
    # which on a busy machine may complete too few).
    deadline = time.monotonic() + 60
    while len(completed) <= 60 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert gw.proc is not None
    os.kill(gw.proc.pid, signal.SIGKILL)
    stop.set()
    for t in threads:
        t.join()
    gw.proc.wait()
    assert len(completed) > 50
    gw.start()  # the same data directory: recovery is SQLite's own WAL replay
    try:
        got = records(gw, completed)
        missing = [rid for rid in completed if rid not in got]
        assert not missing, f"{len(missing)} of {len(completed)} completed responses have no record"
    finally:
        gw.stop()
