"""OpenAI chat completions (``POST /v1/chat/completions``): SPEC §3-§7."""

from __future__ import annotations

import orjson

from ...errors import GatewayError
from ...types import ChatRequest, Completion, Usage
from .decode import parse_chat_request
from .encode import ChunkEncoder, completion_body, error_body, new_completion_id

__all__ = ["OPENAI_CHAT", "ChunkEncoder", "OpenAIChat", "parse_chat_request"]


class OpenAIChat:
    api = "chat"

    def decode(self, raw: bytes) -> ChatRequest:
        return parse_chat_request(raw)

    def stream_encoder(self, request: ChatRequest, *, model: str, created: int) -> ChunkEncoder:
        return ChunkEncoder(new_completion_id(), created, model, request.include_usage)

    def completion(self, completion: Completion, usage: Usage, *, model: str, created: int) -> bytes:
        return orjson.dumps(completion_body(completion, usage, model=model, created=created))

    def error_body(self, exc: GatewayError, request_id: str | None) -> bytes:
        return error_body(exc, request_id)


OPENAI_CHAT = OpenAIChat()
