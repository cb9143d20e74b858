"""``FakeOpenAI``: the server thread, its connections and the thread-safe request log."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, TypeVar

import orjson

from .connection import Connection, HttpRequest, PeerGone, RecordedRequest
from .exchange import Exchange, envelope
from .scenarios import SCENARIOS, send_status
from .selection import ScenarioError, select_scenario

T = TypeVar("T")


class FakeOpenAI:
    """A fake OpenAI-compatible upstream on 127.0.0.1, running its own event loop in a daemon thread.

    ``scenario`` forces a scenario for every chat request (see the module docstring's precedence); ``models`` is what
    ``GET /v1/models`` lists; with ``api_key`` set, requests without ``Authorization: Bearer <api_key>`` get 401.
    """

    def __init__(
        self,
        *,
        scenario: str | None = None,
        models: Iterable[str] = ("fake-model",),
        api_key: str | None = None,
        split_pause: float = 0.0001,
    ) -> None:
        self.scenario = scenario
        self.models = list(models)
        self.api_key = api_key
        self.split_pause = split_pause
        self._lock = threading.Lock()
        self._requests: list[RecordedRequest] = []
        self._errors: list[str] = []
        self._attempts: dict[str, int] = {}
        self._next_index = 0
        self._next_connection = 0
        self._port: int | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        # Touched only from the server thread.
        self._connections: set[Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    # lifecycle (called from the test's thread)

    def start(self) -> FakeOpenAI:
        if self._thread is not None:
            raise RuntimeError("FakeOpenAI already started")
        self._thread = threading.Thread(target=self._run, name="fake-openai", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("FakeOpenAI did not start within 10 s")
        if self._startup_error is not None:
            raise RuntimeError("FakeOpenAI failed to start") from self._startup_error
        return self

    def stop(self) -> None:
        """Close the listener and every open connection, then join the thread."""
        loop, stopping, thread = self._loop, self._stopping, self._thread
        if thread is None:
            return
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stopping.set)
        thread.join(10)
        self._thread = None

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("FakeOpenAI is not started")
        return self._port

    @property
    def url(self) -> str:
        """The OpenAI base URL, e.g. ``http://127.0.0.1:PORT/v1``."""
        return f"http://127.0.0.1:{self.port}/v1"

    # the log (thread-safe)

    @property
    def requests(self) -> list[RecordedRequest]:
        """A snapshot of the log, oldest first; the records themselves keep updating (client_closed_at, ...)."""
        with self._lock:
            return list(self._requests)

    @property
    def errors(self) -> list[str]:
        """Problems inside the fake (bad scenario names, handler crashes); tests should expect it empty."""
        with self._lock:
            return list(self._errors)

    def reset(self) -> None:
        """Clear the request log and the ``fail_times`` counters."""
        with self._lock:
            self._requests.clear()
            self._attempts.clear()

    def wait_for(self, predicate: Callable[[list[RecordedRequest]], T], timeout: float = 5.0) -> T:
        """Poll ``predicate(requests)`` until it returns something truthy, and return that; TimeoutError if never."""
        deadline = time.monotonic() + timeout
        while not (result := predicate(self.requests)):
            if time.monotonic() >= deadline:
                raise TimeoutError(f"condition not met within {timeout} s; requests: {self._summary()}")
            time.sleep(0.005)
        return result

    async def wait_for_async(self, predicate: Callable[[list[RecordedRequest]], T], timeout: float = 5.0) -> T:
        """``wait_for`` for async tests: sleeps without blocking the caller's event loop."""
        deadline = time.monotonic() + timeout
        while not (result := predicate(self.requests)):
            if time.monotonic() >= deadline:
                raise TimeoutError(f"condition not met within {timeout} s; requests: {self._summary()}")
            await asyncio.sleep(0.005)
        return result

    def _summary(self) -> str:
        return ", ".join(f"{r.method} {r.path} [{r.scenario}] {r.outcome}" for r in self.requests) or "none"

    # server thread

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self._startup_error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stopping = asyncio.Event()
        server = await loop.create_server(self._new_connection, "127.0.0.1", 0)
        self._port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            server.close()
            for conn in list(self._connections):
                if conn.current is not None and conn.current.finished_at is None:
                    conn.current.finished_at = time.monotonic()
                    conn.current.outcome = "server_stopped"
                conn.abort()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await server.wait_closed()

    def _new_connection(self) -> Connection:
        self._next_connection += 1
        return Connection(self, self._next_connection)

    def adopt(self, conn: Connection) -> None:
        self._connections.add(conn)
        task = asyncio.get_running_loop().create_task(self._serve(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def forget(self, conn: Connection) -> None:
        self._connections.discard(conn)

    def count_attempt(self, scenario: str) -> int:
        with self._lock:
            self._attempts[scenario] = self._attempts.get(scenario, 0) + 1
            return self._attempts[scenario]

    def _record_error(self, message: str) -> None:
        with self._lock:
            self._errors.append(message)

    async def _serve(self, conn: Connection) -> None:
        try:
            while (request := await conn.read_request()) is not None:
                await self._handle(conn, request)
                if conn.peer_gone.is_set() or conn.closed_by_us:
                    return
                if not request.keep_alive:
                    conn.close()
                    return
        except PeerGone:
            pass
        except Exception as exc:  # a bug in the fake: make it visible to the test instead of hanging the client
            self._record_error(f"{type(exc).__name__}: {exc}")
            conn.abort()

    def _log(self, conn: Connection, request: HttpRequest) -> RecordedRequest:
        try:
            body = orjson.loads(request.body) if request.body else None
        except orjson.JSONDecodeError:
            body = None
        with self._lock:
            self._next_index += 1
            record = RecordedRequest(
                index=self._next_index,
                connection_id=conn.id,
                method=request.method,
                path=request.path,
                headers=request.headers,
                body=body,
                raw_body=request.body,
                scenario=None,
                received_at=time.monotonic(),
            )
            self._requests.append(record)
        return record

    async def _handle(self, conn: Connection, request: HttpRequest) -> None:
        record = self._log(conn, request)
        conn.current = record
        ex = Exchange(self, conn, request, record)
        if self.api_key is not None and request.headers.get("authorization") != f"Bearer {self.api_key}":
            await send_status(ex, 401)
        elif request.path == "/v1/chat/completions" and request.method == "POST":
            await self._chat(ex)
        elif request.path == "/v1/models" and request.method == "GET":
            await ex.send_json(200, self._model_list())
        elif request.path in ("/v1/chat/completions", "/v1/models"):
            await ex.send_json(405, envelope("Method not allowed.", "invalid_request_error", None))
        else:
            message = f"Unknown request URL: {request.method} {request.path}."
            await ex.send_json(404, envelope(message, "invalid_request_error", "unknown_url"))

    async def _chat(self, ex: Exchange) -> None:
        if not isinstance(ex.record.body, dict):
            message = "We could not parse the JSON body of your request."
            await ex.send_json(400, envelope(message, "invalid_request_error", None))
            return
        try:
            ex.scenario = select_scenario(ex.record.body, ex.request.headers, self.scenario)
            ex.record.scenario = str(ex.scenario)
            handler = SCENARIOS.get(ex.scenario.name)
            if handler is None:
                raise ScenarioError(
                    f"unknown fake scenario {ex.scenario.name!r}; known: {', '.join(sorted(SCENARIOS))}"
                )
            await handler(ex)
        except ScenarioError as exc:
            self._record_error(str(exc))
            await ex.send_json(400, envelope(str(exc), "invalid_request_error", "fake_bad_scenario"))

    def _model_list(self) -> dict[str, Any]:
        created = 1_700_000_000
        data = [{"id": model, "object": "model", "created": created, "owned_by": "fake"} for model in self.models]
        return {"object": "list", "data": data}
