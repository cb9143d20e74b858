"""``sluicegate groups|keys|usage|audit|migrate``: the admin service through the command line (same code as the API)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import click
from sqlalchemy.exc import SQLAlchemyError

from ..admin import Admin
from ..config import ConfigError, load_config
from ..errors import GatewayError
from ..providers.registry import PROVIDERS
from ..runtime import Runtime
from ..settings import ENVIRONMENT, Settings, display_database_url
from ..storage.db import StoreConfigError

T = TypeVar("T")


_DATABASE_URL = "sluicegate.database_url"


def _remember_database(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value:
        ctx.meta[_DATABASE_URL] = value


def database_option() -> click.Option:
    return click.Option(
        ["--database-url"],
        default=None,
        expose_value=False,
        callback=_remember_database,
        help="The store to use (default: SLUICEGATE_DATABASE_URL, else sqlite:///<data dir>/sluicegate.db).",
    )


def print_environment(formatter: click.HelpFormatter) -> None:
    """The SLUICEGATE_* variables, and the store they resolve to for this user."""
    with formatter.section("Environment"):
        formatter.write_dl(list(ENVIRONMENT))
    settings = Settings.from_env()
    with formatter.section("Resolved here"):
        formatter.write_dl([("data dir", settings.data_dir), ("database", display_database_url(settings.database_url))])


class EnvHelpGroup(click.Group):
    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        print_environment(formatter)


class EnvHelpCommand(click.Command):
    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        print_environment(formatter)


class AdminGroup(EnvHelpGroup):
    """Every admin command takes ``--database-url`` (and says on stderr which store it uses)."""

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        cmd.params.append(database_option())
        super().add_command(cmd, name)


class AdminCommand(EnvHelpCommand):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.append(database_option())


def _settings() -> Settings:
    """The environment's settings, with the command's ``--database-url``; says on stderr which store it uses."""
    settings = Settings.from_env()
    url = click.get_current_context().meta.get(_DATABASE_URL)
    if url:
        settings = dataclasses.replace(settings, database_url=url)
    click.echo(f"using {display_database_url(settings.database_url)}", err=True)
    return settings


@contextlib.asynccontextmanager
async def _admin(settings: Settings) -> AsyncIterator[Admin]:
    try:
        config = load_config(settings.config_path, providers=PROVIDERS)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    runtime = Runtime(settings, config)
    await runtime.open()
    try:
        yield runtime.admin
    finally:
        await runtime.close()


def _run(op: Callable[[Admin], Awaitable[T]]) -> T:
    settings = _settings()

    async def main() -> T:
        async with _admin(settings) as admin:
            return await op(admin)

    try:
        return _with_store(settings, main)
    except GatewayError as exc:
        raise click.ClickException(exc.message) from exc


def _with_store(settings: Settings, main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``main``; a store that cannot be opened is one line naming it (password masked), not a traceback."""
    try:
        return asyncio.run(main())
    except (OSError, SQLAlchemyError, StoreConfigError) as exc:
        shown = display_database_url(settings.database_url)
        detail = f"{type(exc).__name__}: {exc}".splitlines()[0]
        password = _password(settings.database_url)
        if password:
            detail = detail.replace(password, "***")
        raise click.ClickException(f"cannot use the store {shown}: {detail}") from None


def _password(url: str) -> str | None:
    try:
        return urlsplit(url).password
    except ValueError:
        return None


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


@click.group(cls=AdminGroup)
def groups() -> None:
    """Groups and the models they may use."""


@groups.command("create")
@click.argument("name")
@click.option("--models", default="", help="Comma-separated model ids or patterns, e.g. 'gpt-*,claude-*'.")
@json_option
def groups_create(name: str, models: str, as_json: bool) -> None:
    """Create a group and the models its keys may use."""
    group = _run(lambda a: a.create_group(name, [m for m in models.split(",") if m]))
    _emit(group, as_json, lambda: click.echo(f"created group {group['name']}: {','.join(group['models'])}"))


@groups.command("list")
@json_option
def groups_list(as_json: bool) -> None:
    """List the groups and their models."""
    items = _run(lambda a: a.list_groups())
    _emit(items, as_json, lambda: _table([[g["name"], ",".join(g["models"])] for g in items], ["NAME", "MODELS"]))


@groups.command("set-models")
@click.argument("name")
@click.argument("models")
@json_option
def groups_set_models(name: str, models: str, as_json: bool) -> None:
    """Replace a group's models (comma-separated ids or patterns)."""
    group = _run(lambda a: a.set_group_models(name, [m for m in models.split(",") if m]))
    _emit(group, as_json, lambda: click.echo(f"{group['name']}: {','.join(group['models'])}"))


@groups.command("grant")
@click.argument("name")
@click.argument("model")
def groups_grant(name: str, model: str) -> None:
    """Add one model id or pattern to a group."""
    group = _run(lambda a: a.grant(name, model))
    click.echo(f"{group['name']}: {','.join(group['models'])}")


@groups.command("delete")
@click.argument("name")
def groups_delete(name: str) -> None:
    """Delete a group; refused while it has a key that is not revoked (revoked keys go with it)."""
    _run(lambda a: a.delete_group(name))
    click.echo(f"deleted group {name}")


@click.group(cls=AdminGroup)
def keys() -> None:
    """API keys: create (shown once), list, show, revoke, rotate."""


@keys.command("create")
@click.option("--name", required=True)
@click.option("--group", required=True)
@click.option("--models", default=None, help="Narrow the group's models for this key (comma-separated).")
@click.option("--expires", default=None, help="A duration from now (30d, 12h) or epoch seconds.")
@json_option
def keys_create(name: str, group: str, models: str | None, expires: str | None, as_json: bool) -> None:
    """Create a key in a group; the key is printed once, on the last line."""
    narrowing = [m for m in models.split(",") if m] if models else None
    key = _run(lambda a: a.create_key(name, group, narrowing, expires))

    def human() -> None:
        click.echo(f"created key {key['name']} ({key['prefix']}) in group {key['group']}")
        click.echo("The key is shown once; store it now:")
        click.echo(key["key"])

    _emit(key, as_json, human)


@keys.command("list")
@click.option("--group", default=None, help="Only the keys of this group.")
@json_option
def keys_list(group: str | None, as_json: bool) -> None:
    """List keys (never their secrets)."""
    items = _run(lambda a: a.list_keys(group))
    rows = [[k["name"], k["prefix"], k["group"], k["status"], _when(k["last_used_at"])] for k in items]
    _emit(items, as_json, lambda: _table(rows, ["NAME", "PREFIX", "GROUP", "STATUS", "LAST USED"]))


@keys.command("show")
@click.argument("ref")
@json_option
def keys_show(ref: str, as_json: bool) -> None:
    """Show one key, by name or public prefix."""
    key = _run(lambda a: a.show_key(ref))
    _emit(key, as_json, lambda: _show_key(key))


@keys.command("revoke")
@click.argument("ref")
@json_option
def keys_revoke(ref: str, as_json: bool) -> None:
    """Revoke a key (by name or prefix): refused from then on, on every replica."""
    key = _run(lambda a: a.revoke_key(ref))
    _emit(key, as_json, lambda: click.echo(f"revoked key {key['name']} ({key['prefix']})"))


@keys.command("rotate")
@click.argument("ref")
@json_option
def keys_rotate(ref: str, as_json: bool) -> None:
    """Give a key a new secret (printed once); the old one stops working."""
    key = _run(lambda a: a.rotate_key(ref))

    def human() -> None:
        click.echo(f"rotated key {key['name']}: new prefix {key['prefix']}; the old secret no longer works")
        click.echo(key["key"])

    _emit(key, as_json, human)


@keys.command("expire")
@click.argument("ref")
@click.argument("expires")
@json_option
def keys_expire(ref: str, expires: str, as_json: bool) -> None:
    """Set a key's expiry: a duration from now (30d, 12h) or 'never'."""
    key = _run(lambda a: a.set_key_expiry(ref, None if expires == "never" else expires))
    _emit(key, as_json, lambda: click.echo(f"key {key['name']} expires {_when(key['expires_at'])}"))


@click.command(cls=AdminCommand)
def migrate() -> None:
    """Apply pending database migrations (also done at every start)."""
    from ..storage.db import create_engine
    from ..storage.migrations import migrate as apply

    settings = _settings()

    async def main() -> list[str]:
        engine = create_engine(settings.database_url)
        try:
            return await apply(engine)
        finally:
            await engine.dispose()

    applied = _with_store(settings, main)
    click.echo(f"applied migrations: {', '.join(applied)}" if applied else "the database is up to date")
    sys.exit(0)


def _limits_options(f: Callable[..., None]) -> Callable[..., None]:
    for option in reversed(
        [
            click.option("--rpm", type=str, default=None, help="Requests per minute ('none' clears)."),
            click.option("--tpm", type=str, default=None, help="Tokens per minute ('none' clears)."),
            click.option("--budget", type=str, default=None, help="Credit budget ('none' clears)."),
            click.option("--period", type=click.Choice(["total", "day", "month"]), default=None),
        ]
    ):
        f = option(f)
    return f


def _limits_body(rpm: str | None, tpm: str | None, budget: str | None, period: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for name, value in (("rpm", rpm), ("tpm", tpm)):
        if value is not None:
            body[name] = None if value.lower() == "none" else _int(value, name)
    if budget is not None:
        body["budget"] = None if budget.lower() == "none" else budget
    if period is not None:
        body["budget_period"] = period
    if not body:
        raise click.UsageError("give at least one of --rpm, --tpm, --budget, --period")
    return body


def _int(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError as exc:
        raise click.UsageError(f"--{name} must be an integer or 'none'") from exc


def _show_limits(obj: dict[str, Any]) -> None:
    lim = obj["limits"]
    budget = f"{lim['budget']} per {lim['budget_period']}" if lim["budget"] is not None else "-"
    click.echo(f"{obj['name']}: rpm={lim['rpm'] or '-'} tpm={lim['tpm'] or '-'} budget={budget}")


@groups.command("limits")
@click.argument("name")
@_limits_options
@json_option
def groups_limits(
    name: str, rpm: str | None, tpm: str | None, budget: str | None, period: str | None, as_json: bool
) -> None:
    """Set a group's rate limits and credit budget."""
    body = _limits_body(rpm, tpm, budget, period)
    group = _run(lambda a: a.set_group_limits(name, body))
    _emit(group, as_json, lambda: _show_limits(group))


@keys.command("limits")
@click.argument("ref")
@_limits_options
@json_option
def keys_limits(
    ref: str, rpm: str | None, tpm: str | None, budget: str | None, period: str | None, as_json: bool
) -> None:
    """Set a key's rate limits and credit budget."""
    body = _limits_body(rpm, tpm, budget, period)
    key = _run(lambda a: a.set_key_limits(ref, body))
    _emit(key, as_json, lambda: _show_limits(key))


@click.command(cls=AdminCommand)
@click.option("--by", type=click.Choice(["key", "group", "model"]), default="model", show_default=True)
@click.option(
    "--since", default="30d", show_default=True, help="A date (2026-11-01), a time, epoch seconds or a duration (7d)."
)
@click.option("--until", default=None, help="As --since; default: now.")
@json_option
def usage(by: str, since: str, until: str | None, as_json: bool) -> None:
    """Usage and cost totals (daily rollups plus the raw rows not yet rolled up)."""
    rows = _run(lambda a: a.usage_report(by, since, until))
    table = [
        [r[by] or "-", r["requests"], r["errors"], r["prompt_tokens"], r["completion_tokens"], f"{r['cost']:.6f}"]
        for r in rows
    ]
    _emit(rows, as_json, lambda: _table(table, [by.upper(), "REQUESTS", "ERRORS", "PROMPT", "COMPLETION", "COST"]))


@click.group(cls=AdminGroup)
def audit() -> None:
    """The hash-chained audit log."""


@audit.command("verify")
@json_option
def audit_verify(as_json: bool) -> None:
    """Walk the chain; exit 1 if any record was edited, deleted or inserted."""
    result = _run(lambda a: a.verify_audit())
    _emit(
        result,
        as_json,
        lambda: click.echo(
            f"audit log intact: {result['records']} records"
            if result["ok"]
            else f"AUDIT LOG TAMPERED: {result['problem']}"
        ),
    )
    sys.exit(0 if result["ok"] else 1)


@audit.command("list")
@click.option("--limit", default=20, show_default=True)
@click.option("--kind", type=click.Choice(["request", "admin", "dlp"]), default=None)
@json_option
def audit_list(limit: int, kind: str | None, as_json: bool) -> None:
    """The newest audit records."""
    rows = _run(lambda a: a.audit_entries(limit, kind))
    table = [[r["seq"], _when(r["created_at"]), r["kind"], r["actor"], r["action"], r["target"]] for r in rows]
    _emit(rows, as_json, lambda: _table(table, ["SEQ", "WHEN", "KIND", "ACTOR", "ACTION", "TARGET"]))
