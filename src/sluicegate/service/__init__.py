"""The orchestration of one request: policies, targets, attempts, the open stream and the record."""

from .drain import StreamRegistry
from .orchestrator import ChatService
from .state import StreamState
from .stream import OpenStream, StreamEnd

__all__ = ["ChatService", "OpenStream", "StreamEnd", "StreamRegistry", "StreamState"]
