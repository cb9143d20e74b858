"""The official openai Node SDK (npm ``openai`` v6) as a client of the real gateway, via ``tests/node/sdk_client.mjs``.

Node is a hard requirement of the test suite (``./scripts/test`` installs it): a missing ``node`` or a missing
``tests/node/node_modules`` fails these tests with a message saying so; they are never skipped.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.openai import NORMAL_TEXT, PROMPT_TOKENS, TOOL_CALLS, UNICODE_TEXT, FakeOpenAI
from tests.support.gateway import GatewayProcess

pytestmark = pytest.mark.node

NODE_DIR = Path(__file__).resolve().parent.parent / "node"
SCRIPT = NODE_DIR / "sdk_client.mjs"

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {"name": name, "parameters": {"type": "object", "properties": {}, "additionalProperties": True}},
    }
    for _, name, _ in TOOL_CALLS
]


def node_binary() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("`node` is not on PATH: the Node SDK tests need Node.js 18+ (./scripts/test installs it)")
    if not (NODE_DIR / "node_modules" / "openai" / "package.json").exists():
        pytest.fail(f"the openai npm package is not installed: run `npm ci` in {NODE_DIR}")
    return node


def run_node(gw: GatewayProcess, mode: str, scenario: str = "normal", **spec: Any) -> dict[str, Any]:
    payload = {"baseURL": gw.base_url, "apiKey": gw.key, "model": "gpt-test", "scenario": scenario, "mode": mode}
    payload.update(spec)
    proc = subprocess.run(
        [node_binary(), str(SCRIPT)],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        cwd=NODE_DIR,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, f"node exited {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    lines = proc.stdout.strip().splitlines()
    assert lines, f"no output from node; stderr: {proc.stderr}"
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def assert_ok(result: dict[str, Any]) -> None:
    assert result["ok"] and result["error"] is None, result["error"]


@pytest.mark.parametrize("mode", ["stream", "usage"])
def test_stream_text_finish_and_usage(gateway: GatewayProcess, fake: FakeOpenAI, mode: str) -> None:
    result = run_node(gateway, mode)
    assert_ok(result)
    assert result["text"] == NORMAL_TEXT
    assert result["finishReasons"] == ["stop"]
    assert result["roles"] == ["assistant"]
    assert len(result["ids"]) == 1 and result["ids"][0].startswith("chatcmpl-")
    assert result["models"] == ["gpt-test"]
    if mode == "usage":
        assert result["usageChunks"] == 1
        assert result["usage"]["prompt_tokens"] == PROMPT_TOKENS and result["usage"]["completion_tokens"] == 5
    else:
        assert result["usageChunks"] == 0 and result["usage"] is None


def test_stream_non_ascii_split_inside_characters(gateway: GatewayProcess, fake: FakeOpenAI) -> None:
    result = run_node(gateway, "stream", "split:1")
    assert_ok(result)
    assert result["text"] == UNICODE_TEXT
    assert result["finishReasons"] == ["stop"]


def test_nonstream(gateway: GatewayProcess, fake: FakeOpenAI) -> None:
    result = run_node(gateway, "nonstream")
    assert_ok(result)
    assert result["text"] == NORMAL_TEXT
    assert result["finishReasons"] == ["stop"]
    assert result["ids"][0].startswith("chatcmpl-") and result["models"] == ["gpt-test"]
    assert result["usage"]["total_tokens"] == PROMPT_TOKENS + 5


def test_demo_model_streams(gateway: GatewayProcess) -> None:
    result = run_node(gateway, "usage", model="demo", messages=[{"role": "user", "content": "node demo"}])
    assert_ok(result)
    assert "node demo" in result["text"]
    assert result["finishReasons"] == ["stop"] and result["usageChunks"] == 1
    assert result["models"] == ["demo"]


@pytest.mark.parametrize("include_usage", [False, True])
def test_helper_assembles_two_parallel_tool_calls(
    gateway: GatewayProcess, fake: FakeOpenAI, include_usage: bool
) -> None:
    result = run_node(gateway, "helper_tools", "tool_calls", tools=TOOLS, includeUsage=include_usage)
    assert_ok(result)
    assert result["finishReasons"] == ["tool_calls"]
    assert not result["finalMessage"]["content"]
    assert result["finalMessage"]["role"] == "assistant"
    calls = result["toolCalls"]
    assert calls is not None and len(calls) == 2
    for call, (call_id, name, arguments) in zip(calls, TOOL_CALLS, strict=True):
        assert call["id"] == call_id and call["type"] == "function"
        assert call["function"]["name"] == name
        assert json.loads(call["function"]["arguments"]) == json.loads(arguments)
    assert (result["usage"] is not None) == include_usage


@pytest.mark.parametrize("scenario", ["reset_after:3", "inband_error_after:3", "stall_after:3"])
@pytest.mark.parametrize("mode", ["stream", "helper_tools"])
def test_mid_stream_failure_throws_api_error(
    gateway: GatewayProcess, fake: FakeOpenAI, scenario: str, mode: str
) -> None:
    result = run_node(gateway, mode, scenario)
    err = result["error"]
    assert err is not None, result
    assert err["isAPIError"] and err["name"] == "APIError", err
    assert err["code"] == "stream_error" and err["type"] == "server_error", err
    assert result["chunks"] >= 2 and result["text"]  # role and content arrived before the failure
    assert result["finishReasons"] == []


@pytest.mark.parametrize("mode", ["stream", "nonstream"])
def test_pre_stream_429_throws_rate_limit_error(gateway: GatewayProcess, fake: FakeOpenAI, mode: str) -> None:
    result = run_node(gateway, mode, "status:429")
    err = result["error"]
    assert err is not None and err["name"] == "RateLimitError" and err["status"] == 429, result
    assert len([r for r in fake.requests if r.scenario == "status:429"]) == 1  # maxRetries: 0, and no gateway retry


@pytest.mark.parametrize(
    ("spec", "name", "status", "code"),
    [
        ({"model": "no-such-model"}, "NotFoundError", 404, "model_not_found"),
        ({"apiKey": "sk-wrong"}, "AuthenticationError", 401, "invalid_api_key"),
        ({"scenario": "context_length"}, "BadRequestError", 400, "context_length_exceeded"),
    ],
)
def test_pre_stream_errors_map_to_sdk_classes(
    gateway: GatewayProcess, fake: FakeOpenAI, spec: dict[str, Any], name: str, status: int, code: str
) -> None:
    result = run_node(gateway, "stream", **spec)
    err = result["error"]
    assert err is not None and err["name"] == name and err["status"] == status and err["code"] == code, result
