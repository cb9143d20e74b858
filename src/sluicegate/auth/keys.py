"""API key material: generation, the public prefix, and the stored hash.

A key is ``sk-sg-`` followed by 43 URL-safe characters (256 bits from ``secrets``). Its first
``PREFIX_LEN`` characters are its public prefix, stored in clear so a key can be recognised in lists and
logs; the store keeps only the SHA-256 of the whole key. SHA-256 (not a slow KDF) is right here because
the secret is random and high-entropy: there is nothing to brute-force.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

KEY_MARK = "sk-sg-"
PREFIX_LEN = len(KEY_MARK) + 8


@dataclass(frozen=True, slots=True)
class NewKey:
    secret: str = ""
    prefix: str = ""
    key_hash: str = ""

    def __repr__(self) -> str:
        return f"NewKey(prefix={self.prefix!r})"  # never the secret


def generate_key() -> NewKey:
    secret = KEY_MARK + secrets.token_urlsafe(32)
    return NewKey(secret=secret, prefix=secret[:PREFIX_LEN], key_hash=hash_key(secret))


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def looks_like_key(credential: str) -> bool:
    return credential.startswith(KEY_MARK) and len(credential) > PREFIX_LEN
