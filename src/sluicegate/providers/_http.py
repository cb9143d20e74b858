"""The upstream HTTP plumbing every adapter shares: open a POST, read a JSON body, read a stream.

One copy of the rules that must not drift between providers: the connect + headers timeout applies
to opening only (the caller times the reads), an HTTP error status becomes a ``GatewayError``
through the adapter's own translator, and a connection failure is an ``UpstreamError`` before the
stream and a ``StreamInterrupted`` after it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
import orjson

from ..config import Deployment
from ..errors import GatewayError, StreamInterrupted, UpstreamEmptyBody, UpstreamError, UpstreamTimeout
from .base import StreamStats

MAX_ERROR_BODY = 64 * 1024

# (status, raw body, response headers) → the error to raise; one per provider family.
ErrorTranslator = Callable[[int, bytes, Mapping[str, str]], GatewayError]


async def open_post(
    session: aiohttp.ClientSession,
    url: str,
    body: dict[str, Any],
    headers: Mapping[str, str],
    deployment: Deployment,
    translate: ErrorTranslator,
    *,
    whole_body: bool = False,
) -> aiohttp.ClientResponse:
    """POST ``body`` as JSON; return the response once its headers arrived with a status below 400.

    ``whole_body``: a non-streaming call, whose headers come only with the finished answer, so they may
    take as long as the total deadline rather than the headers timeout.
    """
    t = deployment.timeouts
    try:
        async with asyncio.timeout(t.total if whole_body else t.connect + t.headers):
            resp = await session.post(
                url,
                data=orjson.dumps(body),
                headers=dict(headers),
                timeout=_connect_timeout(t.connect),
            )
    except TimeoutError as exc:
        raise UpstreamTimeout("the upstream did not answer in time") from exc
    except aiohttp.ClientError as exc:
        raise UpstreamError(f"could not reach the upstream ({type(exc).__name__})") from exc
    if resp.status >= 400:
        try:
            raw = await resp.content.read(MAX_ERROR_BODY)
        except (aiohttp.ClientError, TimeoutError):
            raw = b""
        finally:
            resp.close()
        raise translate(resp.status, raw, resp.headers)
    return resp


@functools.lru_cache(maxsize=64)
def _connect_timeout(seconds: float) -> aiohttp.ClientTimeout:
    # Built once per value: constructing the (immutable) attrs object was a visible per-request cost.
    return aiohttp.ClientTimeout(total=None, connect=seconds, sock_connect=seconds)


async def read_json(resp: aiohttp.ClientResponse) -> Any:
    """The whole body of a non-streaming answer, decoded; empty or non-JSON bodies are upstream errors."""
    try:
        raw = await resp.read()
    except aiohttp.ClientError as exc:
        raise UpstreamError("the upstream connection failed while reading the response") from exc
    finally:
        resp.release()
    if not raw.strip():
        raise UpstreamEmptyBody("the upstream sent an empty body")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise UpstreamError("the upstream sent a body that is not JSON") from exc


async def read_some(resp: aiohttp.ClientResponse) -> bytes:
    """What the socket has now (``b""`` at the end of the body); a broken connection ends the stream."""
    try:
        return await resp.content.readany()
    except aiohttp.ClientError as exc:
        raise StreamInterrupted("upstream stream interrupted") from exc


def end_response(resp: aiohttp.ClientResponse, *, finished: bool) -> None:
    """Give the connection back to the pool only after a clean end; otherwise drop it."""
    if finished:
        resp.release()  # reused only if the body is fully read; aiohttp closes it otherwise
    else:
        resp.close()


def malformed_event(
    stats: StreamStats, deployment: Deployment, *, started: bool, size: int, log: logging.Logger
) -> None:
    """Count an event that could not be decoded; raise if it must end the attempt or the stream.

    ``started``: whether anything of this stream may already have reached the client. Before that,
    an invalid event is a failed attempt, not a stream to patch up.
    """
    stats.malformed_events += 1
    if not started:
        raise UpstreamError("the upstream sent an invalid first chunk")
    if deployment.strict:
        raise StreamInterrupted("upstream sent a malformed event")
    log.warning("dropped a malformed upstream event (%d bytes)", size)
