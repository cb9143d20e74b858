"""Continuing a stream after a mid-stream failure on a deployment that accepts an assistant prefill (opt-in)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.resilience_support import (
    FIRST,
    SECOND,
    assert_complete_stream,
    chat,
    chats,
    deployment,
    error_frame,
    post,
)
from tests.fakes.openai import NORMAL_TEXT, FakeOpenAI
from tests.support.gateway import GatewayProcess

PARTIAL = "Hello from"  # what reset_after:3 delivers: the role chunk and two content chunks


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, FakeOpenAI]]:
    with FakeOpenAI() as a, FakeOpenAI() as b, FakeOpenAI(scenario="reject_prefill") as refuser:
        yield {"a": a, "b": b, "refuser": refuser}


@pytest.fixture
def ups(fakes: dict[str, FakeOpenAI]) -> dict[str, FakeOpenAI]:
    for fake in fakes.values():
        fake.reset()
    fakes["a"].scenario = "reset_after:3"
    return fakes


@pytest.fixture(scope="module")
def gw(fakes: dict[str, FakeOpenAI], tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    a = deployment(fakes["a"], "a", weight=FIRST)
    b = deployment(fakes["b"], "b", weight=SECOND, prefill=True)
    refuser = deployment(fakes["refuser"], "refuser", weight=SECOND, prefill=True)
    config: dict[str, Any] = {
        "models": [
            {"id": "cont", "deployments": [a, b], "continue_on_failure": True},
            {"id": "cont-refused", "deployments": [a, refuser], "continue_on_failure": True},
            {"id": "nocont", "deployments": [a, b]},
        ],
        "routing": {"circuit": {"enabled": False}},
    }
    with GatewayProcess(config, tmp_path_factory.mktemp("prefill")) as g:
        yield g


def test_mid_stream_failure_is_continued_with_the_text_already_sent(
    gw: GatewayProcess, ups: dict[str, FakeOpenAI]
) -> None:
    r, _ = post(gw, chat("cont", stream_options={"include_usage": True}))
    assert r.status_code == 200
    # One complete answer: what A sent, then B's continuation; one role chunk, one finish, usage, [DONE].
    chunks = assert_complete_stream(r.content, "cont", PARTIAL + NORMAL_TEXT)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    (sent,) = chats(ups["b"])
    assert sent.body["messages"][-1] == {"role": "assistant", "content": PARTIAL}
    assert sent.body["messages"][:-1] == [{"role": "user", "content": "hello"}]


def test_a_fallback_that_refuses_the_prefill_never_replaces_the_real_failure(
    gw: GatewayProcess, ups: dict[str, FakeOpenAI]
) -> None:
    r, _ = post(gw, chat("cont-refused"))
    assert r.status_code == 200
    assert r.content.endswith(error_frame("upstream stream interrupted"))
    assert b"prefill" not in r.content
    assert len(chats(ups["refuser"])) == 1  # it was asked, refused, and the client got A's failure


def test_without_the_option_the_stream_ends_with_stream_error(gw: GatewayProcess, ups: dict[str, FakeOpenAI]) -> None:
    r, _ = post(gw, chat("nocont"))
    assert r.content.endswith(error_frame("upstream stream interrupted"))
    assert chats(ups["b"]) == []
