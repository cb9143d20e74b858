"""A silent primary fails over when the retry budget leaves room for it, and ``serve`` warns when it does not.

Issue 22.2: at the old defaults the retry budget (30 s) ran out before a silent upstream's first attempt timed out
(connect + headers = 35 s, first_token 60 s), so the fallback was never tried. Here the same ratios are scaled
down to seconds; the defaults themselves are checked in tests/unit/test_config_checks.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.e2e.resilience_support import assert_complete_stream, assert_envelope, chat, chats, counters, post
from tests.fakes.openai import NORMAL_TEXT, FakeOpenAI
from tests.support.gateway import GatewayProcess

TIMEOUTS = {"connect": 0.5, "headers": 1.0, "first_token": 1.5, "idle": 1, "total": 8}


def config(fake: FakeOpenAI, max_retry_time: float) -> dict[str, Any]:
    def dep(model: str) -> dict[str, Any]:
        return {"provider": "openai", "name": model.split()[0], "model": model, "api_base": fake.url,
                "api_key": "sk-up", "timeouts": TIMEOUTS}  # fmt: skip

    return {
        "models": [
            {"id": "silent", "deployments": [dep("primary scenario:silent")], "fallbacks": ["spare"]},
            {"id": "stalled", "deployments": [dep("primary scenario:headers_then_silence")], "fallbacks": ["spare"]},
            {"id": "spare", "deployments": [dep("spare")]},
        ],
        "routing": {"retry": {"max_retry_time": max_retry_time}, "circuit": {"enabled": False}},
    }


@pytest.fixture(scope="module")
def roomy(upstream: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    # first_token + first_token: a full silent first attempt, then a full attempt at the fallback.
    with GatewayProcess(config(upstream, 3.0), tmp_path_factory.mktemp("budget-roomy")) as gw:
        yield gw


@pytest.fixture(scope="module")
def tight(upstream: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    # Shorter than connect + headers, as the old defaults were (30 s < 5 + 30 s).
    with GatewayProcess(config(upstream, 1.2), tmp_path_factory.mktemp("budget-tight")) as gw:
        yield gw


@pytest.mark.parametrize(("model", "timeout"), [("silent", "connect + headers"), ("stalled", "first_token")])
def test_a_silent_primary_fails_over_to_the_fallback(
    roomy: GatewayProcess, fake: FakeOpenAI, model: str, timeout: str
) -> None:
    r, elapsed = post(roomy, chat(model))
    assert r.status_code == 200, r.text
    assert_complete_stream(r.content, "spare", NORMAL_TEXT)
    assert counters(r) == (2, 1)
    assert len(chats(fake, "primary")) == 1 and len(chats(fake, "spare")) == 1
    # The primary was given its full timeout (1.5 s before headers, 1.5 s first_token), then the fallback answered.
    assert 1.4 < elapsed < 3.0, (timeout, elapsed)
    assert "leaves no room for a failover" not in roomy.log()


def test_serve_warns_when_the_budget_leaves_no_room_and_the_fallback_is_then_never_tried(
    tight: GatewayProcess, fake: FakeOpenAI
) -> None:
    log = tight.log()
    assert "model 'silent': routing.retry.max_retry_time (1.2 s) leaves no room for a failover" in log
    assert "Set max_retry_time to at least 3" in log
    r, _ = post(tight, chat("silent"))
    assert_envelope(r, 504, "upstream_timeout")  # what the warning is about: the fallback never gets a chance
    assert counters(r) == (1, 0)
    assert chats(fake, "spare") == []
