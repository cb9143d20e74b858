"""Every model a request can reach passes the key's access check: fallbacks, the context-window fallback and the
targets a failed stream is continued on. A target the key may not use is skipped and recorded, never asked.

One fake upstream serves every deployment; each deployment's upstream model name says which it is (and, with a
``scenario:`` token, how it fails), so the fake's request log shows exactly which models were asked.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from sluicegate.storage.db import create_engine
from sluicegate.storage.usage import UsageStore
from tests.e2e.resilience_support import TIMEOUTS, chats
from tests.fakes.openai import NORMAL_TEXT, FakeOpenAI
from tests.support.gateway import GatewayProcess

PARTIAL = "Hello from"  # what reset_after:3 delivers before the reset: the role chunk and two content chunks
DENIED = {"ok": False, "error_code": "model_access_denied", "status": None, "deployment": "secret"}


def dep(fake: FakeOpenAI, model: str, **extra: Any) -> dict[str, Any]:
    name = model.split()[0]
    return {"provider": "openai", "name": name, "model": model, "api_base": fake.url, "api_key": "sk-up",
            "timeouts": TIMEOUTS, **extra}  # fmt: skip


def config(fake: FakeOpenAI) -> dict[str, Any]:
    failing, cut = dep(fake, "primary scenario:status:500"), dep(fake, "cont scenario:reset_after:3")
    return {
        "models": [
            {"id": "gpt-fallback", "deployments": [failing], "fallbacks": ["secret-model"]},
            {"id": "gpt-fallback-open", "deployments": [failing], "fallbacks": ["secret-model", "gpt-open"]},
            {
                "id": "gpt-small",
                "deployments": [dep(fake, "small scenario:context_length")],
                "context_window_fallback": "secret-model",
            },
            {"id": "gpt-cont", "deployments": [cut], "continue_on_failure": True, "fallbacks": ["secret-model"]},
            {
                "id": "gpt-cont-open",
                "deployments": [cut],
                "continue_on_failure": True,
                "fallbacks": ["secret-model", "gpt-prefill"],
            },
            {"id": "secret-model", "deployments": [dep(fake, "secret", prefill=True)]},
            {"id": "gpt-open", "deployments": [dep(fake, "open")]},
            {"id": "gpt-prefill", "deployments": [dep(fake, "prefill", prefill=True)]},
        ],
        "server": {"tail_grace": 0.5},
        "routing": {"retry": {"max_attempts_per_deployment": 1}, "circuit": {"enabled": False}},
    }


@pytest.fixture(scope="module")
def gw(upstream: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with GatewayProcess(config(upstream), tmp_path_factory.mktemp("fallback-access")) as g:
        yield g


@pytest.fixture(scope="module")
def gpt_key(gw: GatewayProcess) -> str:
    """A key whose group may use ``gpt-*`` and nothing else (so never ``secret-model``)."""
    headers = {"Authorization": f"Bearer {gw.key}"}
    group = "gpt-only-" + uuid.uuid4().hex[:6]
    r = httpx.post(gw.url + "/admin/v1/groups", json={"name": group, "models": ["gpt-*"]}, headers=headers)
    assert r.status_code == 201, r.text
    r = httpx.post(gw.url + "/admin/v1/keys", json={"name": group, "group": group}, headers=headers)
    assert r.status_code == 201, r.text
    return str(r.json()["key"])


def client(gw: GatewayProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)


def ask(gw: GatewayProcess, key: str, model: str, *, stream: bool = False) -> tuple[str, str, str]:
    """(answering model, text, request id) of one request through the openai SDK."""
    rid = "acc-" + uuid.uuid4().hex
    messages: Any = [{"role": "user", "content": "hi"}]
    sdk = client(gw, key)
    if not stream:
        r = sdk.chat.completions.create(model=model, messages=messages, extra_headers={"x-request-id": rid})
        return r.model, r.choices[0].message.content or "", rid
    models, parts = set(), []
    for chunk in sdk.chat.completions.create(
        model=model, messages=messages, stream=True, extra_headers={"x-request-id": rid}
    ):
        models.add(chunk.model)
        parts.extend(c.delta.content or "" for c in chunk.choices)
    (answered,) = models
    return answered, "".join(parts), rid


def attempts(gw: GatewayProcess, request_id: str) -> list[dict[str, Any]]:
    """The attempts of one request's usage row (committed before the response's last byte)."""

    async def fetch() -> list[dict[str, Any]]:
        engine = create_engine(f"sqlite:///{gw.workdir / 'data' / 'sluicegate.db'}")
        try:
            return await UsageStore(engine).by_request_ids([request_id])
        finally:
            await engine.dispose()

    (row,) = asyncio.run(fetch())
    return [{k: a[k] for k in ("deployment", "ok", "error_code", "status")} for a in row["attempts"]]


def asked(fake: FakeOpenAI, deployment: str) -> int:
    return len(chats(fake, deployment))


@pytest.mark.parametrize("stream", [False, True])
def test_a_fallback_the_key_may_not_use_is_skipped_and_recorded(
    gw: GatewayProcess, fake: FakeOpenAI, gpt_key: str, stream: bool
) -> None:
    with pytest.raises(openai.PermissionDeniedError):  # asked directly, the model is refused
        ask(gw, gpt_key, "secret-model", stream=stream)

    with pytest.raises(openai.InternalServerError) as failed:  # the primary's own failure, not secret-model's answer
        ask(gw, gpt_key, "gpt-fallback", stream=stream)
    assert failed.value.response.headers["x-sluicegate-fallbacks"] == "0"
    rid = failed.value.response.headers["x-request-id"]
    assert attempts(gw, rid) == [{"deployment": "primary", "ok": False, "error_code": "upstream_error", "status": 502},
                                 DENIED]  # fmt: skip

    model, text, rid = ask(gw, gpt_key, "gpt-fallback-open", stream=stream)  # the next permitted fallback answers
    assert (model, text) == ("gpt-open", NORMAL_TEXT)
    assert [a["deployment"] for a in attempts(gw, rid)] == ["primary", "secret", "open"]
    assert attempts(gw, rid)[1] == DENIED
    assert asked(fake, "secret") == 0

    # The master key may use every model, so for it the same fallback answers: the config really routes there.
    assert ask(gw, gw.key, "gpt-fallback", stream=stream)[:2] == ("secret-model", NORMAL_TEXT)
    assert asked(fake, "secret") == 1


def test_a_context_window_fallback_the_key_may_not_use_is_skipped(
    gw: GatewayProcess, fake: FakeOpenAI, gpt_key: str
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        ask(gw, gpt_key, "gpt-small")
    assert refused.value.code == "context_length_exceeded"  # the upstream's own 400, as without a fallback
    assert refused.value.response.headers["x-sluicegate-fallbacks"] == "0"
    rid = refused.value.response.headers["x-request-id"]
    assert attempts(gw, rid)[-1] == DENIED
    assert asked(fake, "secret") == 0
    assert ask(gw, gw.key, "gpt-small")[:2] == ("secret-model", NORMAL_TEXT)


def test_a_stream_is_never_continued_on_a_model_the_key_may_not_use(
    gw: GatewayProcess, fake: FakeOpenAI, gpt_key: str
) -> None:
    with pytest.raises(openai.APIError) as cut:  # the stream_error frame, as if no target could continue
        ask(gw, gpt_key, "gpt-cont", stream=True)
    assert "stream interrupted" in cut.value.message
    assert asked(fake, "secret") == 0

    model, text, rid = ask(gw, gpt_key, "gpt-cont-open", stream=True)  # continued on the permitted fallback
    assert (model, text) == ("gpt-cont-open", PARTIAL + NORMAL_TEXT)
    assert [a["deployment"] for a in attempts(gw, rid)] == ["cont", "secret", "prefill"]
    assert attempts(gw, rid)[1] == DENIED
    assert asked(fake, "secret") == 0

    assert ask(gw, gw.key, "gpt-cont", stream=True)[1] == PARTIAL + NORMAL_TEXT
    (continued,) = chats(fake, "secret")
    assert continued.body["messages"][-1] == {"role": "assistant", "content": PARTIAL}
