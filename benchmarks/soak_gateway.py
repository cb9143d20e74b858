"""``sluicegate serve`` with a task probe, for bench_soak.py only (not a gateway feature, no endpoint).

Runs the real CLI (``sluicegate.cli:main``) unchanged, except that uvicorn is handed a factory that wraps the
factory ``serve`` names (whatever its import string, so a rename in the CLI cannot silently drop the probe):
on its first call (the lifespan startup) it starts one extra task on the gateway's own event
loop that appends ``{"t": epoch, "tasks": N}`` to ``$SOAK_TASKS_FILE`` every ``$SOAK_TASKS_INTERVAL`` seconds,
where N is ``len(asyncio.all_tasks())`` minus the probe itself. Single worker only. ``$SOAK_FULL_GC_EVERY``
(diagnostics, off by default): every that many samples, also a full ``gc.collect()`` and what it freed.

    python -m benchmarks.soak_gateway serve --config FILE --port P --workers 1   # from the repository's root
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import sys
import time
from typing import Any

import uvicorn

_run = uvicorn.run


def app_with_task_probe() -> Any:
    from uvicorn.importer import import_from_string

    inner = import_from_string(os.environ["SOAK_INNER_FACTORY"])()
    path = os.environ["SOAK_TASKS_FILE"]
    interval = float(os.environ.get("SOAK_TASKS_INTERVAL", "5"))
    probe: list[asyncio.Task[None]] = []

    # Diagnostics: SOAK_FULL_GC_EVERY=N runs a full collection every N samples and records what it freed,
    # which tells uncollected cyclic garbage (RSS flat once collected) from a leak (RSS grows regardless).
    full_gc_every = int(os.environ.get("SOAK_FULL_GC_EVERY", "0"))

    async def sample() -> None:
        i = 0
        while True:
            row: dict[str, Any] = {"t": time.time(), "tasks": len(asyncio.all_tasks()) - 1}
            i += 1
            if full_gc_every and i % full_gc_every == 0:
                row["gc_objects"] = len(gc.get_objects())
                row["gc_freed"] = gc.collect()
                row["gc_collections"] = [g["collections"] for g in gc.get_stats()]
            with open(path, "a") as f:
                f.write(json.dumps(row) + "\n")
            await asyncio.sleep(interval)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if not probe:
            probe.append(asyncio.get_running_loop().create_task(sample()))
        await inner(scope, receive, send)

    return app


def _patched_run(target: Any, *args: Any, **kwargs: Any) -> None:
    assert kwargs.get("workers", 1) == 1, "the task probe needs --workers 1"
    assert isinstance(target, str) and kwargs.get("factory"), f"serve no longer runs a factory by name: {target!r}"
    # Through the environment: uvicorn imports this file again as benchmarks.soak_gateway, not as __main__.
    os.environ["SOAK_INNER_FACTORY"] = target
    _run("benchmarks.soak_gateway:app_with_task_probe", *args, **kwargs)


if __name__ == "__main__":
    uvicorn.run = _patched_run
    from sluicegate.cli import main

    main(sys.argv[1:], prog_name="sluicegate")
