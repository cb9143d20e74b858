"""The accounting part of a request, in one process: policy chain, recorder, group commit. No HTTP.

bench_features.py measures accounting through the whole gateway, where a run-to-run spread of ±5 points
hides changes of a few microseconds. This isolates what accounting adds (rate limits with four buckets,
budgets, the usage record and audit entry, the batch write on SQLite) so such a change can be seen: N
concurrent simulated requests run ``before`` → one loop turn → ``after`` through the real policies and
the real store, and the process CPU per request is reported with the chain off and on, alternating.

    .venv/bin/python -m benchmarks.bench_accounting_inprocess            # 64 concurrent, 300 each, 3 pairs
    .venv/bin/python -m benchmarks.bench_accounting_inprocess --pg-url postgresql://USER@HOST:5432/DB
    taskset -c 1 .venv/bin/python -m benchmarks.bench_accounting_inprocess --concurrency 16

In-process: it needs no benchmark kit.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import orjson
import uvloop

from sluicegate.config import ModelConfig
from sluicegate.hooks import Policy, PolicyChain, RequestContext, Sink
from sluicegate.metering.recorder import MeteringSink, UsageRecorder
from sluicegate.policies.budgets import BudgetPolicy, LocalLedger
from sluicegate.policies.ratelimit import LocalLimiter, RateLimitPolicy
from sluicegate.records import Attempt, RequestRecord
from sluicegate.storage.db import create_engine
from sluicegate.storage.migrations import migrate
from sluicegate.storage.usage import UsageStore
from sluicegate.tokens import TokenCounter
from sluicegate.types import Limits, Principal, Usage
from sluicegate.wire.openai_chat.decode import parse_chat_request

# The limits of bench_features.py's accounting variants: never refuse, but every bucket and budget is live.
LIMITS = Limits(rpm=10_000_000, tpm=2_000_000_000, budget_micro=10**15, budget_period="total")
PRINCIPAL = Principal(
    key_id="key_bench", key_prefix="sk-sg-bench", name="bench", group="bench", models=("*",),
    key_limits=LIMITS, group_limits=LIMITS,
)  # fmt: skip
BODY = {"model": "mock-gpt", "messages": [{"role": "user", "content": "hello there, how are you?"}], "max_tokens": 64}
MODEL = {
    "id": "mock-gpt",
    "price": {"input": 1.0, "output": 2.0},
    "deployments": [{"provider": "openai", "model": "mock-gpt", "api_base": "http://127.0.0.1:1/v1"}],
}


async def _no_spend(scope: str, ident: str, start: float) -> int:
    return 0


async def run(accounting: bool, concurrency: int, per_worker: int, pg_url: str | None) -> tuple[float, float]:
    """(process CPU µs per request, requests per commit) for one configuration on a fresh store.

    The store is SQLite in a temporary directory, or a fresh schema of ``pg_url`` (dropped afterwards).
    """
    request = parse_chat_request(orjson.dumps(BODY))
    model = ModelConfig.model_validate(MODEL)
    schema = "sg_bench_inprocess_" + secrets.token_hex(4)
    with tempfile.TemporaryDirectory() as tmp:
        if pg_url:
            subprocess.run(["psql", pg_url, "-v", "ON_ERROR_STOP=1", "-qc", f"CREATE SCHEMA {schema}"], check=True)
            engine = create_engine(f"{pg_url}?search_path={schema}")
        else:
            engine = create_engine(f"sqlite:///{Path(tmp) / 'bench.db'}")
        await migrate(engine)
        store = UsageStore(engine)
        recorder = UsageRecorder(store)
        recorder.start()
        tokens = TokenCounter()
        tokens.count("load the vocabulary before measuring")
        policies: list[Policy] = []
        sinks: list[Sink] = []
        if accounting:
            policies = [
                RateLimitPolicy(LocalLimiter(), tokens),
                BudgetPolicy(LocalLedger(_no_spend), tokens, time.time),
            ]
            sinks = [MeteringSink(recorder)]
        chain = PolicyChain(policies, sinks)

        async def one() -> None:
            ctx = RequestContext("req_" + secrets.token_hex(12), PRINCIPAL, request, model)
            await chain.before(ctx)
            await asyncio.sleep(0)  # the upstream call would be here
            record = RequestRecord(
                ctx.request_id, PRINCIPAL.key_id, PRINCIPAL.key_prefix, PRINCIPAL.group, "mock-gpt", "mock-gpt",
                "openai/mock-gpt", False, time.time(), usage=Usage(prompt_tokens=12, completion_tokens=30),
                attempts=[Attempt("mock-gpt", "openai/mock-gpt", True, latency_ms=1.0)],
            )  # fmt: skip
            record.cost_micro = 72
            await chain.after(ctx, record)

        async def worker(n: int) -> None:
            for _ in range(n):
                await one()

        await asyncio.gather(*(worker(max(1, per_worker // 6)) for _ in range(concurrency)))  # warm-up
        batches, records = recorder.batches, recorder.records
        cpu = time.process_time()
        await asyncio.gather(*(worker(per_worker) for _ in range(concurrency)))
        cpu = time.process_time() - cpu
        per_commit = (recorder.records - records) / max(1, recorder.batches - batches)
        await recorder.close()
        await store.close()
        await engine.dispose()
        if pg_url:
            subprocess.run(["psql", pg_url, "-qc", f"DROP SCHEMA {schema} CASCADE"], check=True, capture_output=True)
    return cpu / (concurrency * per_worker) * 1e6, per_commit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--per-worker", type=int, default=300)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--pg-url", default=None, help="measure on PostgreSQL (a fresh schema) instead of SQLite")
    a = ap.parse_args()
    off: list[float] = []
    on: list[float] = []
    for _ in range(a.pairs):
        for accounting, out in ((False, off), (True, on)):
            us, per_commit = uvloop.run(run(accounting, a.concurrency, a.per_worker, a.pg_url))
            out.append(us)
            label = "on " if accounting else "off"
            print(
                f"accounting {label}: {us:6.1f} µs CPU per request"
                + (f", {per_commit:.1f} per commit" if accounting else "")
            )
    added = statistics.median(on) - statistics.median(off)
    print(f"\nmedian added by accounting: {added:.1f} µs per request ({a.concurrency} concurrent)")


if __name__ == "__main__":
    main()
