"""The service's stream state and the chat encoder together: canonical chunks in, the client's bytes out."""

from __future__ import annotations

from sluicegate.service.state import StreamState
from sluicegate.types import ChatChunk, Usage
from sluicegate.wire.openai_chat.encode import ChunkEncoder


class ClientStream:
    """What a chat client receives for a sequence of adapter batches (as ``http.inference`` relays them)."""

    def __init__(self, completion_id: str, created: int, model: str, include_usage: bool) -> None:
        self.state = StreamState()
        self.encoder = ChunkEncoder(completion_id, created, model, include_usage)

    def encode(self, batch: list[ChatChunk]) -> bytes:
        return self.encoder.encode(self.state.feed(batch))

    @property
    def usage(self) -> Usage | None:
        return self.state.usage

    @property
    def started(self) -> bool:
        return self.state.started

    @property
    def complete(self) -> bool:
        return self.state.complete

    def usage_frame(self, usage: Usage) -> bytes:
        """The usage chunk alone (``done`` without its ``[DONE]``)."""
        return self.encoder.done(usage).removesuffix(b"data: [DONE]\n\n")
