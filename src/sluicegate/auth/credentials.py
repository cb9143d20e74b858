"""The credential in the request headers (SPEC §2)."""

from __future__ import annotations

from ..errors import AuthenticationFailed
from .authenticator import INVALID_KEY_MESSAGE


def extract_credential(authorization: str | None, x_api_key: str | None) -> str:
    """Bearer wins over ``x-api-key``; a present but malformed ``Authorization`` is rejected, never skipped."""
    if authorization is not None:
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or " " in token:
            raise AuthenticationFailed(INVALID_KEY_MESSAGE)
        return token
    if x_api_key:
        return x_api_key.strip()
    raise AuthenticationFailed(INVALID_KEY_MESSAGE)
