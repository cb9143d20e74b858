"""The edge's pure parts: body inflation within the limit, the CORS answers, the server settings' defaults."""

from __future__ import annotations

import gzip
import zlib

import pytest

from sluicegate.asgi import inflate
from sluicegate.config import ConfigError, ServerConfig, parse_config
from sluicegate.errors import InvalidRequest, RequestTooLarge
from sluicegate.http.cors import Cors
from sluicegate.http.protocol import EdgeLimits, limits_of

GZIP = 16 + zlib.MAX_WBITS


def test_inflate_gzip_deflate_and_several_gzip_members() -> None:
    assert inflate(gzip.compress(b"hello"), GZIP, 100) == b"hello"
    assert inflate(zlib.compress(b"hello"), zlib.MAX_WBITS, 100) == b"hello"
    assert inflate(gzip.compress(b"ab") + gzip.compress(b"cd"), GZIP, 100) == b"abcd"
    assert inflate(gzip.compress(b"x" * 100), GZIP, 100) == b"x" * 100  # exactly at the limit


@pytest.mark.parametrize("members", [1, 3])
def test_inflate_stops_at_the_limit_plus_one_byte(members: int) -> None:
    bomb = gzip.compress(b"\0" * (1 << 20)) * members
    with pytest.raises(RequestTooLarge, match="once decompressed"):
        inflate(bomb, GZIP, (1 << 20) * members - 1)


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (gzip.compress(b"hello")[:-4], "truncated"),
        (b"not gzip at all", "not valid"),
        (gzip.compress(b"hello") + b"trailing", "not valid"),
    ],
)
def test_inflate_refuses_corrupt_input_naming_the_header(raw: bytes, needle: str) -> None:
    with pytest.raises(InvalidRequest, match=needle) as info:
        inflate(raw, GZIP, 100)
    assert info.value.param == "content-encoding"


def test_cors_origin_matching() -> None:
    cors = Cors(["https://app.example.com"])
    assert cors.allow_origin("https://app.example.com") == b"https://app.example.com"
    assert cors.allow_origin("HTTPS://APP.example.com") == b"HTTPS://APP.example.com"  # echoed as sent
    assert cors.allow_origin("https://app.example.com.evil.net") is None
    assert cors.allow_origin("http://app.example.com") is None
    assert cors.allow_origin(None) is None
    assert Cors(["*"]).allow_origin("https://anything.test") == b"*"


def test_cors_preflight_grants_known_headers_only() -> None:
    headers = dict(Cors(["*"]).preflight_headers(b"*", "POST", "Authorization, X-Stainless-Arch, Cookie, , x-api-key"))
    assert headers[b"access-control-allow-headers"] == b"authorization, x-stainless-arch, x-api-key"
    assert headers[b"access-control-allow-methods"] == b"POST"
    assert b"origin" not in headers[b"vary"]  # "*" does not depend on the origin
    none = dict(Cors(["*"]).preflight_headers(b"*", "GET", None))
    assert b"access-control-allow-headers" not in none


def test_server_defaults_and_the_per_key_cap() -> None:
    server = ServerConfig()
    assert (server.header_timeout, server.body_timeout) == (10.0, 60.0)
    assert (server.max_header_bytes, server.max_headers, server.cors_origins) == (32 * 1024, 100, [])
    assert server.max_concurrent_per_key == 5000  # half the process cap unless set
    assert ServerConfig(max_concurrent_requests=50).max_concurrent_per_key == 25
    assert ServerConfig(max_concurrent_requests=1).max_concurrent_per_key == 1
    assert ServerConfig(max_concurrent_requests=50, max_concurrent_per_key=None).max_concurrent_per_key is None
    assert ServerConfig(max_concurrent_requests=None).max_concurrent_per_key is None
    assert ServerConfig(max_concurrent_per_key=7).max_concurrent_per_key == 7


def test_cors_origins_are_validated_with_their_line() -> None:
    text = (
        "models:\n  - id: demo\n    deployments: [{provider: demo}]\nserver:\n  cors_origins: ['https://a.test/app']\n"
    )
    with pytest.raises(ConfigError) as info:
        parse_config(text, {})
    assert info.value.problems == [
        "line 5: server.cors_origins: 'https://a.test/app' is not an origin (scheme://host[:port], no path) or '*'"
    ]
    good = parse_config(text.replace("/app", ""), {})
    assert good.server.cors_origins == ["https://a.test"]


def test_limits_are_found_through_uvicorn_wrappers() -> None:
    class App:
        edge_limits = EdgeLimits(header_timeout=3.0)

    class Wrapper:
        def __init__(self, app: object) -> None:
            self.app = app

    assert limits_of(Wrapper(Wrapper(App()))).header_timeout == 3.0
    assert limits_of(object()) == EdgeLimits()
