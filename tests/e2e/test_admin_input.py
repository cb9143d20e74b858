"""The admin API and CLI on bad input: a 400 naming the field (never a 500), and the audit payload as an object."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from typing import Any

import httpx
import pytest

from tests.support.gateway import GatewayProcess


def admin(gw: GatewayProcess, method: str, path: str, body: Any = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {gw.key}"}
    return httpx.request(method, gw.url + "/admin/v1" + path, json=body, headers=headers, timeout=10)


def cli(gw: GatewayProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sluicegate", *args], env=gw.env, capture_output=True, text=True, timeout=60
    )


def assert_400(r: httpx.Response, param: str) -> None:
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param, r.json()


@pytest.fixture(scope="module")
def group(gateway: GatewayProcess) -> str:
    name = "input-" + uuid.uuid4().hex[:8]
    assert admin(gateway, "POST", "/groups", {"name": name, "models": ["demo"]}).status_code == 201
    return name


@pytest.mark.parametrize("budget", ["NaN", "Infinity", "-Infinity", "sNaN", 1e30, "1e30", -1, 0.0000001, True, []])
def test_a_budget_that_is_no_finite_storable_amount_is_a_400(gateway: GatewayProcess, group: str, budget: Any) -> None:
    assert_400(admin(gateway, "PUT", f"/groups/{group}/limits", {"budget": budget}), "budget")


def test_budget_bounds_and_budget_micro(gateway: GatewayProcess, group: str) -> None:
    assert_400(admin(gateway, "PUT", f"/groups/{group}/limits", {"budget_micro": "NaN"}), "budget_micro")
    assert_400(admin(gateway, "PUT", f"/groups/{group}/limits", {"budget_micro": 2**63}), "budget_micro")
    ok = admin(gateway, "PUT", f"/groups/{group}/limits", {"budget": "9223372036854.775807"})
    assert ok.status_code == 200 and ok.json()["limits"]["budget_micro"] == 2**63 - 1
    ok = admin(gateway, "PUT", f"/groups/{group}/limits", {"budget": "12.5"})
    assert ok.status_code == 200 and ok.json()["limits"]["budget_micro"] == 12_500_000


@pytest.mark.parametrize("limit", ["²", "١٢", "-1", "0", "1.5", "ten", "%20"])
def test_an_audit_limit_that_is_no_whole_number_is_a_400(gateway: GatewayProcess, limit: str) -> None:
    assert_400(admin(gateway, "GET", f"/audit?limit={limit}"), "limit")


def test_audit_kind_is_checked_and_limit_capped(gateway: GatewayProcess) -> None:
    assert_400(admin(gateway, "GET", "/audit?kind=everything"), "kind")
    assert admin(gateway, "GET", "/audit?limit=5000").status_code == 200


@pytest.mark.parametrize(
    ("query", "param"),
    [("since=99999999999d", "since"), ("since=99999999999999", "since"), ("since=²", "since"),
     ("until=99999999999w", "until"), ("since=yesterday", "since")],
)  # fmt: skip
def test_a_usage_window_out_of_range_is_a_400(gateway: GatewayProcess, query: str, param: str) -> None:
    assert_400(admin(gateway, "GET", f"/usage?{query}"), param)


def test_since_accepts_the_epoch_seconds_its_message_offers(gateway: GatewayProcess) -> None:
    week_ago = str(int(time.time()) - 7 * 86400)
    assert admin(gateway, "GET", f"/usage?since={week_ago}&until={int(time.time()) + 60}").status_code == 200
    out = cli(gateway, "usage", "--since", week_ago, "--json")
    assert out.returncode == 0, out.stderr
    assert isinstance(json.loads(out.stdout), list)
    bad = cli(gateway, "usage", "--since", "99999999999d")
    assert bad.returncode == 1 and "'since' is out of range" in bad.stderr and "Traceback" not in bad.stderr


def test_audit_payload_is_an_object_in_the_api_and_the_cli(gateway: GatewayProcess, group: str) -> None:
    assert admin(gateway, "PUT", f"/groups/{group}/limits", {"rpm": 77}).status_code == 200
    deadline = time.monotonic() + 5
    while True:  # admin actions reach the log through the recorder's next group commit
        entries = admin(gateway, "GET", "/audit?kind=admin&limit=100").json()["data"]
        mine = [e for e in entries if e["target"] == group and e["action"] == "group.set_limits"]
        if mine or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert mine and mine[0]["payload"]["rpm"] == 77
    out = cli(gateway, "audit", "list", "--kind", "admin", "--limit", "100", "--json")
    assert out.returncode == 0, out.stderr
    listed = [e for e in json.loads(out.stdout) if e["target"] == group and e["action"] == "group.set_limits"]
    assert listed and listed[0]["payload"]["rpm"] == 77
