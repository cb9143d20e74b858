"""The ``sluicegate`` command (SPEC §9)."""

from __future__ import annotations

import math
import os
import sys

import click

from .cli_admin import groups, keys, migrate
from .config import ConfigError, load_config


@click.group()
@click.version_option(package_name="sluicegate")
def main() -> None:
    """sluicegate: an OpenAI-compatible LLM gateway."""


@main.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None, help="YAML config file.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--log-level", default="info", show_default=True)
def serve(config_path: str | None, host: str, port: int, workers: int, log_level: str) -> None:
    """Run the gateway (the built-in demo model when no config is given)."""
    import uvicorn

    config_path = config_path or os.environ.get("SLUICEGATE_CONFIG") or None
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    if config_path:
        # Workers are separate processes that build the app from the environment.
        os.environ["SLUICEGATE_CONFIG"] = os.path.abspath(config_path)
    else:
        os.environ.pop("SLUICEGATE_CONFIG", None)
    if not os.environ.get("SLUICEGATE_MASTER_KEY"):
        click.echo("warning: SLUICEGATE_MASTER_KEY is not set; every request will be refused with 401", err=True)
    click.echo(f"sluicegate serving {len(config.models)} model(s) on http://{host}:{port}/v1", err=True)
    uvicorn.run(
        "sluicegate.app:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level=log_level,
        # Longer than the drain window, so streams are ended by our stream_error frame, not cut by uvicorn.
        timeout_graceful_shutdown=math.ceil(config.server.drain_timeout) + 5,
    )


@main.command("check-config")
@click.argument("path", type=click.Path(dir_okay=False))
def check_config(path: str) -> None:
    """Validate a config file without starting; exit 1 and name each problem if it is invalid."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        click.echo(f"{path}: invalid", err=True)
        for problem in exc.problems:
            click.echo(f"  {problem}", err=True)
        sys.exit(1)
    deployments = sum(len(m.deployments) for m in config.models)
    click.echo(f"{path}: ok ({len(config.models)} models, {deployments} deployments)")


main.add_command(groups)
main.add_command(keys)
main.add_command(migrate)
