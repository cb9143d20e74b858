"""Request-side scanning and redaction of OpenAI chat messages."""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

from sluicegate.dlp import DlpRule, Engine, MessageFinding, redact_messages, scan_messages
from sluicegate.dlp import messages as dlp_messages

ENGINE = Engine(DlpRule())
CARD = "4111 1111 1111 1111"
KEY = "sk-ant-api03-Abcdefghij0123456789xyz"
PEM = (
    "-----BEGIN RSA PRIVATE KEY-----\n"
    "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\n"
    "-----END RSA PRIVATE KEY-----"
)


def conversation() -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": "You are helpful."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": f"my card is {CARD}"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AKIAIOSFODNN7EXAMPLE"}},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": json.dumps({"email": "bob@example.com"})},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": f"found key {KEY}"},
        {"role": "user", "content": "thanks"},
    ]


def test_scan_covers_text_parts_tool_arguments_and_tool_results() -> None:
    findings = scan_messages(conversation(), ENGINE)
    assert [(f.type, f.message, f.path) for f in findings] == [
        ("payment_card", 1, "content[0].text"),
        ("email", 2, "tool_calls[0].function.arguments"),
        ("anthropic_key", 3, "content"),
    ]


def test_redact_replaces_and_leaves_images_alone() -> None:
    new, findings = redact_messages(conversation(), ENGINE)
    assert len(findings) == 3
    assert new[1]["content"][0]["text"] == "my card is [REDACTED:PAYMENT_CARD]"
    assert new[1]["content"][1] == conversation()[1]["content"][1]
    args = json.loads(new[2]["tool_calls"][0]["function"]["arguments"])
    assert args == {"email": "[REDACTED:EMAIL]"}
    assert new[3]["content"] == "found key [REDACTED:ANTHROPIC_KEY]"
    assert new[0] == conversation()[0] and new[4] == conversation()[4]


def test_input_is_not_mutated_and_clean_messages_are_shared() -> None:
    messages = conversation()
    snapshot = copy.deepcopy(messages)
    new, _ = redact_messages(messages, ENGINE)
    assert messages == snapshot
    assert new[0] is messages[0] and new[4] is messages[4]
    assert new[1] is not messages[1]


def test_clean_conversation_has_no_findings() -> None:
    messages = [{"role": "user", "content": "hello there"}, {"role": "assistant", "content": "hi!"}]
    new, findings = redact_messages(messages, ENGINE)
    assert findings == [] and new == messages
    assert scan_messages(messages, ENGINE) == []


def test_findings_locate_without_text() -> None:
    finding = scan_messages([{"role": "user", "content": f"x {CARD}"}], ENGINE)[0]
    assert finding == MessageFinding("payment_card", 0, "content", 2, 2 + len(CARD))


def test_tool_arguments_stay_valid_json() -> None:
    # The e-mail starts right after a JSON escape: naive redaction would leave "\[REDACTED".
    args = json.dumps({"note": "line\nbob@example.com"})
    assert "\\nbob@" in args
    new, findings = redact_messages(
        [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": args}}]}], ENGINE
    )
    assert [f.type for f in findings] == ["email"]
    decoded = json.loads(new[0]["tool_calls"][0]["function"]["arguments"])
    assert "bob@" not in json.dumps(decoded)
    assert "REDACTED:EMAIL" in decoded["note"]


def test_odd_shapes_are_tolerated() -> None:
    messages: list[Any] = [
        {"role": "user"},
        {"role": "user", "content": [{"type": "text"}, "plain", {"type": "input_audio"}]},
        {"role": "assistant", "tool_calls": [{"function": {"arguments": None}}, "junk"]},
    ]
    new, findings = redact_messages(messages, ENGINE)
    assert findings == [] and new == messages


def _long_conversation() -> list[dict[str, Any]]:
    """Texts longer than a scanning piece, with secrets straddling piece boundaries, and many small messages."""
    piece = dlp_messages.PIECE
    filler = "lorem ipsum dolor sit amet " * (piece // 9)
    text = ""
    for i, secret in enumerate([CARD, KEY, "bob@example.com", PEM, CARD]):
        text += filler[: piece * (i + 1) - len(text) - len(secret) // 2] + secret
    calls = [{"id": "c", "type": "function", "function": {"name": "f", "arguments": json.dumps({"k": filler + KEY})}}]
    return [
        {"role": "user", "content": text + filler},
        {"role": "assistant", "content": None, "tool_calls": calls},
        *({"role": "user", "content": f"small {i} {CARD}"} for i in range(300)),
    ]


def test_async_scanning_in_pieces_gives_the_whole_text_result() -> None:
    messages = _long_conversation()
    before = copy.deepcopy(messages)
    assert asyncio.run(dlp_messages.scan_messages_async(messages, ENGINE)) == scan_messages(messages, ENGINE)
    got = asyncio.run(dlp_messages.redact_messages_async(messages, ENGINE))
    assert got == redact_messages(messages, ENGINE)
    assert len(got[1]) >= 300 + 6
    assert messages == before
