"""DLP end to end: blocked prompts, redacted prompts, answers redacted as they stream, audit without text."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import TEST_TIMEOUTS
from tests.e2e.test_stream_contract import assert_success_shape, text_of
from tests.fakes.openai import FakeOpenAI
from tests.support.gateway import GatewayProcess

CARD = "4111 1111 1111 1111"
AWS = "AKIAIOSFODNN7EXAMPLE"
PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\n"
    "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\n"
    "-----END RSA PRIVATE KEY-----"
)


def config(url: str) -> dict[str, Any]:
    dep = {"provider": "openai", "model": "up", "api_base": url, "api_key": "sk-up", "timeouts": TEST_TIMEOUTS}
    return {
        "models": [{"id": "gpt-dlp", "deployments": [dep]}],
        "server": {"tail_grace": 0.5},
        "routing": {"retry": {"max_attempts_per_deployment": 1}, "circuit": {"enabled": False}},
        "dlp": {
            "request": {"action": "block", "detectors": ["payment_card", "private_key", "aws_access_key"]},
            "response": {"action": "redact"},
        },
    }


@pytest.fixture(scope="module")
def gw(upstream: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with GatewayProcess(config(upstream.url), tmp_path_factory.mktemp("dlp")) as g:
        yield g


def admin(gw: GatewayProcess, method: str, path: str, body: Any = None) -> httpx.Response:
    return httpx.request(method, gw.url + "/admin/v1" + path, json=body, headers={"Authorization": f"Bearer {gw.key}"})


def key_in_group(gw: GatewayProcess, dlp: dict[str, Any] | None = None) -> str:
    group = "dlp-" + uuid.uuid4().hex[:8]
    assert admin(gw, "POST", "/groups", {"name": group, "models": ["*"]}).status_code == 201
    if dlp is not None:
        r = admin(gw, "PUT", f"/groups/{group}/dlp", dlp)
        assert r.status_code == 200, r.text
    r = admin(gw, "POST", "/keys", {"name": "k-" + uuid.uuid4().hex[:8], "group": group})
    return str(r.json()["key"])


def post(gw: GatewayProcess, key: str, content: str, **extra: Any) -> httpx.Response:
    body = {"model": "gpt-dlp", "messages": [{"role": "user", "content": content}], **extra}
    return httpx.post(
        gw.base_url + "/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )


def test_blocked_prompt_is_403_naming_types_not_text(gw: GatewayProcess, fake: FakeOpenAI) -> None:
    client = openai.OpenAI(base_url=gw.base_url, api_key=key_in_group(gw), max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as info:
        client.chat.completions.create(
            model="gpt-dlp", messages=[{"role": "user", "content": f"my card is {CARD} and key {AWS}"}]
        )
    assert info.value.code == "dlp_blocked"
    message = str(info.value.message)
    assert "payment_card" in message and "aws_access_key" in message
    assert CARD not in message and AWS not in message and "4111" not in message
    assert fake.requests == []  # no upstream call


def test_tool_results_and_text_parts_are_scanned(gw: GatewayProcess, fake: FakeOpenAI) -> None:
    key = key_in_group(gw)
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "look at this"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "read", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": PEM},
    ]  # fmt: skip
    r = httpx.post(
        gw.base_url + "/chat/completions",
        json={"model": "gpt-dlp", "messages": messages},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert r.status_code == 403 and "private_key" in r.json()["error"]["message"]


def test_streamed_answer_with_card_and_private_key_arrives_redacted(gw: GatewayProcess, fake: FakeOpenAI) -> None:
    # The group logs prompts instead of blocking, so the echoing upstream answers with the secrets.
    key = key_in_group(gw, {"request": {"action": "log"}})
    r = post(gw, key, f"scenario:echo card {CARD} then {PEM} end", stream=True, stream_options={"include_usage": True})
    assert r.status_code == 200
    chunks = assert_success_shape(r.content, include_usage=True, model="gpt-dlp")
    answer = text_of(chunks)
    assert "[REDACTED:PAYMENT_CARD]" in answer and "[REDACTED:PRIVATE_KEY]" in answer
    assert "4111" not in r.text and "MIIEow" not in r.text and "BEGIN RSA" not in r.text
    # The upstream did receive the prompt (log mode), proving the redaction happened on the way back.
    assert CARD in json.dumps(fake.requests[-1].body)


def test_non_streaming_answer_is_redacted(gw: GatewayProcess, fake: FakeOpenAI) -> None:
    key = key_in_group(gw, {"request": {"action": "log"}})
    r = post(gw, key, f"scenario:echo {AWS}")
    assert r.status_code == 200
    content = r.json()["choices"][0]["message"]["content"]
    assert AWS not in content and "[REDACTED:AWS_ACCESS_KEY]" in content


def test_redact_mode_rewrites_the_prompt_before_forwarding(gw: GatewayProcess, fake: FakeOpenAI) -> None:
    key = key_in_group(gw, {"request": {"action": "redact"}, "response": None})
    r = post(gw, key, f"pay with {CARD} please")
    assert r.status_code == 200
    forwarded = json.dumps(fake.requests[-1].body)
    assert CARD not in forwarded and "[REDACTED:PAYMENT_CARD]" in forwarded


def test_clean_answer_is_not_held_back(gw: GatewayProcess, fake: FakeOpenAI) -> None:
    key = key_in_group(gw)
    body = {"model": "gpt-dlp", "stream": True, "messages": [{"role": "user", "content": "scenario:slow_chunks:300"}]}
    started = time.monotonic()
    first_content_at = None
    with (
        httpx.Client(timeout=10) as client,
        client.stream(
            "POST", gw.base_url + "/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
        ) as r,
    ):
        for line in r.iter_lines():
            if line.startswith("data: {") and '"content":"Hello' in line:
                first_content_at = time.monotonic() - started
                break
    # The whole stream takes ~1.8 s; the first word comes with the first upstream chunk, not at the end.
    assert first_content_at is not None and first_content_at < 0.9


def test_dlp_actions_are_audited_without_the_matched_text(gw: GatewayProcess, fake: FakeOpenAI) -> None:
    key = key_in_group(gw)
    assert post(gw, key, f"card {CARD}").status_code == 403
    deadline = time.monotonic() + 3
    while True:
        entries = admin(gw, "GET", "/audit?kind=dlp&limit=50").json()["data"]
        hits = [e for e in entries if e["target"] == "payment_card" and e["action"] == "dlp.request.block"]
        if hits or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert hits and hits[0]["payload"]["count"] == 1
    # The hashes are left out: 64 hex digits each, over 50 entries, contain "4111" about one run in ten.
    shown = json.dumps([{k: v for k, v in e.items() if k not in ("hash", "prev_hash")} for e in entries])
    assert "4111" not in shown and CARD.replace(" ", "") not in shown


def test_group_override_validation(gw: GatewayProcess) -> None:
    group = "dlpv-" + uuid.uuid4().hex[:8]
    admin(gw, "POST", "/groups", {"name": group, "models": ["*"]})
    bad = admin(gw, "PUT", f"/groups/{group}/dlp", {"request": {"action": "shred"}})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_body"
    unknown = admin(gw, "PUT", f"/groups/{group}/dlp", {"response": {"action": "redact", "detectors": ["nope"]}})
    assert unknown.status_code == 400
    ok = admin(gw, "PUT", f"/groups/{group}/dlp", {"request": None})
    assert ok.status_code == 200 and ok.json()["dlp"] == {"request": None}


def test_dlp_actions_are_counted_in_metrics(gw: GatewayProcess, fake: FakeOpenAI) -> None:
    def blocked_cards() -> float:
        body = httpx.get(gw.url + "/metrics").text
        for line in body.splitlines():
            if (
                line.startswith("sluicegate_dlp_actions_total{")
                and 'detector="payment_card"' in line
                and ('action="block"' in line and 'direction="request"' in line)
            ):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = blocked_cards()
    assert post(gw, key_in_group(gw), f"card {CARD}").status_code == 403
    assert blocked_cards() == before + 1
