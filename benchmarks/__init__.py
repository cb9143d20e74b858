"""Benchmark harnesses for sluicegate (not shipped, not run by CI).

Run each one as a module from the repository's root, e.g. ``.venv/bin/python -m benchmarks.run_gateway_bench``;
the scripts import each other as ``benchmarks.<name>``. Where a script needs the shared benchmark kit (mock
upstream, wrk script, stream client, runner), it takes ``--kit DIR`` or ``$SLUICEGATE_BENCH_KIT`` (``benchmarks.kit``).
See benchmarks/README.md.
"""

from __future__ import annotations

import shlex
import sys


def invocation(module: str) -> str:
    """This run's command line as one to paste again: ``python -m benchmarks.<name> ARGS``."""
    return " ".join(["python", "-m", module, *map(shlex.quote, sys.argv[1:])])
