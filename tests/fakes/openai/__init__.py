"""A fault-injecting fake OpenAI-compatible upstream, speaking the real wire format over real sockets.

Built on a raw ``asyncio.Protocol`` instead of a web framework because the faults we inject live below what a
framework lets us touch: chunked transfer encoding is written by hand, bodies can be split at any byte, the socket
can be reset (``SO_LINGER`` 0 then close sends a TCP RST), left silent, or closed mid-body, and the moment the
client closes its socket is recorded.

Usage (synchronous, so it fits plain pytest fixtures; the server runs its own loop in a daemon thread)::

    with FakeOpenAI() as fake:
        client = openai.OpenAI(base_url=fake.url, api_key="k", max_retries=0)
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi scenario:text:3"}])
        assert fake.requests[0].scenario == "text:3"

Endpoints: ``POST /v1/chat/completions`` (stream and non-stream) and ``GET /v1/models``. HTTP/1.1 keep-alive with
many requests per connection; request bodies with ``Content-Length`` or chunked. ``GET /v1/models`` lists
``FakeOpenAI.models`` and ignores scenarios.

Scenario grammar
----------------
A scenario is ``NAME`` or ``NAME:ARG`` (``NAME`` matches ``[a-z_]+``; ``ARG`` is a number or a word without
whitespace, e.g. ``text:3``, ``status:429``, ``finish:length``). It is chosen, first match wins, from:

1. the request header ``x-fake-scenario: NAME[:ARG]`` (for tests of the fake; the gateway does not forward it);
2. ``FakeOpenAI.scenario``, if set (per instance, changeable at runtime: one fake per deployment in failover tests);
3. a token ``scenario:NAME[:ARG]`` anywhere in the request's ``model`` (lets a gateway config give each deployment
   its own behaviour, e.g. ``model: "gpt-x scenario:status:503"``);
4. a token ``scenario:NAME[:ARG]`` in the content of the last message whose role is ``user`` (string content, or
   the first ``text`` part of an array);
5. otherwise ``normal``.

An unknown name or a bad ARG gets a 400 envelope naming the problem and is appended to ``FakeOpenAI.errors``.

The package: ``constants`` (what the normal answers are made of), ``selection`` (which scenario a request
asks for), ``connection`` (one TCP connection and the request log), ``exchange`` (HTTP and SSE framing, chunk
builders), ``scenarios`` (every behaviour, documented there), ``server`` (``FakeOpenAI``).
"""

from __future__ import annotations

from .connection import RecordedRequest
from .constants import (
    ARGUMENT_FRAGMENTS,
    HOSTILE_CODE,
    INBAND_ERROR,
    MALFORMED_DATA,
    NORMAL_PIECES,
    NORMAL_TEXT,
    PROMPT_TOKENS,
    TOOL_CALLS,
    UNICODE_PIECES,
    UNICODE_TEXT,
)
from .scenarios import SCENARIOS
from .selection import Scenario, parse_scenario, select_scenario
from .server import FakeOpenAI

__all__ = [
    "ARGUMENT_FRAGMENTS",
    "HOSTILE_CODE",
    "INBAND_ERROR",
    "MALFORMED_DATA",
    "NORMAL_PIECES",
    "NORMAL_TEXT",
    "PROMPT_TOKENS",
    "SCENARIOS",
    "TOOL_CALLS",
    "UNICODE_PIECES",
    "UNICODE_TEXT",
    "FakeOpenAI",
    "RecordedRequest",
    "Scenario",
    "parse_scenario",
    "select_scenario",
]
