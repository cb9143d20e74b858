"""Where the shared benchmark kit is: ``--kit DIR``, else ``$SLUICEGATE_BENCH_KIT``; no built-in default.

The kit (mock upstream, ``post.lua`` for wrk, the streaming load client, ``run_bench.py``) lives outside this
repository and its place differs per machine, so a script that needs it stops with a message naming both ways
to give it rather than guessing a path. Standard library only: the harness may run under the kit's own venv.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ENV = "SLUICEGATE_BENCH_KIT"
MARKER = "mock_upstream.py"  # every scenario starts the kit's mock, so its presence says "this is the kit"


def add_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kit",
        default=None,
        metavar="DIR",
        help=f"the shared benchmark kit (mock_upstream.py, post.lua, stream_client.py, run_bench.py); default ${ENV}",
    )


def locate(given: str | None) -> Path:
    """The kit's folder from ``--kit`` or the environment; exits with a clear message when neither names it."""
    raw = given or os.environ.get(ENV, "")
    if not raw:
        sys.exit(
            f"this benchmark needs the shared benchmark kit: pass --kit DIR or set {ENV}=DIR "
            f"(the folder holding {MARKER}, post.lua, stream_client.py and run_bench.py)"
        )
    kit = Path(raw).expanduser().resolve()
    if not (kit / MARKER).is_file():
        source = "--kit" if given else f"${ENV}"
        sys.exit(f"{source} names {kit}, which is not the benchmark kit: it has no {MARKER}")
    return kit
