"""``sluicegate serve`` with a task probe, for bench_soak.py only (not a gateway feature, no endpoint).

Runs the real CLI (``sluicegate.cli:main``) unchanged, except that uvicorn is handed a factory that wraps the
gateway's ASGI app: on its first call (the lifespan startup) it starts one extra task on the gateway's own event
loop that appends ``{"t": epoch, "tasks": N}`` to ``$SOAK_TASKS_FILE`` every ``$SOAK_TASKS_INTERVAL`` seconds,
where N is ``len(asyncio.all_tasks())`` minus the probe itself. Single worker only.

    python benchmarks/soak_gateway.py serve --config FILE --port P --workers 1
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

import uvicorn

_run = uvicorn.run


def app_with_task_probe() -> Any:
    from sluicegate.app import app_from_env

    inner = app_from_env()
    path = os.environ["SOAK_TASKS_FILE"]
    interval = float(os.environ.get("SOAK_TASKS_INTERVAL", "5"))
    probe: list[asyncio.Task[None]] = []

    async def sample() -> None:
        while True:
            n = len(asyncio.all_tasks()) - 1
            with open(path, "a") as f:
                f.write(json.dumps({"t": time.time(), "tasks": n}) + "\n")
            await asyncio.sleep(interval)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if not probe:
            probe.append(asyncio.get_running_loop().create_task(sample()))
        await inner(scope, receive, send)

    return app


def _patched_run(target: Any, *args: Any, **kwargs: Any) -> None:
    assert kwargs.get("workers", 1) == 1, "the task probe needs --workers 1"
    if target == "sluicegate.app:app_from_env":
        target = "soak_gateway:app_with_task_probe"
    _run(target, *args, **kwargs)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    uvicorn.run = _patched_run
    from sluicegate.cli import main

    main(sys.argv[1:], prog_name="sluicegate")
