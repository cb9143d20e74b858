"""Config consistency warnings: a retry budget that leaves no room for a failover after a silent first attempt."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from sluicegate.config import GatewayConfig, RetryConfig, Timeouts
from sluicegate.config_checks import config_warnings, retry_budget_warnings


def config(retry: dict[str, Any] | None = None, **first_tokens: float) -> GatewayConfig:
    """``main`` (one deployment per first_token given, default timeouts otherwise) falling back to ``spare``."""
    deployments = [{"provider": "demo", "timeouts": {"first_token": t}} for t in first_tokens.values()] or [
        {"provider": "demo"}
    ]
    return GatewayConfig.model_validate(
        {
            "models": [
                {"id": "main", "deployments": deployments, "fallbacks": ["spare"]},
                {"id": "spare", "deployments": [{"provider": "demo"}]},
            ],
            "routing": {"retry": retry or {}},
        }
    )


def test_the_defaults_leave_room_for_a_failover_after_a_silent_first_attempt() -> None:
    # Issue 22.2: the budget was 30 s while a silent stream's attempt lasts up to first_token (60 s).
    assert RetryConfig().max_retry_time >= 2 * Timeouts().first_token
    assert RetryConfig().max_retry_time >= 2 * (Timeouts().connect + Timeouts().headers)
    assert config_warnings(config()) == []


def test_a_budget_shorter_than_a_first_attempt_plus_a_failover_is_named() -> None:
    (warning,) = retry_budget_warnings(config({"max_retry_time": 30}))
    assert warning.startswith("model 'main': routing.retry.max_retry_time (30 s)")
    assert "at least 120" in warning
    # The longest first attempt and the longest that may follow it: 90 + max(20, 60) = 150.
    (warning,) = retry_budget_warnings(config({"max_retry_time": 149}, a=90, b=20))
    assert "at least 150" in warning
    assert retry_budget_warnings(config({"max_retry_time": 150}, a=90, b=20)) == []


def test_a_model_with_nothing_to_fail_over_to_needs_no_room() -> None:
    lone = GatewayConfig.model_validate(
        {"models": [{"id": "solo", "deployments": [{"provider": "demo"}]}], "routing": {"retry": {"max_retry_time": 1}}}
    )
    assert config_warnings(lone) == []


def test_check_config_prints_the_warning_and_still_exits_0(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        "models:\n"
        "  - {id: main, deployments: [{provider: demo}], fallbacks: [spare]}\n"
        "  - {id: spare, deployments: [{provider: demo}]}\n"
        "routing: {retry: {max_retry_time: 30}}\n",
        encoding="utf-8",
    )
    result = subprocess.run(
        [sys.executable, "-m", "sluicegate", "check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{path}: ok (2 models, 2 deployments), 1 warning(s)"
    assert "warning: model 'main': routing.retry.max_retry_time (30 s)" in result.stderr
