"""``sluicegate groups|keys|migrate``: the admin service through the command line (same code as the API)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import click

from .admin import Admin
from .config import ConfigError, load_config
from .errors import GatewayError
from .settings import Settings

T = TypeVar("T")


@contextlib.asynccontextmanager
async def _admin() -> AsyncIterator[Admin]:
    from .app import Gateway

    settings = Settings.from_env()
    try:
        config = load_config(settings.config_path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    gw = Gateway(settings, config)
    await gw.open_store()
    try:
        yield gw.admin
    finally:
        await gw.close_store()


def _run(op: Callable[[Admin], Awaitable[T]]) -> T:
    async def main() -> T:
        async with _admin() as admin:
            return await op(admin)

    try:
        return asyncio.run(main())
    except GatewayError as exc:
        raise click.ClickException(exc.message) from exc


def _when(ts: float | None) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M") if ts else "-"


def _table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _emit(obj: Any, as_json: bool, human: Callable[[], None]) -> None:
    if as_json:
        click.echo(json.dumps(obj, indent=2))
    else:
        human()


def _show_key(k: dict[str, Any]) -> None:
    for field in ("name", "prefix", "group", "status", "models", "expires_at", "created_at", "last_used_at"):
        value = k[field]
        if field.endswith("_at"):
            value = _when(value)
        elif field == "models":
            value = ",".join(value) if value else "(group's)"
        click.echo(f"{field:>13}: {value}")


json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


@click.group()
def groups() -> None:
    """Groups and the models they may use."""


@groups.command("create")
@click.argument("name")
@click.option("--models", default="", help="Comma-separated model ids or patterns, e.g. 'gpt-*,claude-*'.")
@json_option
def groups_create(name: str, models: str, as_json: bool) -> None:
    group = _run(lambda a: a.create_group(name, [m for m in models.split(",") if m]))
    _emit(group, as_json, lambda: click.echo(f"created group {group['name']}: {','.join(group['models'])}"))


@groups.command("list")
@json_option
def groups_list(as_json: bool) -> None:
    items = _run(lambda a: a.list_groups())
    _emit(items, as_json, lambda: _table([[g["name"], ",".join(g["models"])] for g in items], ["NAME", "MODELS"]))


@groups.command("set-models")
@click.argument("name")
@click.argument("models")
@json_option
def groups_set_models(name: str, models: str, as_json: bool) -> None:
    group = _run(lambda a: a.set_group_models(name, [m for m in models.split(",") if m]))
    _emit(group, as_json, lambda: click.echo(f"{group['name']}: {','.join(group['models'])}"))


@groups.command("grant")
@click.argument("name")
@click.argument("model")
def groups_grant(name: str, model: str) -> None:
    group = _run(lambda a: a.grant(name, model))
    click.echo(f"{group['name']}: {','.join(group['models'])}")


@groups.command("delete")
@click.argument("name")
def groups_delete(name: str) -> None:
    _run(lambda a: a.delete_group(name))
    click.echo(f"deleted group {name}")


@click.group()
def keys() -> None:
    """API keys: create (shown once), list, show, revoke, rotate."""


@keys.command("create")
@click.option("--name", required=True)
@click.option("--group", required=True)
@click.option("--models", default=None, help="Narrow the group's models for this key (comma-separated).")
@click.option("--expires", default=None, help="A duration from now, e.g. 30d, 12h.")
@json_option
def keys_create(name: str, group: str, models: str | None, expires: str | None, as_json: bool) -> None:
    narrowing = [m for m in models.split(",") if m] if models else None
    key = _run(lambda a: a.create_key(name, group, narrowing, expires))

    def human() -> None:
        click.echo(f"created key {key['name']} ({key['prefix']}) in group {key['group']}")
        click.echo("The key is shown once; store it now:")
        click.echo(key["key"])

    _emit(key, as_json, human)


@keys.command("list")
@click.option("--group", default=None)
@json_option
def keys_list(group: str | None, as_json: bool) -> None:
    items = _run(lambda a: a.list_keys(group))
    rows = [[k["name"], k["prefix"], k["group"], k["status"], _when(k["last_used_at"])] for k in items]
    _emit(items, as_json, lambda: _table(rows, ["NAME", "PREFIX", "GROUP", "STATUS", "LAST USED"]))


@keys.command("show")
@click.argument("ref")
@json_option
def keys_show(ref: str, as_json: bool) -> None:
    key = _run(lambda a: a.show_key(ref))
    _emit(key, as_json, lambda: _show_key(key))


@keys.command("revoke")
@click.argument("ref")
@json_option
def keys_revoke(ref: str, as_json: bool) -> None:
    key = _run(lambda a: a.revoke_key(ref))
    _emit(key, as_json, lambda: click.echo(f"revoked key {key['name']} ({key['prefix']})"))


@keys.command("rotate")
@click.argument("ref")
@json_option
def keys_rotate(ref: str, as_json: bool) -> None:
    key = _run(lambda a: a.rotate_key(ref))

    def human() -> None:
        click.echo(f"rotated key {key['name']}: new prefix {key['prefix']}; the old secret no longer works")
        click.echo(key["key"])

    _emit(key, as_json, human)


@click.command()
def migrate() -> None:
    """Apply pending database migrations (also done at every start)."""
    from .storage.db import create_engine
    from .storage.migrations import migrate as apply

    async def main() -> list[str]:
        engine = create_engine(Settings.from_env().database_url)
        try:
            return await apply(engine)
        finally:
            await engine.dispose()

    applied = asyncio.run(main())
    click.echo(f"applied migrations: {', '.join(applied)}" if applied else "the database is up to date")
    sys.exit(0)
