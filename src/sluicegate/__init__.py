"""sluicegate: a self-hosted, OpenAI-compatible LLM gateway."""

from .app import create_app
from .errors import GatewayError

__version__ = "0.1.0"
__all__ = ["GatewayError", "__version__", "create_app"]
