"""Property: whatever the body, the decoder and the code behind it answer with a ``GatewayError`` (4xx) or a
request the gateway can count, scan and forward to every kind of provider; never another exception (a 500)."""

from __future__ import annotations

import orjson
from hypothesis import HealthCheck, event, given, settings

from sluicegate.dlp.config import DlpConfig
from sluicegate.dlp.messages import redact_messages, scan_messages
from sluicegate.errors import GatewayError
from sluicegate.providers import anthropic_translate, gemini_translate
from sluicegate.tokens import TokenCounter
from sluicegate.wire.openai_chat.decode import parse_chat_request
from tests.support.fuzz_bodies import bodies, with_known_bodies

TOKENS = TokenCounter()
DLP = DlpConfig.model_validate({"request": {"action": "redact"}}).engine("request")


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=bodies())
@with_known_bodies
def test_a_body_is_refused_as_a_client_error_or_fully_usable(raw: bytes) -> None:
    try:
        request = parse_chat_request(raw)
    except GatewayError as exc:
        assert exc.status == 400 and exc.envelope()["error"]["code"] == "invalid_body"
        event(f"refused: {exc.param}")
        return
    event("accepted")
    orjson.dumps({**request.params, "messages": request.messages})  # what an OpenAI-compatible upstream receives
    assert TOKENS.count_messages(request.messages) > 0  # budgets and token limits count it
    assert DLP is not None
    scan_messages(request.messages, DLP)
    redacted, _ = redact_messages(request.messages, DLP)
    orjson.dumps(redacted)
    for build in (
        lambda: anthropic_translate.build_request(request, "claude", 1024, stream=True),
        lambda: gemini_translate.build_request(request, 1024),
    ):
        try:
            translated = build()
        except GatewayError as exc:
            assert 400 <= exc.status < 500
            continue
        orjson.dumps(translated)
