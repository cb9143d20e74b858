"""Who is calling: the credential from the headers (SPEC §2), checked without leaking timing."""

from __future__ import annotations

import hashlib
import hmac
from typing import Protocol

from ..errors import AuthenticationFailed
from ..types import Principal

# One message for missing, malformed, unknown, revoked and expired keys: a caller cannot probe which.
INVALID_KEY_MESSAGE = "Incorrect or missing API key. Pass a valid key as 'Authorization: Bearer <key>'."


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


class Authenticator(Protocol):
    async def authenticate(self, credential: str) -> Principal: ...


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8")).digest()


class MasterKeyAuthenticator:
    """Accepts only the master key; compared as SHA-256 digests so length and content leak no timing."""

    def __init__(self, master_key: str | None) -> None:
        self._digest = digest(master_key) if master_key else None
        self._principal = Principal(key_id="master", key_prefix="master", name="master", is_admin=True)

    def is_master(self, credential: str) -> bool:
        return self._digest is not None and hmac.compare_digest(digest(credential), self._digest)

    async def authenticate(self, credential: str) -> Principal:
        if self.is_master(credential):
            return self._principal
        raise AuthenticationFailed(INVALID_KEY_MESSAGE)
