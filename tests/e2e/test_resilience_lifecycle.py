"""Resilience over time: the circuit breaker, client disconnects during retries, keep-alive, graceful shutdown.

Each group has its own gateway process, because each needs state or settings the others must not see: an
open circuit, slow retries with keep-alive comments, a process that is sent SIGTERM.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.resilience_support import (
    FIRST,
    SECOND,
    TIMEOUTS,
    abandon,
    assert_complete_stream,
    assert_envelope,
    chat,
    chats,
    chunks_of,
    counters,
    deployment,
    error_frame,
    post,
    text_of,
)
from tests.fakes.openai import NORMAL_TEXT, FakeOpenAI
from tests.support.gateway import GatewayProcess

# -- circuit breaker -----------------------------------------------------------------------------------------

COOLDOWN = 1.0
THRESHOLD = 3


@pytest.fixture(scope="module")
def cb_ups() -> Iterator[tuple[FakeOpenAI, FakeOpenAI]]:
    with FakeOpenAI() as primary, FakeOpenAI() as secondary:
        yield primary, secondary


@pytest.fixture(scope="module")
def cb_gw(cb_ups: tuple[FakeOpenAI, FakeOpenAI], tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    primary, secondary = cb_ups
    config: dict[str, Any] = {
        "models": [
            {
                "id": "cb",
                "deployments": [
                    deployment(primary, "cb-primary", weight=FIRST),
                    deployment(secondary, "cb-secondary", weight=SECOND),
                ],
            },
            {"id": "cb-single", "deployments": [deployment(primary, "cb-single-up")]},
            {"id": "cb-ctx", "deployments": [deployment(secondary, "cb-ctx-up")]},
        ],
        "routing": {
            "retry": {"max_attempts_per_deployment": 1, "backoff_base": 0.05, "max_retry_time": 8},
            "circuit": {"enabled": True, "failure_threshold": THRESHOLD, "window": 30, "cooldown": COOLDOWN},
        },
    }
    workdir: Path = tmp_path_factory.mktemp("resilience-cb")
    with GatewayProcess(config, workdir) as process:
        yield process


@pytest.fixture
def cb_ups_clean(cb_ups: tuple[FakeOpenAI, FakeOpenAI]) -> Iterator[tuple[FakeOpenAI, FakeOpenAI]]:
    for fake in cb_ups:
        fake.scenario = None
    yield cb_ups
    for fake in cb_ups:
        fake.scenario = None
        assert fake.errors == []


def test_circuit_opens_probes_once_when_half_open_and_closes_on_success(
    cb_gw: GatewayProcess, cb_ups_clean: tuple[FakeOpenAI, FakeOpenAI]
) -> None:
    primary, secondary = cb_ups_clean

    def ask() -> tuple[httpx.Response, float]:
        r, elapsed = post(cb_gw, chat("cb"))
        assert r.status_code == 200, r.text
        assert_complete_stream(r.content, "cb", NORMAL_TEXT)
        return r, elapsed

    # 1. The primary fails THRESHOLD times: every request is still answered, by the secondary.
    primary.scenario = "status:503"
    for n in range(1, THRESHOLD + 1):
        r, _ = ask()
        assert counters(r) == (2, 0)
        assert len(chats(primary, "cb-primary")) == n
    opened_at = time.monotonic()

    # 2. Open: requests go straight to the secondary; the primary sees nothing new.
    for _ in range(3):
        r, elapsed = ask()
        assert counters(r) == (1, 0)
        assert elapsed < 0.5
    assert len(chats(primary, "cb-primary")) == THRESHOLD
    assert len(chats(secondary, "cb-secondary")) == THRESHOLD + 3

    # 3. Half-open after the cooldown: exactly one probe reaches the primary. It hangs (silent), so requests
    #    arriving meanwhile must not become extra probes.
    primary.scenario = "silent"
    # The cooldown is a span of the gateway's clock with no event to wait on: sleep past it.
    time.sleep(max(0.0, opened_at + COOLDOWN + 0.1 - time.monotonic()))
    with ThreadPoolExecutor(4) as pool:
        probe = pool.submit(ask)
        primary.wait_for(lambda _: len(chats(primary, "cb-primary")) == THRESHOLD + 1, timeout=2)
        others = [pool.submit(ask) for _ in range(3)]
        for f in others:
            r, elapsed = f.result()
            assert counters(r) == (1, 0)
            assert elapsed < 0.8  # did not queue behind the probe
        r, elapsed = probe.result()
        assert counters(r) == (2, 0)  # the probe timed out on first_token, the secondary answered
        assert 0.9 <= elapsed < 2.5
    assert len(chats(primary, "cb-primary")) == THRESHOLD + 1
    reopened_at = time.monotonic()

    # 4. The failed probe re-opened the circuit for a full cooldown.
    r, _ = ask()
    assert counters(r) == (1, 0)
    assert len(chats(primary, "cb-primary")) == THRESHOLD + 1

    # 5. The primary recovers; after the cooldown the probe succeeds, the circuit closes, traffic returns.
    primary.scenario = None
    time.sleep(max(0.0, reopened_at + COOLDOWN + 0.1 - time.monotonic()))
    before_secondary = len(chats(secondary, "cb-secondary"))
    for n in range(1, 5):
        r, _ = ask()
        assert counters(r) == (1, 0)
        assert len(chats(primary, "cb-primary")) == THRESHOLD + 1 + n
    assert len(chats(secondary, "cb-secondary")) == before_secondary


def test_open_circuit_on_the_only_deployment_is_a_503_without_an_upstream_call(
    cb_gw: GatewayProcess, cb_ups_clean: tuple[FakeOpenAI, FakeOpenAI]
) -> None:
    primary, _ = cb_ups_clean
    for n in range(1, THRESHOLD + 1):
        r, _ = post(cb_gw, chat("cb-single", "scenario:status:503"))
        assert_envelope(r, 502, "upstream_error")
        assert len(chats(primary, "cb-single-up")) == n
    r, elapsed = post(cb_gw, chat("cb-single", "scenario:status:503"), request_id="res-cb-open")
    assert_envelope(r, 503, "upstream_unavailable")
    assert r.headers["x-request-id"] == "res-cb-open"
    assert counters(r) == (0, 0)
    assert elapsed < 0.5
    assert len(chats(primary, "cb-single-up")) == THRESHOLD


def test_requests_that_would_fail_again_do_not_open_the_circuit(
    cb_gw: GatewayProcess, cb_ups_clean: tuple[FakeOpenAI, FakeOpenAI]
) -> None:
    _, secondary = cb_ups_clean
    for n in range(1, THRESHOLD + 3):
        r, _ = post(cb_gw, chat("cb-ctx", "scenario:context_length"))
        assert_envelope(r, 400, "context_length_exceeded")
        assert len(chats(secondary, "cb-ctx-up")) == n  # every one still reaches the upstream
    r, _ = post(cb_gw, chat("cb-ctx"))
    assert_complete_stream(r.content, "cb-ctx", NORMAL_TEXT)


# -- slow retries: client disconnects, keep-alive ------------------------------------------------------------

PATIENT_RETRY = {
    "max_attempts_per_deployment": 10,
    "backoff_base": 0.3,
    "backoff_max": 0.6,
    "retry_after_cap": 2.0,
    "max_retry_time": 3.0,
}
KA_TIMEOUTS = {**TIMEOUTS, "first_token": 1.2}


@pytest.fixture(scope="module")
def slow_up() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture(scope="module")
def slow_gw(slow_up: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    config: dict[str, Any] = {
        "models": [
            {"id": "patient", "deployments": [deployment(slow_up, "patient-up")]},
            {
                "id": "ka",
                "deployments": [
                    deployment(slow_up, "ka-1", weight=FIRST, timeouts=KA_TIMEOUTS),
                    deployment(slow_up, "ka-2", weight=SECOND, timeouts=KA_TIMEOUTS),
                ],
            },
            {
                "id": "ka-mixed",
                "deployments": [
                    deployment(slow_up, "kam-1 scenario:silent", weight=FIRST, timeouts=KA_TIMEOUTS),
                    deployment(slow_up, "kam-2", weight=SECOND, timeouts=KA_TIMEOUTS),
                ],
            },
        ],
        "server": {"keepalive_after": 0.2, "keepalive_interval": 0.2, "tail_grace": 0.5},
        "routing": {"retry": PATIENT_RETRY, "circuit": {"enabled": False}},
    }
    workdir: Path = tmp_path_factory.mktemp("resilience-slow")
    with GatewayProcess(config, workdir) as process:
        yield process


@pytest.fixture
def slow(slow_up: FakeOpenAI) -> Iterator[FakeOpenAI]:
    slow_up.scenario = None
    slow_up.reset()
    yield slow_up
    assert slow_up.errors == []


def test_retries_are_bounded_by_max_retry_time(slow_gw: GatewayProcess, slow: FakeOpenAI) -> None:
    r, elapsed = post(slow_gw, chat("patient", "scenario:status:500", stream=False))
    assert_envelope(r, 502, "upstream_error")
    attempts, _ = counters(r)
    assert attempts == len(chats(slow))
    assert 2 <= attempts <= PATIENT_RETRY["max_attempts_per_deployment"]
    assert elapsed < PATIENT_RETRY["max_retry_time"] + 1


def answered(fake: FakeOpenAI, status: int) -> bool:
    """The fake has finished writing a response with ``status``."""
    return any(r.status == status and r.finished_at is not None for r in chats(fake))


@pytest.mark.parametrize("stream", [False, True])
def test_client_leaving_during_a_retry_after_wait_stops_the_retries(
    slow_gw: GatewayProcess, slow: FakeOpenAI, stream: bool
) -> None:
    rid = f"res-leave-retry-after-{uuid.uuid4().hex[:8]}"
    body = chat("patient", "scenario:retry_after:1.5", stream=stream)
    # The client leaves 0.2 s into the gateway's 1.5 s Retry-After wait (the margin lets the gateway read the 429).
    closed_at = abandon(slow_gw, body, lambda: answered(slow, 429), after=0.2, request_id=rid)
    # The request line is written once the gateway is done with the request: a retry it did not stop would have
    # reached the upstream by then (1.5 s after the 429, well inside max_retry_time).
    line = slow_gw.request_line(rid, timeout=15)
    [only] = chats(slow)
    assert only.status == 429 and only.received_at < closed_at
    assert line["outcome"] == "cancelled" and len(line["attempts"]) == 1


@pytest.mark.parametrize("stream", [False, True])
def test_client_leaving_during_backoff_stops_the_retries(
    slow_gw: GatewayProcess, slow: FakeOpenAI, stream: bool
) -> None:
    rid = f"res-leave-backoff-{uuid.uuid4().hex[:8]}"
    body = chat("patient", "scenario:status:500", stream=stream)
    # The client leaves 0.1 s after the first 500: in a backoff (full jitter, up to 0.3-0.6 s) or a later attempt.
    closed_at = abandon(slow_gw, body, lambda: answered(slow, 500), after=0.1, request_id=rid)
    seen = len(chats(slow))
    # Done with the request (its line is written): retries it had not stopped would all be in the log by now.
    line = slow_gw.request_line(rid, timeout=15)
    assert line["outcome"] == "cancelled"
    late = [x.received_at - closed_at for x in chats(slow) if x.received_at > closed_at + 0.05]
    assert late == [], f"attempts {late} s after the client left"
    assert 1 <= len(chats(slow)) <= seen + 1  # at most the one already in flight when the socket closed


def test_client_leaving_while_waiting_for_the_first_token_closes_the_upstream(
    slow_gw: GatewayProcess, slow: FakeOpenAI
) -> None:
    rid = f"res-leave-first-token-{uuid.uuid4().hex[:8]}"
    body = chat("patient", "scenario:silent", stream=False)
    closed_at = abandon(slow_gw, body, lambda: chats(slow), request_id=rid)  # the upstream has it; it stays silent
    [record] = slow.wait_for(lambda reqs: [x for x in reqs if x.client_closed_at is not None], timeout=2)
    assert record.client_closed_at is not None and record.client_closed_at - closed_at < 0.5
    assert slow_gw.request_line(rid)["outcome"] == "cancelled"  # done with it: no second attempt can follow
    assert len(chats(slow)) == 1


def test_keepalive_comments_then_the_normal_stream(slow_gw: GatewayProcess, slow: FakeOpenAI) -> None:
    r, elapsed = post(slow_gw, chat("ka", "scenario:slow_first:900"), request_id="res-ka-1")
    assert r.status_code == 200
    assert r.headers["x-request-id"] == "res-ka-1"
    raw = r.content
    comments = 0
    while raw.startswith(b": keep-alive\n\n"):
        raw = raw[len(b": keep-alive\n\n") :]
        comments += 1
    assert 2 <= comments <= 5  # every 0.2 s from 0.2 s until the first token at 0.9 s
    assert raw.startswith(b"data: {")
    assert b": keep-alive" not in raw
    assert_complete_stream(raw, "ka", NORMAL_TEXT)
    assert len(chats(slow, "ka-1")) == 1
    assert chats(slow, "ka-2") == []
    assert 0.85 <= elapsed < 2


def test_failover_continues_behind_keepalive_comments(slow_gw: GatewayProcess, slow: FakeOpenAI) -> None:
    r, elapsed = post(slow_gw, chat("ka-mixed"))
    assert r.status_code == 200
    comments = r.content.count(b": keep-alive\n\n")
    assert comments >= 4  # 1.2 s of first_token on the silent deployment
    assert r.content.startswith(b": keep-alive\n\n" * comments + b"data: {")
    assert_complete_stream(r.content[len(b": keep-alive\n\n") * comments :], "ka-mixed", NORMAL_TEXT)
    assert len(chats(slow, "kam-1")) == 1
    assert len(chats(slow, "kam-2")) == 1
    assert 1.1 <= elapsed < 2.5


def test_fast_answers_and_fast_failures_send_no_keepalive(slow_gw: GatewayProcess, slow: FakeOpenAI) -> None:
    r, _ = post(slow_gw, chat("ka"))
    assert not r.content.startswith(b":")
    assert_complete_stream(r.content, "ka", NORMAL_TEXT)
    r, _ = post(slow_gw, chat("ka", "scenario:context_length"))
    assert_envelope(r, 400, "context_length_exceeded")  # still a real status: nothing was committed


def test_failure_after_keepalives_is_a_stream_error_with_status_200(slow_gw: GatewayProcess, slow: FakeOpenAI) -> None:
    r, elapsed = post(slow_gw, chat("ka", "scenario:silent"))
    assert r.status_code == 200  # the documented trade-off: the first comment committed the status
    assert r.headers["content-type"].startswith("text/event-stream")
    raw = r.content
    tail = error_frame("the upstream sent no first token in time")
    assert raw.endswith(tail), raw[-300:]
    head = raw[: -len(tail)]
    comments = head.count(b": keep-alive\n\n")
    assert head == b": keep-alive\n\n" * comments
    assert comments >= 8  # ~2.4 s of waiting at one comment per 0.2 s, with slack
    assert len(chats(slow, "ka-1")) == 1  # each silent deployment tried once
    assert len(chats(slow, "ka-2")) == 1
    assert 2.3 <= elapsed < 4


# -- graceful shutdown ---------------------------------------------------------------------------------------

DRAIN = 1.0
STREAMS = 50


async def _open_stream(
    client: httpx.AsyncClient, gw: GatewayProcess, content: str, started: list[int], all_started: asyncio.Event
) -> tuple[int, bytes, float]:
    """Read one stream to its end; a connection cut mid-body is returned as what arrived (no terminal frame)."""
    body = chat("drain", content)
    headers = {"Authorization": f"Bearer {gw.key}"}
    status, raw = 0, b""
    try:
        async with client.stream("POST", gw.base_url + "/chat/completions", json=body, headers=headers) as r:
            status = r.status_code
            async for part in r.aiter_raw():
                if not raw:
                    started.append(1)
                    if len(started) == STREAMS:
                        all_started.set()
                raw += part
    except httpx.TransportError:
        pass
    return status, raw, time.monotonic()


async def _refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return True
    writer.close()
    return False


async def test_sigterm_drains_open_streams_then_ends_the_rest_cleanly(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    with FakeOpenAI() as up:
        timeouts = {**TIMEOUTS, "idle": 2, "first_token": 2, "total": 30}
        config: dict[str, Any] = {
            "models": [{"id": "drain", "deployments": [deployment(up, "drain-up", timeouts=timeouts)]}],
            "server": {"drain_timeout": DRAIN},
        }
        gw = GatewayProcess(config, tmp_path_factory.mktemp("resilience-drain")).start()
        try:
            # Half finish ~0.7 s after their start (within the drain window), half would need ~3.5 s.
            kinds = ["short" if i % 2 else "long" for i in range(STREAMS)]
            scenario = {"short": "scenario:slow_chunks:100", "long": "scenario:slow_chunks:500"}
            started: list[int] = []
            all_started = asyncio.Event()
            limits = httpx.Limits(max_connections=STREAMS + 10)
            async with httpx.AsyncClient(timeout=20, limits=limits) as client:
                tasks = [
                    asyncio.create_task(_open_stream(client, gw, scenario[k], started, all_started)) for k in kinds
                ]
                await asyncio.wait_for(all_started.wait(), 10)
                assert gw.proc is not None
                term_at = time.monotonic()
                gw.proc.send_signal(signal.SIGTERM)
                refused_at = None
                while time.monotonic() < term_at + DRAIN * 0.8:
                    if await _refused(gw.port):
                        refused_at = time.monotonic()
                        break
                    await asyncio.sleep(0.02)
                results = await asyncio.gather(*tasks)
            exit_code = await asyncio.to_thread(gw.proc.wait, DRAIN + 8)
            exited_at = time.monotonic()
        finally:
            gw.stop()
        log = gw.log()

        assert refused_at is not None, "new connections were still accepted after SIGTERM"
        for kind, (status, raw, ended_at) in zip(kinds, results, strict=True):
            assert status == 200
            assert raw.endswith(b"data: [DONE]\n\n"), (kind, raw[-200:])  # never a bare cut
            if kind == "short":
                assert_complete_stream(raw, "drain", NORMAL_TEXT)
                assert ended_at < term_at + DRAIN
            else:
                assert raw.endswith(error_frame("gateway shutting down")), raw[-300:]
                got = text_of(chunks_of(raw))
                assert NORMAL_TEXT.startswith(got) and got != NORMAL_TEXT
                assert term_at + DRAIN - 0.1 <= ended_at < term_at + DRAIN + 1.5
        assert len(chats(up)) == STREAMS
        long_records = [x for x in chats(up) if "slow_chunks:500" in str(x.scenario)]
        assert len(long_records) == STREAMS // 2
        up.wait_for(lambda _: all(x.outcome == "client_closed" for x in long_records), timeout=2)
        assert exited_at < term_at + DRAIN + 4, log[-2000:]
        assert exit_code == 0, f"exit code {exit_code}\n{log[-2000:]}"
        assert up.errors == []
        # Every stream was metered before the process exited: the finished ones whole, the ended ones partial.
        db = sqlite3.connect(gw.workdir / "data" / "sluicegate.db")
        try:
            rows = db.execute(
                "SELECT outcome, partial, error_code, completion_tokens FROM usage WHERE requested_model = 'drain'"
            ).fetchall()
        finally:
            db.close()
        assert len(rows) == STREAMS
        completed = [r for r in rows if r[0] == "completed"]
        interrupted = [r for r in rows if r[0] == "interrupted"]
        assert len(completed) == len(interrupted) == STREAMS // 2
        assert all(not partial and code is None for _, partial, code, _ in completed)
        assert all(partial and code == "stream_error" and tokens > 0 for _, partial, code, tokens in interrupted)


async def test_sigterm_also_ends_a_stream_that_opens_after_the_drain_deadline(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A request still failing over when the drain window closes must not run on unbounded (or be cut bare).

    Its first deployment is silent (first_token 1.5 s), so its stream opens on the second deployment after
    the 1 s drain deadline has passed; that deployment would stream for another ~6 s.
    """
    with FakeOpenAI() as up:
        silent = {**TIMEOUTS, "first_token": 1.5, "idle": 2, "total": 30}
        slow = {**TIMEOUTS, "idle": 2, "total": 30}
        config: dict[str, Any] = {
            "models": [
                {
                    "id": "drain",
                    "deployments": [
                        deployment(up, "late-1 scenario:silent", weight=FIRST, timeouts=silent),
                        deployment(up, "late-2 scenario:slow_chunks:900", weight=SECOND, timeouts=slow),
                    ],
                }
            ],
            "server": {"drain_timeout": DRAIN},
        }
        gw = GatewayProcess(config, tmp_path_factory.mktemp("resilience-drain-late")).start()
        try:
            async with httpx.AsyncClient(timeout=20) as client:
                task = asyncio.create_task(_open_stream(client, gw, "hello", [], asyncio.Event()))
                await up.wait_for_async(lambda reqs: len(reqs) == 1)
                assert gw.proc is not None
                term_at = time.monotonic()
                gw.proc.send_signal(signal.SIGTERM)
                try:  # it should end soon after its first token (~1.5 s); don't wait for uvicorn's hard cut
                    status, raw, ended_at = await asyncio.wait_for(task, 1.5 + DRAIN + 1)
                except TimeoutError:
                    status, raw, ended_at = 0, b"", None
            try:
                exit_code: int | None = await asyncio.to_thread(
                    gw.proc.wait, max(0.1, term_at + DRAIN + 4 - time.monotonic())
                )
            except subprocess.TimeoutExpired:
                exit_code = None
            exited_at = time.monotonic()
        finally:
            if gw.proc is not None and gw.proc.poll() is None:
                gw.proc.kill()
            gw.stop()
        log = gw.log()
        assert [str(x.body["model"]).split()[0] for x in chats(up)] == ["late-1", "late-2"]
        assert ended_at is not None, "the stream was still open 3.5 s after SIGTERM (drain_timeout 1 s)"
        # Either refused before its first byte (an HTTP error) or ended with the frame; never a bare cut.
        if status == 200:
            assert raw.endswith(error_frame("gateway shutting down")), raw[-300:]
        else:
            assert status == 503, raw
        assert exit_code is not None and exited_at < term_at + DRAIN + 4, log[-2000:]
        assert exit_code == 0, f"exit code {exit_code}"
