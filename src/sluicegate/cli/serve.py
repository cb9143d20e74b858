"""``sluicegate serve``: run the gateway under uvicorn, and tune the serving process for it.

Process-wide settings belong here, not in the app, so that a host embedding ``create_app`` keeps its own:
the garbage collector's thresholds and frozen start-up objects, and the SIGTERM handler that drains open
streams before uvicorn's own shutdown ends them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import logging.config
import math
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator
from types import FrameType
from typing import Any

import click

from ..app import Gateway, create_app
from ..config import ConfigError, load_config
from ..config_checks import config_warnings
from ..providers.registry import PROVIDERS
from ..settings import Settings, display_database_url
from .admin import EnvHelpCommand

# The cyclic collector runs when net allocations pass the first number. CPython's 700 is crossed all the time by
# requests in flight (64 of them hold thousands of objects), so it ran ~3,000 times in 30 s of load, promoting
# live request objects into older generations that then had to be walked again: 3-4 % of the gateway's CPU
# under non-streaming load, 9 % (with 140 ms full-collection pauses) while 5,000 streams opened. Requests make
# almost no reference cycles, so at 10,000 it runs ~15 times in the same 30 s; the garbage it may hold
# meanwhile is bounded by those 10,000 objects. Measured with benchmarks/bench_features.py and bench_streams.py
# (docs/benchmarks.md).
GC_THRESHOLDS = (10_000, 10, 10)


def tune_process(gateway: Gateway) -> None:
    """Run once the gateway has started, in each worker process."""
    _install_drain_signal(gateway)
    # Long-lived objects built at start never become garbage: keep the collector off them.
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _install_drain_signal(gateway: Gateway) -> None:
    """On SIGTERM, give open streams ``drain_timeout`` seconds, then end them with their error event.

    uvicorn stops accepting and waits for in-flight requests on its own; we chain its handler.
    """
    loop = asyncio.get_running_loop()
    try:
        previous = signal.getsignal(signal.SIGTERM)
    except ValueError:
        return

    def on_term(signum: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(gateway.streams.begin_drain)
        if callable(previous):
            previous(signum, frame)

    with contextlib.suppress(ValueError):  # not the main thread: the host handles signals
        signal.signal(signal.SIGTERM, on_term)


def serving_app() -> Any:
    """The uvicorn factory of ``serve`` (``--workers`` needs an import string): settings from the environment."""
    return create_app(on_started=tune_process)


@click.command(cls=EnvHelpCommand)
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None, help="YAML config file.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--log-level", default="info", show_default=True)
@click.option(
    "--log-format",
    type=click.Choice(["json", "text", "auto"]),
    default="auto",
    show_default=True,
    help="JSON lines, or one readable line per event; auto: text on a terminal, JSON otherwise.",
)
def serve(config_path: str | None, host: str, port: int, workers: int, log_level: str, log_format: str) -> None:
    """Run the gateway (the built-in demo model when no config is given)."""
    import uvicorn

    from ..observability.logs import log_config, resolve_format

    logging_config = log_config(resolve_format(log_format, sys.stderr.isatty()), log_level)
    logging.config.dictConfig(logging_config)
    log = logging.getLogger("sluicegate.cli")

    config_path = config_path or os.environ.get("SLUICEGATE_CONFIG") or None
    try:
        config = load_config(config_path, providers=PROVIDERS)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    for warning in config_warnings(config):
        log.warning("config: %s", warning)
    if config_path:
        # Workers are separate processes that build the app from the environment.
        os.environ["SLUICEGATE_CONFIG"] = os.path.abspath(config_path)
    else:
        os.environ.pop("SLUICEGATE_CONFIG", None)
    if workers > 1 and not os.environ.get("SLUICEGATE_REDIS_URL"):
        log.warning(
            "--workers %d without SLUICEGATE_REDIS_URL: rate limits and budgets are kept per worker (up to %dx), "
            "and revocations reach other workers only when their key cache expires; see docs/deploy.md",
            workers,
            workers,
        )
    if not os.environ.get("SLUICEGATE_MASTER_KEY"):
        log.warning("SLUICEGATE_MASTER_KEY is not set; every request will be refused with 401")
    database = display_database_url(Settings.from_env().database_url)
    log.info("sluicegate serving %d model(s) on http://%s:%d/v1 (store: %s)", len(config.models), host, port, database)
    if config.console.enabled:
        log.info("admin console: http://%s:%d/ui (log in with the master key)", host, port)
    with _prometheus_multiproc_dir(workers):
        # uvicorn re-raises the SIGTERM it handled once its graceful shutdown is done, after restoring the
        # handler it found; a no-op handler here makes that final re-raise harmless, so a drained exit is 0.
        signal.signal(signal.SIGTERM, lambda signum, frame: None)
        uvicorn.run(
            "sluicegate.cli.serve:serving_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            loop="uvloop",
            # uvicorn's httptools protocol plus our edge limits and enveloped refusals (http/protocol.py).
            http="sluicegate.http.protocol:GatewayHttpProtocol",
            ws="none",
            lifespan="on",
            access_log=False,
            log_level=log_level,
            # uvicorn applies it in every worker process (our own dictConfig above covers only this one).
            log_config=logging_config,
            # Longer than the drain window, so streams are ended by our stream_error frame, not cut by uvicorn.
            timeout_graceful_shutdown=math.ceil(config.server.drain_timeout) + 5,
            # uvicorn kills and restarts a worker that does not answer its supervisor's ping within this time. Its
            # default (5 s) killed workers still starting on a busy machine, again and again, leaving one worker
            # to serve everything; a worker that is up answers in milliseconds whatever the load.
            timeout_worker_healthcheck=30,
            backlog=config.server.backlog,
            timeout_keep_alive=math.ceil(config.server.keepalive_timeout),
            # No proxy header rewriting: the gateway never trusts client-supplied addresses (and it costs ~1%).
            proxy_headers=False,
            server_header=False,
        )


@contextlib.contextmanager
def _prometheus_multiproc_dir(workers: int) -> Iterator[None]:
    """Several workers share their metrics through files in PROMETHEUS_MULTIPROC_DIR, fresh for each start.

    Files left by an earlier run would be added to this run's counters, so an operator's own directory is
    emptied first; without one, a temporary directory is made and removed at exit. The variable must be set
    before the workers import prometheus_client, which reads it once at import.
    """
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        os.makedirs(given, exist_ok=True)
        for name in os.listdir(given):
            if name.endswith(".db"):
                os.unlink(os.path.join(given, name))
        yield
        return
    if workers == 1:
        yield
        return
    path = tempfile.mkdtemp(prefix="sluicegate-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    try:
        yield
    finally:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        shutil.rmtree(path, ignore_errors=True)
