"""The orchestration of one request: policies, targets, attempts, the open stream and the record."""

from .orchestrator import ChatService, OpenStream, RequestContext

__all__ = ["ChatService", "OpenStream", "RequestContext"]
