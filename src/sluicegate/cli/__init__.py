"""The ``sluicegate`` command (SPEC §9)."""

from __future__ import annotations

import sys

import click

from ..config import ConfigError, load_config
from ..providers.registry import PROVIDERS
from .admin import audit, groups, keys, migrate, usage
from .serve import serve


@click.group()
@click.version_option(package_name="sluicegate")
def main() -> None:
    """sluicegate: an OpenAI-compatible LLM gateway."""


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
    click.echo(f"{path}: ok ({len(config.models)} models, {deployments} deployments)")


main.add_command(serve)
main.add_command(groups)
main.add_command(keys)
main.add_command(migrate)
main.add_command(usage)
main.add_command(audit)
