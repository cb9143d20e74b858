"""The error responses of the edge's own making."""

from __future__ import annotations

from ..errors import InternalError


def internal_error() -> InternalError:
    # Never the exception's text: it may hold internals or secrets.
    return InternalError("The gateway failed to handle this request. It has been logged.")
