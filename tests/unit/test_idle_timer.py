"""The stream's idle timer: silences of the upstream expire it, the client's slow reading never does."""

from __future__ import annotations

import asyncio

import pytest

from sluicegate.service.idle_timer import IdleTimer


async def test_a_silent_upstream_expires_the_stream() -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(None) as timeout:
            idle = IdleTimer(timeout, deadline=start + 60)
            idle.reading(0.05)
            await asyncio.sleep(5)  # the upstream never answers
    assert 0.05 <= loop.time() - start < 1


async def test_slow_client_reading_is_not_upstream_silence() -> None:
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(None) as timeout:
        idle = IdleTimer(timeout, deadline=loop.time() + 60)
        for _ in range(5):
            idle.reading(0.05)
            await asyncio.sleep(0.01)  # the upstream answers in time
            idle.done_reading()
            await asyncio.sleep(0.08)  # the client takes longer than the idle limit to take the chunk
        idle.cancel()
    assert not timeout.expired()


async def test_the_deadline_bounds_every_wait() -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(None) as timeout:
            idle = IdleTimer(timeout, deadline=start + 0.1)
            while True:  # an upstream that keeps chunking, but past the total deadline
                idle.reading(10)
                await asyncio.sleep(0.02)
                idle.done_reading()
    assert 0.1 <= loop.time() - start < 1


async def test_a_shorter_wait_rearms_the_timer() -> None:
    """After the finish chunk the wait drops from ``idle`` to ``tail_grace``: the shorter one applies."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(None) as timeout:
            idle = IdleTimer(timeout, deadline=start + 60)
            idle.reading(30)
            await asyncio.sleep(0.01)
            idle.done_reading()
            idle.reading(0.05)
            await asyncio.sleep(5)
    assert loop.time() - start < 1
