#!/usr/bin/env python3
"""CPU per request of the HTTP edge alone: the connection protocol, ``App._http`` and the request view.

    .venv/bin/python benchmarks/bench_edge.py [--requests 20000] [--rounds 7]

Feeds a typical chat request (one read: headers and a 600-byte JSON body) into the protocol on a fake
transport, in process, and lets the real ``App`` route it to a stub chat handler that reads the three headers
the real one reads and the body, then answers a small JSON. No sockets, no upstream, no store: what is left is
exactly the edge. Reports the minimum over rounds of CPU µs per request (process time), for uvicorn's own
``HttpToolsProtocol`` and for sluicegate's protocol when this checkout has one (``http/protocol.py``).

To compare two checkouts, run it under each (e.g. ``PYTHONPATH=/tmp/sg-main/src``). CPU time on a shared
machine varies by ±10 % between runs; instruction counts do not: run it under callgrind at two request counts
and divide the difference (docs/benchmarks.md, "The HTTP edge"):

    PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/dev/null \
        .venv/bin/python benchmarks/bench_edge.py --only sluicegate --rounds 1 --requests 2000   # and 4000
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

import sluicegate.app as app_module
from sluicegate.asgi import Request, send_json
from sluicegate.config import load_config
from sluicegate.http import routes
from sluicegate.settings import Settings

BODY = orjson.dumps(
    {"model": "gpt-test", "stream": False, "messages": [{"role": "user", "content": "x" * 500}], "max_tokens": 16}
)
REQUEST = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nAccept: application/json\r\n"
    b"Content-Type: application/json\r\nUser-Agent: OpenAI/Python 1.99.0\r\nX-Stainless-Lang: python\r\n"
    b"X-Stainless-OS: Linux\r\nAuthorization: Bearer sk-sg-0123456789abcdef0123456789abcdef\r\n"
    b"Content-Length: %d\r\n\r\n" % len(BODY)
) + BODY


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = 0
        self.closed = False

    def write(self, data: Any) -> None:
        self.written += len(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8080), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def stub_chat(gw: Any, request: Request) -> None:
    request.header(b"x-request-id")
    request.header(b"authorization")
    request.header(b"x-api-key")
    body = await request.body(1 << 20)
    await send_json(request.send, 200, {"ok": len(body)}, {"x-request-id": "req_0"})


async def run(protocol_class: type[HttpToolsProtocol], config: uvicorn.Config, n: int) -> float:
    state = ServerState()
    proto = protocol_class(config=config, server_state=state, app_state={})
    transport = FakeTransport()
    proto.connection_made(transport)
    started = time.process_time()
    for _ in range(n):
        proto.data_received(REQUEST)
        for task in list(state.tasks):
            await task
    elapsed = time.process_time() - started
    assert not transport.closed and transport.written > 0
    proto.connection_lost(None)
    return elapsed / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument(
        "--only", choices=["uvicorn", "sluicegate"], help="one protocol (for instruction counts under callgrind)"
    )
    args = parser.parse_args()

    routes.ROUTES[("POST", "/v1/chat/completions")] = stub_chat
    app_module.ROUTES[("POST", "/v1/chat/completions")] = stub_chat
    if hasattr(app_module, "OWN_REQUEST_ID"):
        app_module.OWN_REQUEST_ID = frozenset({stub_chat})  # as the real chat handler: no send wrapper
    app = app_module.create_app(Settings.from_env(), load_config(None))
    config = uvicorn.Config(
        app, http="httptools", lifespan="off", access_log=False, log_level="warning", proxy_headers=False
    )
    config.load()
    classes: dict[str, type[HttpToolsProtocol]] = {"uvicorn HttpToolsProtocol": HttpToolsProtocol}
    try:
        from sluicegate.http.protocol import GatewayHttpProtocol

        classes["sluicegate GatewayHttpProtocol"] = GatewayHttpProtocol
    except ImportError:
        pass
    if args.only:
        classes = {name: cls for name, cls in classes.items() if name.startswith(args.only)}
    best = {name: float("inf") for name in classes}
    loop = asyncio.new_event_loop()
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        pass
    for _ in range(args.rounds):
        for name, cls in classes.items():  # alternated, so drift in machine load hits both alike
            best[name] = min(best[name], loop.run_until_complete(run(cls, config, args.requests)))
    for name, us in best.items():
        print(f"{name:32s} {us:7.2f} µs CPU per request (min of {args.rounds} rounds of {args.requests})")


if __name__ == "__main__":
    main()
