"""Shared fixtures: one fake OpenAI upstream and one real gateway process for the end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.openai import FakeOpenAI
from tests.support.gateway import GatewayProcess

# Timeouts are short so failure tests run fast; they are what the tests assert against.
TEST_TIMEOUTS = {"connect": 2, "headers": 5, "first_token": 1.5, "idle": 1.0, "total": 20}


def gateway_config(upstream_url: str) -> dict[str, Any]:
    def openai(model: str, **extra: Any) -> dict[str, Any]:
        return {
            "provider": "openai",
            "model": model,
            "api_base": upstream_url,
            "api_key": "sk-upstream-secret-77aa",
            "timeouts": TEST_TIMEOUTS,
            **extra,
        }

    return {
        "models": [
            {"id": "gpt-test", "deployments": [openai("upstream-gpt")]},
            {"id": "gpt-strict", "deployments": [openai("upstream-gpt", strict=True)]},
            {"id": "demo", "deployments": [{"provider": "demo", "token_delay_ms": 1}]},
        ],
        "server": {"max_body_bytes": 1024 * 1024, "tail_grace": 0.5},
        # The contract tests see one attempt per request; retries and circuits are tested in test_resilience.py.
        "routing": {"retry": {"max_attempts_per_deployment": 1}, "circuit": {"enabled": False}},
    }


@pytest.fixture(scope="session")
def upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture(scope="session")
def gateway(upstream: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    workdir: Path = tmp_path_factory.mktemp("gateway")
    with GatewayProcess(gateway_config(upstream.url), workdir) as gw:
        yield gw


@pytest.fixture
def fake(upstream: FakeOpenAI) -> FakeOpenAI:
    upstream.reset()
    return upstream
