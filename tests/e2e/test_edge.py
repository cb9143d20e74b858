"""The HTTP edge (issues 23.6, 24.4, 24.5, 24.6, 17.6): malformed and slow requests, header limits, duplicate
credentials, compressed bodies, x-request-id and Allow on every response, CORS. Raw sockets where the HTTP is
malformed on purpose, httpx and the openai SDK for the rest, all against the real gateway process."""

from __future__ import annotations

import contextlib
import gzip
import socket
import time
import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest

from tests.conftest import gateway_config
from tests.fakes.openai import FakeOpenAI
from tests.support.gateway import GatewayProcess

HEADER_TIMEOUT = 1.5
BODY_TIMEOUT = 2.0
ORIGIN = "https://app.example.com"


@pytest.fixture(scope="module")
def edge(upstream: FakeOpenAI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    config = gateway_config(upstream.url)
    config["server"].update(
        header_timeout=HEADER_TIMEOUT, body_timeout=BODY_TIMEOUT, cors_origins=[ORIGIN, "http://localhost:5173"]
    )
    with GatewayProcess(config, tmp_path_factory.mktemp("edge")) as gw:
        yield gw


# ----------------------------------------------------------------------------------------------------------------
# Raw HTTP


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def error(self) -> dict[str, Any]:
        assert self.headers["content-type"] == "application/json", self.headers
        envelope = orjson.loads(self.body)
        assert list(envelope) == ["error"] and list(envelope["error"]) == ["message", "type", "param", "code"]
        assert self.headers["x-request-id"] in envelope["error"]["message"]
        return dict(envelope["error"])


def connect(gw: GatewayProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=15)
    return sock


def read_response(sock: socket.socket) -> Response:
    """One HTTP/1.1 response with a Content-Length (every response the gateway sends outside a stream)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a response: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        assert name.lower() not in headers, f"header {name} sent twice"
        headers[name.lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk
        body += chunk
    return Response(int(lines[0].split()[1]), headers, body)


def closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def exchange(gw: GatewayProcess, raw: bytes) -> tuple[Response, bool]:
    with connect(gw) as sock:
        sock.sendall(raw)
        response = read_response(sock)
        return response, closed_by_peer(sock)


def chat_head(gw: GatewayProcess, length: int, extra: bytes = b"") -> bytes:
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + gw.key.encode() + b"\r\nContent-Length: %d\r\n" % length + extra + b"\r\n"
    )


CHAT = orjson.dumps({"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]})


@pytest.mark.parametrize(
    ("name", "head"),
    [
        ("content-length and transfer-encoding", b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"),
        ("negative content-length", b"Content-Length: -5\r\n"),
        ("garbage content-length", b"Content-Length: 12abc\r\n"),
        ("two content-lengths", b"Content-Length: 5\r\nContent-Length: 6\r\n"),
    ],
)
def test_malformed_framing_gets_the_envelope_and_a_closed_connection(
    edge: GatewayProcess, name: str, head: bytes
) -> None:
    response, closed = exchange(edge, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n{}")
    assert response.status == 400, name
    error = response.error()
    assert error["type"] == "invalid_request_error" and error["code"] == "malformed_request"
    assert error["message"].startswith("Malformed HTTP request: ")
    assert closed  # the framing cannot be trusted: nothing more is read from this connection


def test_trickled_headers_are_cut_after_the_header_timeout(edge: GatewayProcess) -> None:
    with connect(edge) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        # One header line every 0.3 s: each read arrives long before any per-read timeout would fire.
        try:
            for i in range(100):
                sock.sendall(b"X-Slow-%d: 1\r\n" % i)
                time.sleep(0.3)
        except (BrokenPipeError, ConnectionResetError):
            pass
        response = read_response(sock)
        elapsed = time.monotonic() - started
        assert response.status == 408 and response.error()["code"] == "request_timeout"
        assert HEADER_TIMEOUT - 0.1 <= elapsed <= HEADER_TIMEOUT + 1.5
        assert closed_by_peer(sock)


def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(edge: GatewayProcess) -> None:
    with connect(edge) as sock:
        started = time.monotonic()
        assert closed_by_peer(sock)  # blocks until the gateway closes it
        assert HEADER_TIMEOUT - 0.1 <= time.monotonic() - started <= HEADER_TIMEOUT + 1.5


def test_trickled_body_is_cut_after_the_body_timeout(edge: GatewayProcess, fake: FakeOpenAI) -> None:
    with connect(edge) as sock:
        sock.sendall(chat_head(edge, len(CHAT)))
        started = time.monotonic()
        try:
            for byte in CHAT[:-1]:
                sock.sendall(bytes([byte]))
                time.sleep(0.25)
        except (BrokenPipeError, ConnectionResetError):
            pass
        response = read_response(sock)
        elapsed = time.monotonic() - started
        assert response.status == 408 and response.error()["code"] == "request_timeout"
        assert "body" in response.error()["message"]
        assert BODY_TIMEOUT - 0.1 <= elapsed <= BODY_TIMEOUT + 1.5
        assert closed_by_peer(sock)
    assert fake.requests == []  # nothing reached the upstream


def test_a_body_that_arrives_in_pieces_in_time_is_served(edge: GatewayProcess, fake: FakeOpenAI) -> None:
    with connect(edge) as sock:
        sock.sendall(chat_head(edge, len(CHAT)))
        for i in range(0, len(CHAT), 16):
            sock.sendall(CHAT[i : i + 16])
            time.sleep(0.02)
        response = read_response(sock)
    assert response.status == 200, response.body
    assert orjson.loads(response.body)["object"] == "chat.completion"


def test_oversized_header_is_refused_with_431(edge: GatewayProcess) -> None:
    response, closed = exchange(edge, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n")
    assert response.status == 431 and response.error()["code"] == "headers_too_large"
    assert "32768 bytes" in response.error()["message"]
    assert closed


def test_a_16_mib_header_is_cut_off_long_before_its_end(edge: GatewayProcess) -> None:
    with connect(edge) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Huge: ")
        sent = 0
        piece = b"a" * 65536
        with pytest.raises((BrokenPipeError, ConnectionResetError)):
            while sent < 16 * 1024 * 1024:
                sock.sendall(piece)
                sent += len(piece)
            sock.sendall(b"\r\n\r\n")
            read_response(sock)  # only reached if the whole header was accepted
    assert sent < 8 * 1024 * 1024


@pytest.mark.parametrize("count", [150, 20_000])
def test_too_many_headers_are_refused_with_431(edge: GatewayProcess, count: int) -> None:
    headers = b"".join(b"X-H%d: 1\r\n" % i for i in range(count))
    with connect(edge) as sock:
        # 20,000 headers: refused by size before they were all sent.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
        try:
            response = read_response(sock)
        except ConnectionResetError:
            assert count == 20_000  # the 431 may be lost to the reset of the unread rest
            return
    assert response.status == 431 and response.error()["code"] == "headers_too_large"
    if count == 150:
        assert "more than 100 headers" in response.error()["message"]


def test_a_keep_alive_connection_serves_requests_after_the_timeouts(edge: GatewayProcess) -> None:
    """The deadlines belong to one request: a connection reused within keepalive_timeout is not cut."""
    with connect(edge) as sock:
        for _ in range(3):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(sock).status == 200
            time.sleep(0.8)
        sock.sendall(chat_head(edge, len(CHAT)) + CHAT)
        assert read_response(sock).status == 200


# ----------------------------------------------------------------------------------------------------------------
# Credentials and bodies


def post(gw: GatewayProcess, path: str, headers: Any, content: bytes = CHAT) -> httpx.Response:
    return httpx.post(gw.url + path, content=content, headers=headers, timeout=15)


def envelope(r: httpx.Response) -> dict[str, Any]:
    assert r.headers["content-type"] == "application/json"
    assert r.headers["x-request-id"]
    body = r.json()
    assert list(body["error"]) == ["message", "type", "param", "code"]
    return dict(body["error"])


@pytest.mark.parametrize(
    ("path", "method"), [("/v1/chat/completions", "POST"), ("/v1/models", "GET"), ("/admin/v1/groups", "GET")]
)
@pytest.mark.parametrize("name", ["Authorization", "x-api-key"])
def test_a_credential_header_sent_twice_is_refused_with_400(
    edge: GatewayProcess, fake: FakeOpenAI, path: str, method: str, name: str
) -> None:
    good = f"Bearer {edge.key}" if name == "Authorization" else edge.key
    bad = "Bearer sk-someone-else" if name == "Authorization" else "sk-someone-else"
    for pair in ([good, bad], [bad, good]):
        headers = [("content-type", "application/json"), (name, pair[0]), (name, pair[1])]
        r = httpx.request(method, edge.url + path, content=CHAT if method == "POST" else None, headers=headers)
        assert r.status_code == 400, r.text
        error = envelope(r)
        assert error["code"] == "invalid_header" and error["param"] == name.lower()
        assert edge.key not in r.text
    assert fake.requests == []


@pytest.mark.parametrize(
    ("encoding", "compress"), [("gzip", gzip.compress), ("deflate", zlib.compress), ("GZip", gzip.compress)]
)
def test_a_compressed_body_is_served(edge: GatewayProcess, fake: FakeOpenAI, encoding: str, compress: Any) -> None:
    body = orjson.dumps({"model": "gpt-test", "messages": [{"role": "user", "content": "ünïcode " * 2000}]})
    headers = {"Authorization": f"Bearer {edge.key}", "Content-Type": "application/json"}
    r = post(edge, "/v1/chat/completions", {**headers, "Content-Encoding": encoding}, compress(body))
    assert r.status_code == 200, r.text
    assert r.json()["object"] == "chat.completion"
    assert fake.requests[-1].body["messages"][0]["content"] == "ünïcode " * 2000


def test_a_compressed_body_through_the_openai_sdk(edge: GatewayProcess, fake: FakeOpenAI) -> None:
    def gzip_request(request: httpx.Request) -> None:
        request.headers["Content-Encoding"] = "gzip"
        request._content = gzip.compress(request.read())
        request.stream = httpx.ByteStream(request._content)
        request.headers["Content-Length"] = str(len(request._content))

    with httpx.Client(event_hooks={"request": [gzip_request]}) as http:
        client = openai.OpenAI(base_url=edge.base_url, api_key=edge.key, max_retries=0, http_client=http)
        answer = client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content
    assert fake.requests[-1].body["messages"] == [{"role": "user", "content": "hi"}]


def test_a_gzip_bomb_is_refused_at_the_body_limit(edge: GatewayProcess, fake: FakeOpenAI) -> None:
    # 1 MiB limit (tests/conftest.py); 64 MiB of zeros compress to ~64 KiB.
    bomb = gzip.compress(b"0" * (64 * 1024 * 1024))
    assert len(bomb) < 1024 * 1024
    headers = {"Authorization": f"Bearer {edge.key}", "Content-Encoding": "gzip"}
    r = post(edge, "/v1/chat/completions", headers, bomb)
    assert r.status_code == 413
    error = envelope(r)
    assert error["code"] == "request_too_large" and "decompressed" in error["message"]
    assert fake.requests == []


@pytest.mark.parametrize(
    ("encoding", "body", "status", "code"),
    [
        ("br", b"\x1b\x00", 415, "unsupported_content_encoding"),
        ("gzip, gzip", gzip.compress(gzip.compress(CHAT)), 415, "unsupported_content_encoding"),
        ("gzip", gzip.compress(CHAT)[:-12], 400, "invalid_body"),
        ("gzip", CHAT, 400, "invalid_body"),
    ],
)
def test_an_unusable_encoding_is_refused_with_the_field(
    edge: GatewayProcess, fake: FakeOpenAI, encoding: str, body: bytes, status: int, code: str
) -> None:
    r = post(edge, "/v1/chat/completions", {"Authorization": f"Bearer {edge.key}", "Content-Encoding": encoding}, body)
    assert r.status_code == status, r.text
    error = envelope(r)
    assert error["code"] == code and error["param"] == "content-encoding"
    assert fake.requests == []


# ----------------------------------------------------------------------------------------------------------------
# x-request-id, Allow, CORS


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/nowhere", 404),
        ("DELETE", "/v1/chat/completions", 405),
        ("GET", "/healthz", 200),
        ("GET", "/readyz", 200),
        ("GET", "/metrics", 200),
        ("GET", "/admin/v1/groups", 200),
        ("GET", "/admin/v1/no-such-thing", 404),
        ("PUT", "/admin/v1/keys", 405),
        ("GET", "/v1/models", 200),
    ],
)
def test_every_response_carries_x_request_id(edge: GatewayProcess, method: str, path: str, status: int) -> None:
    auth = {"Authorization": f"Bearer {edge.key}"}
    r = httpx.request(method, edge.url + path, headers=auth)
    assert r.status_code == status
    assert r.headers["x-request-id"].startswith("req_")
    echoed = httpx.request(method, edge.url + path, headers={**auth, "x-request-id": "my-trace.42"})
    assert echoed.headers.get_list("x-request-id") == ["my-trace.42"]
    if status >= 400 and not path.startswith("/admin/"):  # the admin API's own errors: the header only
        assert envelope(echoed)["message"].endswith("(request id: my-trace.42)")
    unauthenticated = httpx.request(method, edge.url + path)
    assert unauthenticated.headers["x-request-id"]


def test_405_names_the_allowed_methods(gateway: GatewayProcess, edge: GatewayProcess) -> None:
    r = httpx.delete(gateway.url + "/v1/chat/completions")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert envelope(r)["code"] == "method_not_allowed"
    assert httpx.post(gateway.url + "/healthz").headers["allow"] == "GET"
    assert httpx.post(gateway.url + "/v1/models").headers["allow"] == "GET"
    # With CORS on, OPTIONS is served too.
    assert httpx.delete(edge.url + "/v1/chat/completions").headers["allow"] == "POST, OPTIONS"


def preflight(gw: GatewayProcess, origin: str, path: str = "/v1/chat/completions", **extra: str) -> httpx.Response:
    headers = {"Origin": origin, "Access-Control-Request-Method": "POST", **extra}
    return httpx.options(gw.url + path, headers=headers)


def test_cors_preflight_from_an_allowed_origin(edge: GatewayProcess) -> None:
    asked = (
        "authorization, content-type, x-stainless-os, x-stainless-lang, x-stainless-retry-count, "
        "anthropic-version, x-api-key, x-not-allowed"
    )
    r = preflight(edge, ORIGIN, **{"Access-Control-Request-Headers": asked})
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == ORIGIN
    assert r.headers["access-control-allow-methods"] == "POST"
    granted = {h.strip() for h in r.headers["access-control-allow-headers"].split(",")}
    assert granted == {
        "authorization",
        "content-type",
        "x-stainless-os",
        "x-stainless-lang",
        "x-stainless-retry-count",
        "anthropic-version",
        "x-api-key",
    }
    assert "origin" in r.headers["vary"].lower()
    assert int(r.headers["access-control-max-age"]) > 0
    assert "access-control-allow-credentials" not in r.headers
    admin = preflight(edge, "http://localhost:5173", "/admin/v1/keys/abc/revoke")
    assert admin.status_code == 204 and admin.headers["access-control-allow-origin"] == "http://localhost:5173"


def test_cors_preflight_from_another_origin_is_refused(edge: GatewayProcess) -> None:
    r = preflight(edge, "https://evil.example.net")
    assert r.status_code == 403
    assert envelope(r)["code"] == "cors_origin_not_allowed"
    assert "access-control-allow-origin" not in r.headers
    assert preflight(edge, ORIGIN, "/nowhere").status_code == 404


def test_cors_headers_on_actual_responses(edge: GatewayProcess, fake: FakeOpenAI) -> None:
    headers = {"Authorization": f"Bearer {edge.key}", "Origin": ORIGIN, "Content-Type": "application/json"}
    for stream in (False, True):
        body = orjson.dumps({"model": "gpt-test", "stream": stream, "messages": [{"role": "user", "content": "hi"}]})
        r = post(edge, "/v1/chat/completions", headers, body)
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == ORIGIN
        exposed = {h.strip() for h in r.headers["access-control-expose-headers"].split(",")}
        assert {"x-request-id", "retry-after", "x-ratelimit-remaining-requests"} <= exposed
        assert r.headers.get_list("x-request-id") == [r.headers["x-request-id"]]
    refused = post(edge, "/v1/chat/completions", {**headers, "Authorization": "Bearer nope"})
    assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == ORIGIN
    health = httpx.get(edge.url + "/healthz", headers={"Origin": ORIGIN})
    assert health.headers["access-control-allow-origin"] == ORIGIN
    other = httpx.get(edge.url + "/healthz", headers={"Origin": "https://evil.example.net"})
    assert "access-control-allow-origin" not in other.headers
    no_origin = post(edge, "/v1/chat/completions", {k: v for k, v in headers.items() if k != "Origin"})
    assert "access-control-allow-origin" not in no_origin.headers


def test_cors_is_off_by_default(gateway: GatewayProcess) -> None:
    r = preflight(gateway, ORIGIN)
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert "access-control-allow-origin" not in r.headers
    plain = httpx.get(gateway.url + "/healthz", headers={"Origin": ORIGIN})
    assert "access-control-allow-origin" not in plain.headers
