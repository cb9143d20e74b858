"""Data loss prevention: detect, block and redact secrets and personal data in both directions."""

from .custom import CustomKeywords, CustomRegex
from .detectors import BUILTIN_NAMES
from .messages import MessageFinding, redact_messages, redact_messages_async, scan_messages, scan_messages_async
from .scanner import ACTIONS, Action, DlpRule, Engine, Finding, label
from .stream import StreamRedactor

__all__ = [
    "ACTIONS",
    "BUILTIN_NAMES",
    "Action",
    "CustomKeywords",
    "CustomRegex",
    "DlpRule",
    "Engine",
    "Finding",
    "MessageFinding",
    "StreamRedactor",
    "label",
    "redact_messages",
    "redact_messages_async",
    "scan_messages",
    "scan_messages_async",
]
