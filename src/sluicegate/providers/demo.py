"""The built-in ``demo`` model: deterministic, offline, realistically paced, real token counts.

It lets a newcomer see a real stream with no provider key, and gives tests a provider that
needs no socket. The reply depends only on the last user message; each streamed piece is one
cl100k token (pieces that end inside a UTF-8 character are held until the character completes).
"""

from __future__ import annotations

import asyncio
import codecs
from collections.abc import AsyncIterator

from ..config import Deployment
from ..tokens import TokenCounter, message_text
from ..types import ChatChunk, ChatRequest, ChoiceDelta, Completion, Usage
from .base import StreamStats
from .options import DemoOptions, options_of

_TEMPLATE = (
    "Hello from sluicegate's built-in demo model. You said: \u201c{echo}\u201d. "
    "This answer was streamed token by token through the gateway, exactly as an upstream provider's would be, "
    "so you can point any OpenAI SDK at sluicegate and watch it work before configuring a real provider."
)
_ECHO_LIMIT = 200


class DemoProvider:
    def __init__(self, tokens: TokenCounter) -> None:
        self._tokens = tokens

    async def aclose(self) -> None:
        return None

    def reply(self, request: ChatRequest) -> str:
        last_user = next((m for m in reversed(request.messages) if m.get("role") == "user"), None)
        # Only the head is ever echoed: splitting a whole 4 MB prompt would hold the event loop for tens of ms.
        echo = " ".join(message_text(last_user)[: _ECHO_LIMIT * 16].split()) if last_user else ""
        if len(echo) > _ECHO_LIMIT:
            echo = echo[:_ECHO_LIMIT] + "\u2026"
        return _TEMPLATE.format(echo=echo)

    def _plan(self, request: ChatRequest) -> tuple[list[int], str]:
        """The reply's tokens, cut at ``max_tokens``, and the finish reason that cut implies."""
        tokens = self._tokens.encode(self.reply(request))
        if request.max_tokens is not None and len(tokens) > request.max_tokens:
            return tokens[: request.max_tokens], "length"
        return tokens, "stop"

    async def _usage(self, request: ChatRequest, completion_tokens: int) -> Usage:
        prompt_tokens = await self._tokens.count_messages_async(request.messages)
        return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)

    async def complete(self, request: ChatRequest, deployment: Deployment, request_id: str) -> Completion:
        tokens, finish = self._plan(request)
        text = b"".join(self._tokens.token_bytes(t) for t in tokens).decode("utf-8", "replace")
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": text, "refusal": None},
            "logprobs": None,
            "finish_reason": finish,
        }
        return Completion(choices=[choice], usage=await self._usage(request, len(tokens)))

    async def stream(
        self, request: ChatRequest, deployment: Deployment, request_id: str, stats: StreamStats
    ) -> AsyncIterator[list[ChatChunk]]:
        tokens, finish = self._plan(request)
        delay = options_of(deployment, DemoOptions).token_delay_ms / 1000
        yield [ChatChunk([ChoiceDelta(0, {"role": "assistant", "content": ""})])]
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        for token in tokens:
            if delay:
                await asyncio.sleep(delay)
            piece = decoder.decode(self._tokens.token_bytes(token))
            if piece:
                yield [ChatChunk([ChoiceDelta(0, {"content": piece})])]
        rest = decoder.decode(b"", final=True)
        final = [ChatChunk([ChoiceDelta(0, {}, finish)]), ChatChunk([], await self._usage(request, len(tokens)))]
        if rest:
            final.insert(0, ChatChunk([ChoiceDelta(0, {"content": rest})]))
        yield final
