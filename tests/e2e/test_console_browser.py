"""The console in a real browser: Debian's Chromium, driven by Playwright, against the real gateway process.

The tests run in order on one gateway (the state builds up: requests, a group, a key, its revocation) and write a
screenshot of every page to docs/console/, so the pictures in the docs are always of the current console.
"""

from __future__ import annotations

import csv
import io
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from tests.conftest import TEST_TIMEOUTS
from tests.fakes.openai import FakeOpenAI
from tests.support.console import age_sessions, console_gateway, database
from tests.support.gateway import GatewayProcess

CHROMIUM = os.environ.get("SLUICEGATE_TEST_CHROMIUM", "/usr/bin/chromium")
# Headless, and nothing that reaches for the network on its own (this machine's network is closed).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
SHOTS = Path(__file__).resolve().parents[2] / "docs" / "console"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
LOGIN_LIMIT = 8


def config(url: str) -> dict[str, Any]:
    dep = {"provider": "openai", "model": "up", "api_base": url, "api_key": "sk-up", "timeouts": TEST_TIMEOUTS}
    slow = {**dep, "model": "up scenario:slow_first:40"}
    return {
        "models": [
            {"id": "gpt-test", "deployments": [dep], "price": {"input": 1000, "cached_input": 100, "output": 2000}},
            {"id": "gpt-slow", "deployments": [slow], "price": {"input": 500, "output": 1500}},
        ],
        "routing": {"retry": {"max_attempts_per_deployment": 1}, "circuit": {"enabled": False}},
        "console": {"login_attempts_per_minute": LOGIN_LIMIT},
    }


@pytest.fixture(scope="module")
def gw(upstream: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with console_gateway(config(upstream.url), tmp_path_factory.mktemp("browser")) as g:
        yield g


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: ./scripts/test installs Debian's chromium package"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def context(browser: Browser, gw: GatewayProcess) -> Iterator[BrowserContext]:
    ctx = browser.new_context(base_url=gw.url, viewport=DESKTOP, color_scheme="light")
    ctx.grant_permissions(["clipboard-read", "clipboard-write"], origin=gw.url)
    yield ctx
    ctx.close()


@pytest.fixture(scope="module")
def page(context: BrowserContext) -> Page:
    p = context.new_page()
    p.on("dialog", lambda dialog: dialog.accept())  # the confirm() before revoking
    return p


def shot(page: Page, name: str, **options: Any) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SHOTS / f"{name}.png", full_page=True, **options)


def _key(gw: GatewayProcess, name: str) -> dict[str, Any]:
    r = httpx.get(f"{gw.url}/admin/v1/keys/{name}", headers={"Authorization": f"Bearer {gw.key}"})
    return dict(r.json())


def sdk(gw: GatewayProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0, timeout=20)


def test_log_in_with_the_keyboard_after_a_wrong_key_is_refused(page: Page, gw: GatewayProcess) -> None:
    # Requests made before anyone looks: the charts below must show them.
    with sdk(gw, gw.key) as client:
        for i in range(6):
            client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": f"hello {i}"}])
        for _ in range(2):
            client.chat.completions.create(model="gpt-slow", messages=[{"role": "user", "content": "slowly"}])
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(
                model="gpt-test", messages=[{"role": "user", "content": "scenario:status:500"}]
            )
    page.goto("/ui")
    expect(page).to_have_url(f"{gw.url}/ui/login?next=%2Fui%2Foverview")
    expect(page.locator("#master_key")).to_be_focused()  # autofocus: type, then Enter
    shot(page, "login")
    page.keyboard.type("sk-not-the-master-key")
    page.keyboard.press("Enter")
    expect(page.get_by_role("alert")).to_have_text("That is not the master key.")
    page.locator("#master_key").focus()
    page.keyboard.type(gw.key)
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{gw.url}/ui/overview")
    page.keyboard.press("Tab")
    expect(page.locator(":focus")).to_have_text("Skip to content")
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"


def test_the_overview_charts_the_requests_made_through_the_gateway(
    page: Page, browser: Browser, gw: GatewayProcess
) -> None:
    page.goto("/ui/overview?range=1h")
    expect(page.locator("#t-requests")).to_have_text("9")
    expect(page.locator("#c-requests desc")).to_contain_text("Requests: 9 in this range")
    bars = page.locator("#c-requests rect.bar")
    assert bars.count() >= 1
    assert sum(int(t.split(": ")[1].split(" ")[0]) for t in bars.locator("title").all_text_contents()) == 9
    expect(page.locator(".tile", has_text="Error rate")).to_contain_text("11 %")  # 1 of 9
    assert page.locator("#c-latency path.line").count() == 2 and page.locator("#c-ttft path.line").count() == 2
    expect(page.locator(".tops")).to_contain_text("gpt-slow")
    shot(page, "overview")
    state = page.context.storage_state()
    for name, options in (("overview-dark", {"color_scheme": "dark"}), ("overview-phone", {"viewport": PHONE})):
        other = browser.new_context(base_url=gw.url, storage_state=state, **({"viewport": DESKTOP} | options))
        p = other.new_page()
        p.goto("/ui/overview?range=1h")
        expect(p.locator("#t-requests")).to_have_text("9")
        if name == "overview-phone":  # no sideways scrolling of the page itself on a phone
            assert p.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
        shot(p, name)
        other.close()


def test_create_a_key_use_it_with_the_sdk_then_revoke_it(page: Page, gw: GatewayProcess) -> None:
    page.goto("/ui/groups")
    page.get_by_label("Name").fill("team-a")
    page.get_by_label("Model grants").fill("gpt-*")
    page.get_by_role("button", name="Create group").click()
    expect(page).to_have_url(f"{gw.url}/ui/groups/team-a?done=created")
    expect(page.locator("#grants")).to_contain_text("gpt-test, gpt-slow")  # what the pattern matches
    shot(page, "group")

    page.goto("/ui/keys")
    form = page.locator("form[action='/ui/keys']")
    form.get_by_label("Name").fill("ci-key")
    form.get_by_label("Group").select_option("team-a")
    form.get_by_label("Budget (credits)").fill("20")
    form.get_by_role("button", name="Create key").click()
    secret = page.locator("#secret").input_value()
    assert secret.startswith("sk-")
    page.get_by_role("button", name="Copy").click()
    expect(page.locator("#copied")).to_have_text("Copied.")
    assert page.evaluate("navigator.clipboard.readText()") == secret
    shot(page, "key-created", mask=[page.locator("#secret")])

    with sdk(gw, secret) as client:
        answer = client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content

    # Last use is written in batches every few seconds (never on the request path): wait for it.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not _key(gw, "ci-key")["last_used_at"]:
        time.sleep(0.2)
    page.goto("/ui/keys")
    row = page.locator("tr[data-key='ci-key']")
    expect(row).to_contain_text("active")
    expect(row.locator("time")).not_to_have_text("never")
    expect(row.locator("meter")).to_have_attribute("aria-label", "0.021 of 20 credits spent (total)")
    shot(page, "keys")
    assert secret not in page.content()  # never shown again

    row.get_by_role("link", name="ci-key").click()
    page.get_by_role("button", name="Revoke key").click()  # confirm() is accepted by the page fixture
    expect(page.get_by_role("status")).to_have_text("Key revoked: it is refused from now on.")
    expect(page.locator("h1 .badge")).to_have_text("revoked")
    shot(page, "key")
    with sdk(gw, secret) as client, pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])


def test_the_request_log_filters_and_shows_a_requests_attempts(page: Page) -> None:
    page.goto("/ui/requests")
    page.get_by_label("Status").select_option("error")
    page.get_by_role("button", name="Filter").click()
    rows = page.locator("table.requests tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("upstream_error")
    page.goto("/ui/requests")
    shot(page, "requests")
    page.get_by_label("Key").fill("ci-key")
    page.get_by_role("button", name="Filter").click()
    expect(rows).to_have_count(1)
    rows.first.get_by_role("link").click()
    expect(page.locator("#attempts")).to_contain_text("openai/up")
    expect(page.locator("#prompt-off")).to_contain_text("Prompt logging is off")
    shot(page, "request")


def test_the_audit_chain_verifies_and_filters_admin_actions(page: Page) -> None:
    page.goto("/ui/audit?kind=admin")
    expect(page.locator("#audit-table")).to_contain_text("key.revoke")
    revoke = page.locator("#audit-table tr", has_text="key.revoke")
    expect(revoke).to_contain_text("console:master@127.0.0.1")
    page.get_by_role("button", name="Verify chain").click()
    expect(page.locator("#verify-result")).to_contain_text("The chain is intact")
    shot(page, "audit")


def test_usage_by_model_with_a_csv_export(page: Page) -> None:
    page.goto("/ui/usage?by=model&range=1h")
    table = page.locator("#usage-table")
    # Seven from the master key (one failed), one from ci-key.
    expect(table.locator("tbody tr", has_text="gpt-test").locator("td").first).to_have_text("8")
    expect(page.locator("#c-usage-spend")).to_be_visible()
    shot(page, "usage")
    with page.expect_download() as download:
        page.get_by_role("link", name="CSV").click()
    text = Path(download.value.path()).read_text()
    rows = {r["key"]: r for r in csv.DictReader(io.StringIO(text))}
    assert rows["gpt-test"]["requests"] == "8" and rows["gpt-slow"]["requests"] == "2"


def test_models_and_health(page: Page) -> None:
    page.goto("/ui/models")
    section = page.locator("#model-gpt-test")
    expect(section).to_contain_text("openai/up")
    expect(section.locator(".badge")).to_have_text("closed")
    expect(section).to_contain_text("upstream_error")
    shot(page, "models")


def test_a_forged_csrf_token_is_refused(page: Page, gw: GatewayProcess) -> None:
    page.goto("/ui/groups")
    page.evaluate("document.querySelectorAll('input[name=csrf]').forEach(i => i.value = 'forged')")
    page.get_by_label("Name").fill("never-made")
    page.get_by_role("button", name="Create group").click()
    expect(page.get_by_role("alert")).to_contain_text("nothing was changed")
    r = httpx.get(gw.url + "/admin/v1/groups/never-made", headers={"Authorization": f"Bearer {gw.key}"})
    assert r.status_code == 404


def test_an_expired_session_goes_back_to_the_login_then_to_the_page(page: Page, gw: GatewayProcess) -> None:
    page.goto("/ui/overview")
    age_sessions(database(gw), idle=3600)
    page.get_by_role("link", name="Keys").click()
    expect(page.get_by_role("status")).to_have_text("Your session has ended. Log in again.")
    page.locator("#master_key").fill(gw.key)
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{gw.url}/ui/keys")


def test_guessing_the_master_key_is_cut_off(browser: Browser, gw: GatewayProcess) -> None:
    ctx = browser.new_context(base_url=gw.url, viewport=DESKTOP)
    p = ctx.new_page()
    p.goto("/ui/login")
    for attempt in range(LOGIN_LIMIT + 1):
        p.locator("#master_key").fill(f"guess-{attempt}")
        p.keyboard.press("Enter")
        if "Too many login attempts" in (p.get_by_role("alert").text_content() or ""):
            break
    else:
        pytest.fail(f"still guessing after {LOGIN_LIMIT + 1} attempts")
    p.locator("#master_key").fill(gw.key)
    p.keyboard.press("Enter")
    expect(p.get_by_role("alert")).to_contain_text("Too many login attempts")
    expect(p).to_have_url(f"{gw.url}/ui/login")
    ctx.close()
