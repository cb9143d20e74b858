"""The admin commands find the store ``serve`` uses, from any folder, and say which one they use (issue 24.3)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sluicegate.cli import main
from sluicegate.settings import ENVIRONMENT
from tests.conftest import gateway_config
from tests.fakes.openai import FakeOpenAI
from tests.support.gateway import GatewayProcess

STORE_VARIABLES = ("SLUICEGATE_DATA_DIR", "SLUICEGATE_DATABASE_URL", "XDG_DATA_HOME")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def gw(upstream: FakeOpenAI, home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """``serve`` as a newcomer starts it: no data dir or database named, from its own folder."""
    g = GatewayProcess(gateway_config(upstream.url), tmp_path_factory.mktemp("serve-here"))
    for name in STORE_VARIABLES:
        g.env.pop(name, None)
    g.env["HOME"] = str(home)
    with g.start():
        yield g


def cli(gw: GatewayProcess, cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**{k: v for k, v in gw.env.items() if k != "SLUICEGATE_CONFIG"}, **env}
    return subprocess.run(
        [sys.executable, "-m", "sluicegate", *args],
        env=full_env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_key_created_from_another_folder_works_on_the_running_gateway(
    gw: GatewayProcess, home: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    store = home / ".local" / "share" / "sluicegate" / "sluicegate.db"
    using = f"using sqlite:///{store}"

    made = cli(gw, elsewhere, "groups", "create", "anywhere", "--models", "demo")
    assert made.returncode == 0, made.stderr
    assert made.stderr.splitlines() == [using]
    created = cli(gw, elsewhere, "keys", "create", "--name", "anywhere", "--group", "anywhere")
    assert created.returncode == 0, created.stderr
    assert created.stderr.splitlines() == [using]
    secret = created.stdout.strip().splitlines()[-1]

    r = httpx.get(gw.base_url + "/models", headers={"Authorization": f"Bearer {secret}"})
    assert r.status_code == 200, r.text  # the gateway knows the key: both used the per-user store
    assert [m["id"] for m in r.json()["data"]] == ["demo"]
    assert os.listdir(elsewhere) == []  # no stray ./data store
    assert "(store: sqlite:///" + str(store) + ")" in gw.log()


def test_database_url_option_wins_and_its_password_is_never_printed(
    gw: GatewayProcess, home: Path, tmp_path: Path
) -> None:
    store = home / ".local" / "share" / "sluicegate" / "sluicegate.db"
    listed = cli(gw, tmp_path, "keys", "list", "--database-url", f"sqlite:///{store}", SLUICEGATE_DATA_DIR="/nowhere")
    assert listed.returncode == 0, listed.stderr
    assert listed.stderr.splitlines() == [f"using sqlite:///{store}"]
    assert "anywhere" in listed.stdout

    secret = "pw-s3cret-9f2"
    url = f"postgresql://someone:{secret}@127.0.0.1:1/nothing"  # port 1: refused, so the command fails
    failed = cli(gw, tmp_path, "usage", "--database-url", url)
    assert failed.returncode == 1
    assert failed.stderr.splitlines()[0] == "using postgresql://someone:***@127.0.0.1:1/nothing"
    assert "Error: cannot use the store postgresql://someone:***@127.0.0.1:1/nothing" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert secret not in failed.stderr + failed.stdout


def test_help_lists_every_environment_variable_and_every_command_has_a_description() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "sluicegate", "--help"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    for name, _ in ENVIRONMENT:
        assert name in out
    assert "Resolved here" in out

    def walk(command: object, path: str) -> Iterator[tuple[str, object]]:
        yield path, command
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk(sub, f"{path} {name}")

    undocumented = [path for path, command in walk(main, "sluicegate") if not getattr(command, "help", None)]
    assert undocumented == []
