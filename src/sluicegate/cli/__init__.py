"""The ``sluicegate`` command (SPEC §9)."""

from __future__ import annotations

import sys

import click

from ..config import ConfigError, load_config
from ..config_checks import config_warnings
from ..providers.registry import PROVIDERS
from .admin import EnvHelpGroup, audit, groups, keys, migrate, usage
from .serve import serve


@click.group(cls=EnvHelpGroup)
@click.version_option(package_name="sluicegate")
def main() -> None:
    """sluicegate: an OpenAI-compatible LLM gateway.

    `serve` and the admin commands find the same store from any folder: SLUICEGATE_DATABASE_URL if set,
    else sluicegate.db in SLUICEGATE_DATA_DIR, else in the per-user data directory shown below.
    """


@main.command("check-config")
@click.argument("path", type=click.Path(dir_okay=False))
def check_config(path: str) -> None:
    """Validate a config file without starting; exit 1 and name each problem if it is invalid."""
    try:
        config = load_config(path, providers=PROVIDERS)
    except ConfigError as exc:
        click.echo(f"{path}: invalid", err=True)
        for problem in exc.problems:
            click.echo(f"  {problem}", err=True)
        sys.exit(1)
    deployments = sum(len(m.deployments) for m in config.models)
    warnings = config_warnings(config)
    summary = f", {len(warnings)} warning(s)" if warnings else ""
    click.echo(f"{path}: ok ({len(config.models)} models, {deployments} deployments){summary}")
    for warning in warnings:
        click.echo(f"  warning: {warning}", err=True)


main.add_command(serve)
main.add_command(groups)
main.add_command(keys)
main.add_command(migrate)
main.add_command(usage)
main.add_command(audit)
