"""A machine without PostgreSQL, Redis or nginx skips the tests that need them, saying why; in CI they fail.

Each case runs one real test of the suite in a child pytest whose service address points at a closed port.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CLOSED = "127.0.0.1:9"  # discard: nothing listens here

CASES = {
    "postgresql": (
        "tests/unit/storage/test_identity_store.py::test_a_group_whose_keys_are_all_revoked_can_be_deleted[postgres]",
        {"SLUICEGATE_TEST_PG": f"postgresql://root@{CLOSED}/test"},
    ),
    "redis": (
        "tests/unit/accounting/test_pricing_and_limits.py::test_gcra_admits_exactly_the_limit_in_a_burst[redis]",
        {"SLUICEGATE_TEST_REDIS": f"redis://{CLOSED}/0"},
    ),
    "nginx": (
        "tests/e2e/test_replicas_nginx.py",
        {"SLUICEGATE_TEST_NGINX": "/nonexistent/nginx"},
    ),
}


def run(ci: bool) -> tuple[subprocess.CompletedProcess[str], str]:
    """One child pytest over one test per service, every service pointing nowhere; (result, its summary line)."""
    child = {k: v for k, v in os.environ.items() if k != "CI"}
    for _, env in CASES.values():
        child.update(env)
    if ci:
        child["CI"] = "true"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rsfE", *(t for t, _ in CASES.values())],
        cwd=ROOT,
        env=child,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    return result, result.stdout.strip().splitlines()[-1]


def test_a_missing_service_skips_with_its_reason_outside_ci() -> None:
    result, summary = run(ci=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.fullmatch(r"(\d+ passed, )?\d+ skipped in .*", summary), summary  # nothing failed or errored
    for service in CASES:
        assert f"needs {service}, which is not available here" in result.stdout


def test_a_missing_service_fails_in_ci() -> None:
    result, summary = run(ci=True)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "skipped" not in summary, summary
    for service in CASES:
        assert f"needs {service}, which is not available here" in result.stdout
    assert "CI=true, so this is a failure" in result.stdout
